"""The metadata-store contract, run against SQLite and PostgreSQL alike.

One class per protocol of ``overnight.store.base``: each test names the protocols it
uses as fixtures (``files``, ``uploads``, ``batches``, ``keys``, ``queue``), all parts
of one ``SqlStore`` over a fresh database.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from overnight.domain.batches import (
    Batch,
    BatchKind,
    BatchState,
    BatchWork,
    LeasedShard,
    ShardOutcome,
    ShardSpec,
    ShardState,
    Usage,
)
from overnight.domain.files import File, FileSource, FileState
from overnight.domain.uploads import Upload
from overnight.errors import AlreadyExists, FailedPrecondition, NotFound
from overnight.store.base import BatchStore, FileStore, KeyStore, UploadStore, WorkQueue
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


def specs(n: int) -> list[ShardSpec]:
    return [ShardSpec(i, i * 10, i * 10 + 10, i + 1, 1) for i in range(n)]


async def admitted(
    batches: BatchStore, queue: WorkQueue, batch_id: str, n: int = 3, expire: float = 1e12
) -> None:
    await batches.create_batch(make_batch(batch_id, expire=expire), "in")
    claimed = await queue.claim_batch_work("w", now=time.time(), lease_until=time.time() + 60)
    assert claimed is not None and claimed[1] is BatchWork.ADMIT
    assert await queue.admit(batch_id, "w", specs(n), now=time.time())


@pytest.fixture
def store(database_url: str):  # type: ignore[no-untyped-def]
    s = asyncio.run(SqlStore.open(database_url))
    yield s
    asyncio.run(s.close())


@pytest.fixture
def files(store: SqlStore) -> FileStore:
    return store.files


@pytest.fixture
def uploads(store: SqlStore) -> UploadStore:
    return store.uploads


@pytest.fixture
def batches(store: SqlStore) -> BatchStore:
    return store.batches


@pytest.fixture
def keys(store: SqlStore) -> KeyStore:
    return store.keys


@pytest.fixture
def queue(store: SqlStore) -> WorkQueue:
    return store.queue


class TestDatabase:
    """Opening the database applies the migrations, once."""

    def test_migrations_are_applied_once(self, store: SqlStore, database_url: str) -> None:
        latest = MIGRATIONS[-1][0]
        assert asyncio.run(store.schema_version()) == latest
        again = asyncio.run(SqlStore.open(database_url))  # reopening is a no-op
        assert asyncio.run(again.schema_version()) == latest
        asyncio.run(again.close())

    def test_migration_3_keeps_files_and_keys_them_per_tenant(self, database_url: str) -> None:
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
                *(
                    Column(n, Text, nullable=False)
                    for n in ("sha256", "blob_key", "source", "state")
                ),
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
                assert (await store.files.get_file("old", "t1")).blob_key == "files/old"
                await store.files.create_file(make_file("old", "t2"))
                with pytest.raises(AlreadyExists):
                    await store.files.create_file(make_file("old", "t1"))
                assert (await store.uploads.get_upload("u0", now=time.time())).file_id == "dup"
                with pytest.raises(NotFound):
                    await store.uploads.get_upload("u1", now=time.time())
                with pytest.raises(AlreadyExists):
                    await store.uploads.create_upload(make_upload("u2", "dup"))
            finally:
                await store.close()

        asyncio.run(go())


class TestKeyStore:
    """``KeyStore``: API key hashes and their tenants."""

    def test_api_keys_map_hashes_to_tenants(self, keys: KeyStore) -> None:
        async def go() -> None:
            assert await keys.count_api_keys() == 0
            await keys.add_api_key("h1", "alice", "ovn_abc", now=1.0)
            assert await keys.tenant_for_key("h1") == "alice"
            assert await keys.tenant_for_key("nope") is None
            assert await keys.count_api_keys() == 1

        asyncio.run(go())


class TestFileStore:
    """``FileStore``: file records per tenant, and what keeps a file from going."""

    def test_files_roundtrip_and_tenancy(self, files: FileStore) -> None:
        async def go() -> None:
            await files.create_file(make_file("f1"))
            assert (await files.get_file("f1", "t1")).size_bytes == 3
            with pytest.raises(NotFound):
                await files.get_file("f1", "other-tenant")
            with pytest.raises(AlreadyExists):
                await files.create_file(make_file("f1"))
            await files.delete_file("f1", "t1")
            with pytest.raises(NotFound):
                await files.get_file("f1")

        asyncio.run(go())

    def test_file_names_are_per_tenant(self, files: FileStore) -> None:
        async def go() -> None:
            await files.create_file(make_file("report", "t1"))
            await files.create_file(make_file("report", "t2"))  # another tenant's, not a clash
            with pytest.raises(AlreadyExists):
                await files.create_file(make_file("report", "t1"))
            await files.delete_file("report", "t2")
            assert (await files.get_file("report", "t1")).tenant == "t1"
            with pytest.raises(NotFound):
                await files.get_file("report", "t2")

        asyncio.run(go())

    def test_the_input_of_an_unfinished_batch_cannot_be_deleted(
        self, files: FileStore, batches: BatchStore, queue: WorkQueue
    ) -> None:
        async def go() -> None:
            await files.create_file(make_file("in", "t1"))
            await files.create_file(make_file("in", "t2"))
            batch = replace(make_batch("b1"), input_file_id="in")
            await batches.create_batch(batch, "files/in")
            with pytest.raises(FailedPrecondition) as refused:
                await files.delete_file("in", "t1")
            assert refused.value.message == (
                "files/in is the input of batches/b1, which is PENDING; cancel it or wait for "
                "it to finish, then delete the file"
            )
            await files.delete_file("in", "t2")  # another tenant's file of the same name
            now = time.time()
            await batches.transition("b1", BatchState.CANCELLED, now=now)
            with pytest.raises(FailedPrecondition, match="CANCELLED and still finishing"):
                await files.delete_file("in", "t1")
            assert await queue.claim_batch_work("w", now=now, lease_until=now + 60)
            assert await queue.finalize("b1", "w", now=now, output=None, target=None)
            await files.delete_file("in", "t1")
            # and a batch cannot be created over a file that is gone
            with pytest.raises(NotFound, match="files/in"):
                await batches.create_batch(
                    replace(make_batch("b2"), input_file_id="in"), "files/in"
                )

        asyncio.run(go())

    def test_sweep_keeps_only_the_input_tenants_file(
        self, files: FileStore, batches: BatchStore
    ) -> None:
        async def go() -> None:
            old = time.time() - 10
            for tenant in ("t1", "t2"):
                await files.create_file(replace(make_file("in", tenant), expire_time=old))
            await batches.create_batch(replace(make_batch("b1"), input_file_id="in"), "files/in")
            swept = await files.take_expired_files(time.time())
            assert [(f.tenant, f.id) for f in swept] == [("t2", "in")]
            assert (await files.get_file("in", "t1")).tenant == "t1"

        asyncio.run(go())


class TestUploadStore:
    """``UploadStore``: sessions reserve names; finishing relies on the file key."""

    def test_one_open_upload_per_name_and_finalize_relies_on_the_file_key(
        self, files: FileStore, uploads: UploadStore
    ) -> None:
        async def go() -> None:
            results = await asyncio.gather(
                *(uploads.create_upload(make_upload(f"u{i}", "report")) for i in range(4)),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            assert len(errors) == 3, results
            assert all(isinstance(e, AlreadyExists) for e in errors)
            assert all("files/report already exists" in e.message for e in errors)  # type: ignore[attr-defined]
            await uploads.create_upload(make_upload("u9", "report", tenant="t2"))
            # the name is taken by a file recorded meanwhile: finalize refuses, changes nothing
            won = next(f"u{i}" for i, r in enumerate(results) if r is None)
            await files.create_file(make_file("report", "t1"))
            with pytest.raises(AlreadyExists, match="files/report already exists"):
                await uploads.finish_upload(won, make_file("report", "t1"))
            assert (await uploads.get_upload(won, now=time.time())).file_id == "report"

        asyncio.run(go())


class TestBatchStore:
    """``BatchStore``: batches as the services see them."""

    def test_list_paginates_newest_first(self, batches: BatchStore) -> None:
        async def go() -> None:
            for i in range(5):
                await batches.create_batch(make_batch(f"b{i}"), "in")
            first = await batches.list_batches("t1", limit=2)
            assert len(first) == 2
            rest = await batches.list_batches(
                "t1", limit=10, after=(first[-1].create_time, first[-1].id)
            )
            assert {b.id for b in first} | {b.id for b in rest} == {f"b{i}" for i in range(5)}
            assert not {b.id for b in first} & {b.id for b in rest}
            assert await batches.list_batches("nobody", limit=10) == []

        asyncio.run(go())

    def test_transitions_are_conditional(self, batches: BatchStore) -> None:
        async def go() -> None:
            await batches.create_batch(make_batch("b1"), "in")
            assert not await batches.transition(
                "b1", BatchState.SUCCEEDED, now=1.0
            )  # PENDING ↛ SUCCEEDED
            assert await batches.transition("b1", BatchState.CANCELLED, now=2.0)
            assert not await batches.transition(
                "b1", BatchState.CANCELLED, now=3.0
            )  # already terminal
            b = await batches.get_batch("b1")
            assert b.state is BatchState.CANCELLED and b.end_time == 2.0

        asyncio.run(go())

    def test_ref_is_unique(self, batches: BatchStore) -> None:
        async def go() -> None:
            await batches.create_batch(make_batch("b1", ref="r"), "in")
            with pytest.raises(AlreadyExists):
                await batches.create_batch(make_batch("b2", ref="r"), "in")
            assert (await batches.find_batch_by_ref("r")).id == "b1"  # type: ignore[union-attr]

        asyncio.run(go())

    def test_delete_batch_removes_shards(self, batches: BatchStore, queue: WorkQueue) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 3)
            with pytest.raises(NotFound):
                await batches.delete_batch("b1", "other-tenant")
            await batches.delete_batch("b1", "t1")
            assert await queue.list_shards("b1") == []
            with pytest.raises(NotFound):
                await batches.get_batch("b1")

        asyncio.run(go())


class TestWorkQueue:
    """``WorkQueue``: what the engine leases, runs, commits and finalizes."""

    def test_admission_is_claimed_once(self, batches: BatchStore, queue: WorkQueue) -> None:
        async def go() -> None:
            await batches.create_batch(make_batch("b1"), "in")
            now = time.time()
            first = await queue.claim_batch_work("w1", now=now, lease_until=now + 60)
            second = await queue.claim_batch_work("w2", now=now, lease_until=now + 60)
            assert first is not None and second is None
            assert not await queue.admit("b1", "w2", specs(2), now=now)  # not the lease holder
            assert await queue.admit("b1", "w1", specs(2), now=now)
            b = await batches.get_batch("b1")
            assert b.state is BatchState.RUNNING and b.request_count == 2 and b.admitted

        asyncio.run(go())

    def test_shard_lease_commit_exactly_once(self, batches: BatchStore, queue: WorkQueue) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 2)
            now = time.time()
            a = await queue.lease_shard("w1", "ta", now=now, lease_until=now + 60)
            b = await queue.lease_shard("w2", "tb", now=now, lease_until=now + 60)
            assert a is not None and b is not None and a.shard.seq != b.shard.seq
            assert await queue.lease_shard("w3", "tc", now=now, lease_until=now + 60) is None
            out = ShardOutcome("o", 1, 0, Usage(5, 7))
            assert await queue.commit_shard("b1", a.shard.seq, "ta", out, now=now)
            # A retry of a commit whose reply was lost: True, and nothing is added twice.
            assert await queue.commit_shard("b1", a.shard.seq, "ta", out, now=now)
            other = ShardOutcome("o2", 1, 0, Usage(5, 7))
            assert not await queue.commit_shard("b1", a.shard.seq, "ta", other, now=now)  # refused
            assert not await queue.commit_shard("b1", b.shard.seq, "wrong-token", out, now=now)
            batch = await batches.get_batch("b1")
            assert (batch.succeeded_count, batch.usage) == (1, Usage(5, 7))

        asyncio.run(go())

    def test_a_lease_carries_everything_its_shard_needs_to_run(
        self, batches: BatchStore, queue: WorkQueue
    ) -> None:
        """One call: the shard, its batch and the input's key, as the runner needs them."""

        async def go() -> None:
            embed = replace(make_batch("b1", tenant="t9"), kind=BatchKind.EMBED, model_resolved="e")
            await batches.create_batch(embed, "batches/b1/input.jsonl", {"input": "x"})
            now = time.time()
            assert await queue.claim_batch_work("w", now=now, lease_until=now + 60)
            assert await queue.admit("b1", "w", [ShardSpec(0, 7, 42, 3, 2)], now=now)
            lease = await queue.lease_shard("w", "tok", now=now, lease_until=now + 60)
            assert isinstance(lease, LeasedShard)
            (shard,) = await queue.list_shards("b1")
            assert lease.shard == shard
            assert (shard.state, shard.lease_token, shard.lease_owner) == (
                ShardState.LEASED,
                "tok",
                "w",
            )
            assert lease.byte_range == (7, 42) and lease.shard.first_line == 3
            assert lease.batch == await batches.get_batch("b1")
            assert (lease.batch.id, lease.batch.name, lease.batch.tenant) == (
                "b1",
                "batches/b1",
                "t9",
            )
            assert (lease.batch.kind, lease.batch.model_resolved) == (BatchKind.EMBED, "e")
            assert lease.batch.state is BatchState.RUNNING
            assert lease.input_key == "batches/b1/input.jsonl"
            assert lease.input_key == (await batches.batch_input("b1"))[0]

        asyncio.run(go())

    def test_expired_lease_is_taken_over_and_stale_commit_refused(
        self, batches: BatchStore, queue: WorkQueue
    ) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 1)
            now = time.time()
            old = await queue.lease_shard("w1", "old", now=now, lease_until=now + 1)
            assert old is not None
            assert not await queue.renew_shard("b1", 0, "nope", now + 60)
            new = await queue.lease_shard("w2", "new", now=now + 5, lease_until=now + 65)
            assert new is not None and new.shard.attempts == 0  # a lost lease is no failed attempt
            assert not await queue.renew_shard("b1", 0, "old", now + 70)  # lost
            out = ShardOutcome("o", 1, 0, Usage())
            assert not await queue.commit_shard("b1", 0, "old", out, now=now)
            assert await queue.commit_shard("b1", 0, "new", out, now=now)
            assert (await batches.get_batch("b1")).succeeded_count == 1

        asyncio.run(go())

    def test_only_failed_attempts_are_counted(self, batches: BatchStore, queue: WorkQueue) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 1)
            now = time.time()
            for token in ("t1", "t2"):
                assert await queue.lease_shard("w1", token, now=now, lease_until=now + 60)
                assert await queue.count_failed_attempt("b1", 0, token) == int(token[1])
                assert await queue.release_shard("b1", 0, token)
            assert await queue.count_failed_attempt("b1", 0, "t2") is None  # not leased
            assert await queue.lease_shard("w1", "t3", now=now, lease_until=now + 60)
            await queue.release_owner("w1")  # a crash: not counted
            (shard,) = await queue.list_shards("b1")
            assert shard.attempts == 2

        asyncio.run(go())

    def test_release_and_release_owner(self, batches: BatchStore, queue: WorkQueue) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 2)
            now = time.time()
            a = await queue.lease_shard("w1", "ta", now=now, lease_until=now + 60)
            b = await queue.lease_shard("w1", "tb", now=now, lease_until=now + 60)
            assert a and b
            assert await queue.release_shard("b1", a.shard.seq, "ta")
            assert "w1" in await queue.lease_owners()
            assert await queue.release_owner("w1") == 1
            assert await queue.lease_owners() == set()
            shards = await queue.list_shards("b1")
            assert all(s.state is ShardState.PENDING for s in shards)

        asyncio.run(go())

    def test_cancelled_batch_shards_are_not_leased(
        self, batches: BatchStore, queue: WorkQueue
    ) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 2)
            assert await batches.transition("b1", BatchState.CANCELLED, now=time.time())
            now = time.time()
            assert await queue.lease_shard("w", "t", now=now, lease_until=now + 60) is None
            claimed = await queue.claim_batch_work("w", now=now, lease_until=now + 60)
            assert claimed is not None and claimed[1] is BatchWork.FINALIZE

        asyncio.run(go())

    def test_finalize_only_after_all_shards_done(
        self, batches: BatchStore, queue: WorkQueue
    ) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 1)
            now = time.time()
            assert await queue.claim_batch_work("w", now=now, lease_until=now + 60) is None
            s = await queue.lease_shard("w", "t", now=now, lease_until=now + 60)
            assert s is not None
            await queue.commit_shard("b1", 0, "t", ShardOutcome("o", 1, 0, Usage()), now=now)
            claimed = await queue.claim_batch_work("w", now=now, lease_until=now + 60)
            assert claimed is not None and claimed[1] is BatchWork.FINALIZE
            out = make_file("batchb1")
            assert await queue.finalize("b1", "w", now=now, output=out, target=BatchState.SUCCEEDED)
            b = await batches.get_batch("b1")
            assert b.state is BatchState.SUCCEEDED and b.finalized and b.output_file_id == "batchb1"
            assert await queue.claim_batch_work("w", now=now, lease_until=now + 60) is None

        asyncio.run(go())

    def test_finalize_loses_to_a_concurrent_cancel(
        self, batches: BatchStore, queue: WorkQueue
    ) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 1)
            now = time.time()
            s = await queue.lease_shard("w", "t", now=now, lease_until=now + 60)
            assert s is not None
            await queue.commit_shard("b1", 0, "t", ShardOutcome("o", 1, 0, Usage()), now=now)
            assert await queue.claim_batch_work("w", now=now, lease_until=now + 60)
            await batches.transition("b1", BatchState.CANCELLED, now=now)
            assert not await queue.finalize(
                "b1", "w", now=now, output=None, target=BatchState.SUCCEEDED
            )
            assert (await batches.get_batch("b1")).state is BatchState.CANCELLED

        asyncio.run(go())

    def test_expire_batches(self, batches: BatchStore, queue: WorkQueue) -> None:
        async def go() -> None:
            await batches.create_batch(make_batch("old", expire=10.0), "in")
            await batches.create_batch(make_batch("new", expire=1e12), "in")
            assert await queue.expire_batches(now=100.0) == ["old"]
            assert (await batches.get_batch("old")).state is BatchState.EXPIRED
            assert (await batches.get_batch("new")).state is BatchState.PENDING

        asyncio.run(go())

    def test_overdue_batch_is_neither_admitted_nor_run(
        self, batches: BatchStore, queue: WorkQueue
    ) -> None:
        """Whichever a worker reaches first, the reaper or the work, an overdue batch expires."""

        async def go() -> None:
            await admitted(batches, queue, "running", 1, expire=time.time() + 3600)
            await batches.create_batch(make_batch("late", expire=time.time() + 3600), "in")
            later = time.time() + 7200
            assert await queue.claim_batch_work("w", now=later, lease_until=later + 60) is None
            assert await queue.lease_shard("w", "t", now=later, lease_until=later + 60) is None
            assert sorted(await queue.expire_batches(now=later)) == ["late", "running"]
            now = time.time()
            claimed = await queue.claim_batch_work("w", now=later, lease_until=later + 60)
            assert claimed is not None and claimed[1] is BatchWork.FINALIZE
            assert await queue.lease_shard("w", "t", now=now, lease_until=now + 60) is None

        asyncio.run(go())

    def test_concurrent_leasers_never_share_a_shard(
        self, batches: BatchStore, queue: WorkQueue
    ) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 20)
            now = time.time()
            got = await asyncio.gather(
                *(
                    queue.lease_shard(f"w{i}", f"t{i}", now=now, lease_until=now + 60)
                    for i in range(30)
                )
            )
            seqs = [s.shard.seq for s in got if s is not None]
            assert len(seqs) == 20 and len(set(seqs)) == 20

        asyncio.run(go())

    def test_no_shard_commits_after_finalize_and_finalize_checks_what_it_built(
        self, batches: BatchStore, queue: WorkQueue
    ) -> None:
        async def go() -> None:
            await admitted(batches, queue, "b1", 2)
            now = time.time()
            a = await queue.lease_shard("w", "ta", now=now, lease_until=now + 60)
            slow = await queue.lease_shard("w", "tb", now=now, lease_until=now + 1)
            assert a and slow
            await queue.commit_shard(
                "b1", a.shard.seq, "ta", ShardOutcome("o", 1, 0, Usage()), now=now
            )
            await batches.transition("b1", BatchState.CANCELLED, now=now)
            later = now + 5  # the slow worker's lease has run out: finalize may go ahead
            assert await queue.claim_batch_work("f", now=later, lease_until=later + 60)
            # Built from 0 DONE shards while 1 exists: refused, nothing written.
            assert not await queue.finalize(
                "b1", "f", now=later, output=None, target=None, done_shards=0
            )
            assert not (await batches.get_batch("b1")).finalized
            assert await queue.finalize(
                "b1", "f", now=later, output=None, target=None, done_shards=1
            )
            # The slow worker still holds its (stale) token and tries to commit: refused,
            # because the batch's output is already built. Counters stay those of the output.
            outcome = ShardOutcome("o", 1, 0, Usage())
            assert not await queue.commit_shard("b1", slow.shard.seq, "tb", outcome, now=later)
            batch = await batches.get_batch("b1")
            assert batch.finalized and batch.succeeded_count == 1

        asyncio.run(go())
