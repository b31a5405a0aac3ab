"""The metadata-store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from overnight.domain.batches import (
    Batch,
    BatchKind,
    BatchState,
    ShardOutcome,
    ShardSpec,
    ShardState,
    Usage,
)
from overnight.domain.files import File, FileSource, FileState
from overnight.domain.uploads import Upload
from overnight.errors import AlreadyExists, FailedPrecondition, NotFound
from overnight.store.migrations import MIGRATIONS
from overnight.store.rows import file_values, upload_values
from overnight.store.sql import SqlStore


def make_batch(
    batch_id: str, *, tenant: str = "t1", ref: str | None = None, expire: float = 1e12
) -> Batch:
    now = time.time()
    return Batch(
        id=batch_id,
        tenant=tenant,
        kind=BatchKind.GENERATE,
        model="models/m",
        model_resolved="m",
        display_name="d",
        state=BatchState.PENDING,
        input_file_id=None,
        inline=False,
        output_file_id=None,
        request_count=0,
        succeeded_count=0,
        failed_count=0,
        usage=Usage(),
        create_time=now,
        update_time=now,
        end_time=None,
        expire_time=expire,
        error=None,
        ref=ref,
        admitted=False,
        finalized=False,
    )


def make_file(file_id: str, tenant: str = "t1") -> File:
    now = time.time()
    return File(
        id=file_id,
        tenant=tenant,
        display_name="f",
        mime_type="application/jsonl",
        size_bytes=3,
        sha256="0" * 64,
        blob_key=f"files/{file_id}",
        source=FileSource.UPLOADED,
        state=FileState.ACTIVE,
        create_time=now,
        update_time=now,
        expire_time=None,
    )


def specs(n: int) -> list[ShardSpec]:
    return [ShardSpec(i, i * 10, i * 10 + 10, i + 1, 1) for i in range(n)]


async def admitted(store: SqlStore, batch_id: str, n: int = 3, expire: float = 1e12) -> None:
    await store.create_batch(make_batch(batch_id, expire=expire), "in")
    claimed = await store.claim_batch_work("w", now=time.time(), lease_until=time.time() + 60)
    assert claimed is not None and claimed[1] == "admit"
    assert await store.admit(batch_id, "w", specs(n), now=time.time())


@pytest.fixture
def store(database_url: str):  # type: ignore[no-untyped-def]
    s = asyncio.run(SqlStore.open(database_url))
    yield s
    asyncio.run(s.close())


def test_migrations_are_applied_once(store: SqlStore, database_url: str) -> None:
    latest = MIGRATIONS[-1][0]
    assert asyncio.run(store.schema_version()) == latest
    again = asyncio.run(SqlStore.open(database_url))  # reopening is a no-op
    assert asyncio.run(again.schema_version()) == latest
    asyncio.run(again.close())


def test_files_roundtrip_and_tenancy(store: SqlStore) -> None:
    async def go() -> None:
        await store.create_file(make_file("f1"))
        assert (await store.get_file("f1", "t1")).size_bytes == 3
        with pytest.raises(NotFound):
            await store.get_file("f1", "other-tenant")
        with pytest.raises(AlreadyExists):
            await store.create_file(make_file("f1"))
        await store.delete_file("f1", "t1")
        with pytest.raises(NotFound):
            await store.get_file("f1")

    asyncio.run(go())


def test_list_paginates_newest_first(store: SqlStore) -> None:
    async def go() -> None:
        for i in range(5):
            await store.create_batch(make_batch(f"b{i}"), "in")
        first = await store.list_batches("t1", limit=2)
        assert len(first) == 2
        rest = await store.list_batches("t1", limit=10, after=(first[-1].create_time, first[-1].id))
        assert {b.id for b in first} | {b.id for b in rest} == {f"b{i}" for i in range(5)}
        assert not {b.id for b in first} & {b.id for b in rest}
        assert await store.list_batches("nobody", limit=10) == []

    asyncio.run(go())


def test_transitions_are_conditional(store: SqlStore) -> None:
    async def go() -> None:
        await store.create_batch(make_batch("b1"), "in")
        assert not await store.transition(
            "b1", BatchState.SUCCEEDED, now=1.0
        )  # PENDING ↛ SUCCEEDED
        assert await store.transition("b1", BatchState.CANCELLED, now=2.0)
        assert not await store.transition("b1", BatchState.CANCELLED, now=3.0)  # already terminal
        b = await store.get_batch("b1")
        assert b.state is BatchState.CANCELLED and b.end_time == 2.0

    asyncio.run(go())


def test_ref_is_unique(store: SqlStore) -> None:
    async def go() -> None:
        await store.create_batch(make_batch("b1", ref="r"), "in")
        with pytest.raises(AlreadyExists):
            await store.create_batch(make_batch("b2", ref="r"), "in")
        assert (await store.find_batch_by_ref("r")).id == "b1"  # type: ignore[union-attr]

    asyncio.run(go())


def test_admission_is_claimed_once(store: SqlStore) -> None:
    async def go() -> None:
        await store.create_batch(make_batch("b1"), "in")
        now = time.time()
        first = await store.claim_batch_work("w1", now=now, lease_until=now + 60)
        second = await store.claim_batch_work("w2", now=now, lease_until=now + 60)
        assert first is not None and second is None
        assert not await store.admit("b1", "w2", specs(2), now=now)  # not the lease holder
        assert await store.admit("b1", "w1", specs(2), now=now)
        b = await store.get_batch("b1")
        assert b.state is BatchState.RUNNING and b.request_count == 2 and b.admitted

    asyncio.run(go())


def test_shard_lease_commit_exactly_once(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 2)
        now = time.time()
        a = await store.lease_shard("w1", "ta", now=now, lease_until=now + 60)
        b = await store.lease_shard("w2", "tb", now=now, lease_until=now + 60)
        assert a is not None and b is not None and a.seq != b.seq
        assert await store.lease_shard("w3", "tc", now=now, lease_until=now + 60) is None
        out = ShardOutcome("o", 1, 0, Usage(5, 7))
        assert await store.commit_shard("b1", a.seq, "ta", out, now=now)
        # A retry of a commit whose reply was lost: True, and nothing is added twice.
        assert await store.commit_shard("b1", a.seq, "ta", out, now=now)
        other = ShardOutcome("o2", 1, 0, Usage(5, 7))
        assert not await store.commit_shard("b1", a.seq, "ta", other, now=now)  # refused
        assert not await store.commit_shard("b1", b.seq, "wrong-token", out, now=now)
        batch = await store.get_batch("b1")
        assert (batch.succeeded_count, batch.usage) == (1, Usage(5, 7))

    asyncio.run(go())


def test_expired_lease_is_taken_over_and_stale_commit_refused(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 1)
        now = time.time()
        old = await store.lease_shard("w1", "old", now=now, lease_until=now + 1)
        assert old is not None
        assert not await store.renew_shard("b1", 0, "nope", now + 60)
        new = await store.lease_shard("w2", "new", now=now + 5, lease_until=now + 65)
        assert new is not None and new.attempts == 0  # a lost lease is no failed attempt
        assert not await store.renew_shard("b1", 0, "old", now + 70)  # lost
        out = ShardOutcome("o", 1, 0, Usage())
        assert not await store.commit_shard("b1", 0, "old", out, now=now)
        assert await store.commit_shard("b1", 0, "new", out, now=now)
        assert (await store.get_batch("b1")).succeeded_count == 1

    asyncio.run(go())


def test_only_failed_attempts_are_counted(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 1)
        now = time.time()
        for token in ("t1", "t2"):
            assert await store.lease_shard("w1", token, now=now, lease_until=now + 60)
            assert await store.count_failed_attempt("b1", 0, token) == int(token[1])
            assert await store.release_shard("b1", 0, token)
        assert await store.count_failed_attempt("b1", 0, "t2") is None  # not leased
        assert await store.lease_shard("w1", "t3", now=now, lease_until=now + 60)
        await store.release_owner("w1")  # a crash: not counted
        (shard,) = await store.list_shards("b1")
        assert shard.attempts == 2

    asyncio.run(go())


def test_release_and_release_owner(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 2)
        now = time.time()
        a = await store.lease_shard("w1", "ta", now=now, lease_until=now + 60)
        b = await store.lease_shard("w1", "tb", now=now, lease_until=now + 60)
        assert a and b
        assert await store.release_shard("b1", a.seq, "ta")
        assert "w1" in await store.lease_owners()
        assert await store.release_owner("w1") == 1
        assert await store.lease_owners() == set()
        shards = await store.list_shards("b1")
        assert all(s.state is ShardState.PENDING for s in shards)

    asyncio.run(go())


def test_cancelled_batch_shards_are_not_leased(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 2)
        assert await store.transition("b1", BatchState.CANCELLED, now=time.time())
        now = time.time()
        assert await store.lease_shard("w", "t", now=now, lease_until=now + 60) is None
        claimed = await store.claim_batch_work("w", now=now, lease_until=now + 60)
        assert claimed is not None and claimed[1] == "finalize"

    asyncio.run(go())


def test_finalize_only_after_all_shards_done(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 1)
        now = time.time()
        assert await store.claim_batch_work("w", now=now, lease_until=now + 60) is None
        s = await store.lease_shard("w", "t", now=now, lease_until=now + 60)
        assert s is not None
        await store.commit_shard("b1", 0, "t", ShardOutcome("o", 1, 0, Usage()), now=now)
        claimed = await store.claim_batch_work("w", now=now, lease_until=now + 60)
        assert claimed is not None and claimed[1] == "finalize"
        out = make_file("batchb1")
        assert await store.finalize("b1", "w", now=now, output=out, target=BatchState.SUCCEEDED)
        b = await store.get_batch("b1")
        assert b.state is BatchState.SUCCEEDED and b.finalized and b.output_file_id == "batchb1"
        assert await store.claim_batch_work("w", now=now, lease_until=now + 60) is None

    asyncio.run(go())


def test_finalize_loses_to_a_concurrent_cancel(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 1)
        now = time.time()
        s = await store.lease_shard("w", "t", now=now, lease_until=now + 60)
        assert s is not None
        await store.commit_shard("b1", 0, "t", ShardOutcome("o", 1, 0, Usage()), now=now)
        assert await store.claim_batch_work("w", now=now, lease_until=now + 60)
        await store.transition("b1", BatchState.CANCELLED, now=now)
        assert not await store.finalize(
            "b1", "w", now=now, output=None, target=BatchState.SUCCEEDED
        )
        assert (await store.get_batch("b1")).state is BatchState.CANCELLED

    asyncio.run(go())


def test_expire_batches(store: SqlStore) -> None:
    async def go() -> None:
        await store.create_batch(make_batch("old", expire=10.0), "in")
        await store.create_batch(make_batch("new", expire=1e12), "in")
        assert await store.expire_batches(now=100.0) == ["old"]
        assert (await store.get_batch("old")).state is BatchState.EXPIRED
        assert (await store.get_batch("new")).state is BatchState.PENDING

    asyncio.run(go())


def test_overdue_batch_is_neither_admitted_nor_run(store: SqlStore) -> None:
    """Whichever a worker reaches first, the reaper or the work, an overdue batch expires."""

    async def go() -> None:
        await admitted(store, "running", 1, expire=time.time() + 3600)
        await store.create_batch(make_batch("late", expire=time.time() + 3600), "in")
        later = time.time() + 7200
        assert await store.claim_batch_work("w", now=later, lease_until=later + 60) is None
        assert await store.lease_shard("w", "t", now=later, lease_until=later + 60) is None
        assert sorted(await store.expire_batches(now=later)) == ["late", "running"]
        now = time.time()
        claimed = await store.claim_batch_work("w", now=later, lease_until=later + 60)
        assert claimed is not None and claimed[1] == "finalize"
        assert await store.lease_shard("w", "t", now=now, lease_until=now + 60) is None

    asyncio.run(go())


def test_concurrent_leasers_never_share_a_shard(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 20)
        now = time.time()
        got = await asyncio.gather(
            *(store.lease_shard(f"w{i}", f"t{i}", now=now, lease_until=now + 60) for i in range(30))
        )
        seqs = [s.seq for s in got if s is not None]
        assert len(seqs) == 20 and len(set(seqs)) == 20

    asyncio.run(go())


def test_delete_batch_removes_shards(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 3)
        with pytest.raises(NotFound):
            await store.delete_batch("b1", "other-tenant")
        await store.delete_batch("b1", "t1")
        assert await store.list_shards("b1") == []
        with pytest.raises(NotFound):
            await store.get_batch("b1")

    asyncio.run(go())


def test_api_keys_map_hashes_to_tenants(store: SqlStore) -> None:
    async def go() -> None:
        assert await store.count_api_keys() == 0
        await store.add_api_key("h1", "alice", "ovn_abc", now=1.0)
        assert await store.tenant_for_key("h1") == "alice"
        assert await store.tenant_for_key("nope") is None
        assert await store.count_api_keys() == 1

    asyncio.run(go())


def test_no_shard_commits_after_finalize_and_finalize_checks_what_it_built(store: SqlStore) -> None:
    async def go() -> None:
        await admitted(store, "b1", 2)
        now = time.time()
        a = await store.lease_shard("w", "ta", now=now, lease_until=now + 60)
        slow = await store.lease_shard("w", "tb", now=now, lease_until=now + 1)
        assert a and slow
        await store.commit_shard("b1", a.seq, "ta", ShardOutcome("o", 1, 0, Usage()), now=now)
        await store.transition("b1", BatchState.CANCELLED, now=now)
        later = now + 5  # the slow worker's lease has run out: finalize may go ahead
        assert await store.claim_batch_work("f", now=later, lease_until=later + 60)
        # Built from 0 DONE shards while 1 exists: refused, nothing written.
        assert not await store.finalize(
            "b1", "f", now=later, output=None, target=None, done_shards=0
        )
        assert not (await store.get_batch("b1")).finalized
        assert await store.finalize("b1", "f", now=later, output=None, target=None, done_shards=1)
        # The slow worker still holds its (stale) token and tries to commit: refused,
        # because the batch's output is already built. Counters stay those of the output.
        outcome = ShardOutcome("o", 1, 0, Usage())
        assert not await store.commit_shard("b1", slow.seq, "tb", outcome, now=later)
        batch = await store.get_batch("b1")
        assert batch.finalized and batch.succeeded_count == 1

    asyncio.run(go())


# ------------------------------------------------- files: names, inputs, uploads


def make_upload(upload_id: str, file_id: str, tenant: str = "t1") -> Upload:
    return Upload(
        id=upload_id,
        tenant=tenant,
        file_id=file_id,
        display_name="",
        mime_type="jsonl",
        size_bytes=3,
        received=0,
        expire_time=time.time() + 600,
    )


def test_file_names_are_per_tenant(store: SqlStore) -> None:
    async def go() -> None:
        await store.create_file(make_file("report", "t1"))
        await store.create_file(make_file("report", "t2"))  # another tenant's, not a clash
        with pytest.raises(AlreadyExists):
            await store.create_file(make_file("report", "t1"))
        await store.delete_file("report", "t2")
        assert (await store.get_file("report", "t1")).tenant == "t1"
        with pytest.raises(NotFound):
            await store.get_file("report", "t2")

    asyncio.run(go())


def test_the_input_of_an_unfinished_batch_cannot_be_deleted(store: SqlStore) -> None:
    async def go() -> None:
        await store.create_file(make_file("in", "t1"))
        await store.create_file(make_file("in", "t2"))
        batch = replace(make_batch("b1"), input_file_id="in")
        await store.create_batch(batch, "files/in")
        with pytest.raises(FailedPrecondition) as refused:
            await store.delete_file("in", "t1")
        assert refused.value.message == (
            "files/in is the input of batches/b1, which is PENDING; cancel it or wait for "
            "it to finish, then delete the file"
        )
        await store.delete_file("in", "t2")  # another tenant's file of the same name
        now = time.time()
        await store.transition("b1", BatchState.CANCELLED, now=now)
        with pytest.raises(FailedPrecondition, match="CANCELLED and still finishing"):
            await store.delete_file("in", "t1")
        assert await store.claim_batch_work("w", now=now, lease_until=now + 60)
        assert await store.finalize("b1", "w", now=now, output=None, target=None)
        await store.delete_file("in", "t1")
        # and a batch cannot be created over a file that is gone
        with pytest.raises(NotFound, match="files/in"):
            await store.create_batch(replace(make_batch("b2"), input_file_id="in"), "files/in")

    asyncio.run(go())


def test_sweep_keeps_only_the_input_tenants_file(store: SqlStore) -> None:
    async def go() -> None:
        old = time.time() - 10
        for tenant in ("t1", "t2"):
            await store.create_file(replace(make_file("in", tenant), expire_time=old))
        await store.create_batch(replace(make_batch("b1"), input_file_id="in"), "files/in")
        swept = await store.take_expired_files(time.time())
        assert [(f.tenant, f.id) for f in swept] == [("t2", "in")]
        assert (await store.get_file("in", "t1")).tenant == "t1"

    asyncio.run(go())


def test_one_open_upload_per_name_and_finalize_relies_on_the_file_key(store: SqlStore) -> None:
    async def go() -> None:
        results = await asyncio.gather(
            *(store.create_upload(make_upload(f"u{i}", "report")) for i in range(4)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 3, results
        assert all(isinstance(e, AlreadyExists) for e in errors)
        assert all("files/report already exists" in e.message for e in errors)  # type: ignore[attr-defined]
        await store.create_upload(make_upload("u9", "report", tenant="t2"))
        # the name is taken by a file recorded meanwhile: finalize refuses, changes nothing
        won = next(f"u{i}" for i, r in enumerate(results) if r is None)
        await store.create_file(make_file("report", "t1"))
        with pytest.raises(AlreadyExists, match="files/report already exists"):
            await store.finish_upload(won, make_file("report", "t1"))
        assert (await store.get_upload(won, now=time.time())).file_id == "report"

    asyncio.run(go())


def test_migration_3_keeps_files_and_keys_them_per_tenant(database_url: str) -> None:
    """A database at version 2 (files keyed by id alone) upgrades with its rows intact."""
    from sqlalchemy import BigInteger, Column, Float, MetaData, String, Table, Text, insert

    from overnight.store import tables
    from overnight.store.connect import create_sql_engine, normalize_url
    from overnight.store.migrations import m0002_api

    engine = create_sql_engine(normalize_url(database_url))
    with engine.begin() as conn:
        v1 = MetaData()
        Table(
            "files",
            v1,
            Column("id", String(64), primary_key=True),
            Column("tenant", String(128), nullable=False, index=True),
            *(Column(n, Text, nullable=False) for n in ("display_name", "mime_type")),
            Column("size_bytes", BigInteger, nullable=False),
            *(Column(n, Text, nullable=False) for n in ("sha256", "blob_key", "source", "state")),
            *(Column(n, Float, nullable=False) for n in ("create_time", "update_time")),
            Column("expire_time", Float, nullable=True),
        )
        v1.create_all(conn)
        tables.batches.create(conn)
        tables.shards.create(conn)
        m0002_api.upgrade(conn)
        tables.schema_migrations.create(conn)
        for version in (1, 2):
            conn.execute(
                insert(tables.schema_migrations).values(version=version, name="", applied_at=0)
            )
        conn.execute(insert(tables.files).values(**file_values(make_file("old", "t1"))))
        for i in range(2):  # two sessions for one name: what the race could leave
            upload = make_upload(f"u{i}", "dup")
            conn.execute(insert(tables.uploads).values(**upload_values(upload)))
    engine.dispose()

    async def go() -> None:
        store = await SqlStore.open(database_url)
        try:
            assert await store.schema_version() == MIGRATIONS[-1][0]
            assert (await store.get_file("old", "t1")).blob_key == "files/old"
            await store.create_file(make_file("old", "t2"))
            with pytest.raises(AlreadyExists):
                await store.create_file(make_file("old", "t1"))
            assert (await store.get_upload("u0", now=time.time())).file_id == "dup"
            with pytest.raises(NotFound):
                await store.get_upload("u1", now=time.time())
            with pytest.raises(AlreadyExists):
                await store.create_upload(make_upload("u2", "dup"))
        finally:
            await store.close()

    asyncio.run(go())
