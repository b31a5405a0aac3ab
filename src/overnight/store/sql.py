"""The metadata store on SQLAlchemy 2 Core, for SQLite and PostgreSQL.

Every public method is async; the blocking driver calls run in a worker thread.
Each method is one transaction. State changes are conditional UPDATEs (``WHERE
state IN …`` / ``WHERE lease_token = …``) and report whether they won, so two
workers racing for the same shard or transition cannot both succeed.

SQLite runs in WAL mode, and every transaction starts with ``BEGIN IMMEDIATE`` so
that concurrent writers queue on the busy timeout instead of failing. On
PostgreSQL, shard leasing uses ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from overnight.domain.batches import (
    Batch,
    BatchKind,
    BatchState,
    Shard,
    ShardOutcome,
    ShardSpec,
    ShardState,
    Usage,
    allowed_sources,
)
from overnight.domain.files import File, FileSource, FileState
from overnight.domain.uploads import Upload
from overnight.errors import AlreadyExists, NotFound, StoreError
from overnight.store import tables as t
from overnight.store.migrations import MIGRATIONS

T = TypeVar("T")

TERMINAL = [s.value for s in BatchState if s.terminal]


def normalize_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class SqlStore:
    """Files, batches and shards. Build with ``await SqlStore.open(url)``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, url: str) -> SqlStore:
        """Connect and apply pending migrations. Raises ``StoreError`` naming the URL."""
        url = normalize_url(url)
        try:
            engine = _create_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot use database URL {_redact(url)}: {exc}") from None
        store = cls(engine)
        await store._run(store._migrate)
        return store

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)

    def _migrate(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7340423)"))
        t.schema_migrations.create(conn, checkfirst=True)
        done = set(conn.execute(select(t.schema_migrations.c.version)).scalars())
        for version, name, upgrade in MIGRATIONS:
            if version in done:
                continue
            upgrade(conn)
            conn.execute(
                insert(t.schema_migrations).values(
                    version=version, name=name, applied_at=time.time()
                )
            )

    async def schema_version(self) -> int:
        def q(conn: Connection) -> int:
            return int(conn.execute(select(func.max(t.schema_migrations.c.version))).scalar() or 0)

        return await self._run(q)

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction in a thread; driver errors become StoreError."""

        def call() -> T:
            with self._engine.begin() as conn:
                return fn(conn)

        try:
            return await asyncio.to_thread(call)
        except IntegrityError as exc:
            raise AlreadyExists(f"already exists: {exc.orig}") from None
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StoreError(f"metadata store error: {getattr(exc, 'orig', exc)}") from None

    # ------------------------------------------------------------------- api keys

    async def add_api_key(self, key_hash: str, tenant: str, prefix: str, *, now: float) -> None:
        await self._run(
            lambda c: c.execute(
                insert(t.api_keys).values(
                    key_hash=key_hash, tenant=tenant, prefix=prefix, create_time=now
                )
            )
        )

    async def tenant_for_key(self, key_hash: str) -> str | None:
        def q(conn: Connection) -> str | None:
            return conn.execute(
                select(t.api_keys.c.tenant).where(t.api_keys.c.key_hash == key_hash)
            ).scalar()

        return await self._run(q)

    async def count_api_keys(self) -> int:
        return await self._run(
            lambda c: int(c.execute(select(func.count()).select_from(t.api_keys)).scalar() or 0)
        )

    # ---------------------------------------------------------------------- files

    async def create_file(self, file: File) -> None:
        await self._run(lambda c: c.execute(insert(t.files).values(**_file_row(file))))

    async def get_file(self, file_id: str, tenant: str | None = None) -> File:
        """Raises ``NotFound``; another tenant's file is not found either."""

        return await self._run(lambda c: _file(_owned_row(c, t.files, file_id, tenant)))

    async def list_files(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[File]:
        stmt = _page(t.files, tenant, limit, after)
        return await self._run(lambda c: [_file(r) for r in c.execute(stmt).mappings()])

    async def delete_file(self, file_id: str, tenant: str | None = None) -> File:
        """Delete the row and return it (the caller deletes the blob). Raises NotFound."""

        def q(conn: Connection) -> File:
            row = _owned_row(conn, t.files, file_id, tenant)
            conn.execute(delete(t.files).where(t.files.c.id == file_id))
            return _file(row)

        return await self._run(q)

    async def take_expired_files(self, now: float, *, limit: int = 1000) -> list[File]:
        """Delete up to ``limit`` files whose ``expire_time`` has passed; return them.

        A file that is the input of a batch not yet finalized is kept until it is: the
        batch still reads it. The caller deletes the blobs.
        """
        f, b = t.files, t.batches
        in_use = exists().where(b.c.input_file_id == f.c.id, not_(b.c.finalized))

        def q(conn: Connection) -> list[File]:
            stmt = (
                select(f)
                .where(f.c.expire_time.is_not(None), f.c.expire_time < now, not_(in_use))
                .limit(limit)
            )
            rows = [_file(r) for r in conn.execute(stmt).mappings()]
            if rows:
                conn.execute(delete(f).where(f.c.id.in_([r.id for r in rows])))
            return rows

        return await self._run(q)

    # -------------------------------------------------------------- upload sessions

    async def create_upload(self, upload: Upload) -> None:
        """Record a session. Raises ``AlreadyExists`` if its file id is taken by a
        file or by another open session."""
        u = t.uploads

        def q(conn: Connection) -> None:
            taken = (
                conn.execute(select(t.files.c.id).where(t.files.c.id == upload.file_id)).first()
                or conn.execute(select(u.c.id).where(u.c.file_id == upload.file_id)).first()
            )
            if taken:
                raise AlreadyExists(f"file files/{upload.file_id} already exists")
            conn.execute(insert(u).values(**_upload_row(upload)))

        await self._run(q)

    async def get_upload(self, upload_id: str, *, now: float) -> Upload:
        """An open, unexpired session. Raises ``NotFound``."""

        def q(conn: Connection) -> Upload:
            row = (
                conn.execute(
                    select(t.uploads).where(
                        t.uploads.c.id == upload_id, t.uploads.c.expire_time >= now
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(
                    "upload session not found: it expired, was finalized, or never existed"
                )
            return _upload(row)

        return await self._run(q)

    async def advance_upload(
        self, upload_id: str, received: int, new_received: int, *, expire_time: float
    ) -> bool:
        """Move ``received`` forward (and the expiry with it) if it still is ``received``.
        True if it moved."""

        def q(conn: Connection) -> bool:
            res = conn.execute(
                update(t.uploads)
                .where(t.uploads.c.id == upload_id, t.uploads.c.received == received)
                .values(received=new_received, expire_time=expire_time)
            )
            return res.rowcount == 1

        return await self._run(q)

    async def finish_upload(self, upload_id: str, file: File) -> None:
        """Close the session and record its file, in one transaction. Raises ``NotFound``
        if the session is gone (finalized concurrently, or swept)."""

        def q(conn: Connection) -> None:
            res = conn.execute(delete(t.uploads).where(t.uploads.c.id == upload_id))
            if res.rowcount != 1:
                raise NotFound("upload session not found: it expired or was finalized")
            conn.execute(insert(t.files).values(**_file_row(file)))

        await self._run(q)

    async def delete_upload(self, upload_id: str) -> None:
        await self._run(lambda c: c.execute(delete(t.uploads).where(t.uploads.c.id == upload_id)))

    async def take_expired_uploads(self, now: float) -> list[Upload]:
        """Delete sessions past their expiry; return them (the caller removes staging blobs)."""

        def q(conn: Connection) -> list[Upload]:
            stmt = select(t.uploads).where(t.uploads.c.expire_time < now)
            rows = [_upload(r) for r in conn.execute(stmt).mappings()]
            if rows:
                conn.execute(delete(t.uploads).where(t.uploads.c.id.in_([r.id for r in rows])))
            return rows

        return await self._run(q)

    # -------------------------------------------------------------------- batches

    async def create_batch(
        self, batch: Batch, input_blob: str, annotations: dict[str, Any] | None = None
    ) -> None:
        """Insert a new batch. Raises ``AlreadyExists`` if its ``ref`` is taken."""
        row = _batch_row(batch)
        row["input_blob"] = input_blob
        row["annotations"] = json.dumps(annotations or {})
        await self._run(lambda c: c.execute(insert(t.batches).values(**row)))

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Raises ``NotFound``; another tenant's batch is not found either."""

        return await self._run(lambda c: _batch(_owned_row(c, t.batches, batch_id, tenant)))

    async def batch_input(self, batch_id: str) -> tuple[str, dict[str, Any]]:
        """The input blob key and annotations of a batch."""

        def q(conn: Connection) -> tuple[str, dict[str, Any]]:
            row = conn.execute(
                select(t.batches.c.input_blob, t.batches.c.annotations).where(
                    t.batches.c.id == batch_id
                )
            ).first()
            if row is None:
                raise NotFound(f"batch batches/{batch_id} does not exist")
            return row[0], json.loads(row[1] or "{}")

        return await self._run(q)

    async def find_batch_by_ref(self, ref: str) -> Batch | None:
        def q(conn: Connection) -> Batch | None:
            row = conn.execute(select(t.batches).where(t.batches.c.ref == ref)).mappings().first()
            return None if row is None else _batch(row)

        return await self._run(q)

    async def list_batches(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[Batch]:
        stmt = _page(t.batches, tenant, limit, after)
        return await self._run(lambda c: [_batch(r) for r in c.execute(stmt).mappings()])

    async def transition(
        self, batch_id: str, target: BatchState, *, now: float, error: str | None = None
    ) -> bool:
        """Move a batch to ``target`` if its current state allows it. True if it moved."""
        sources = [s.value for s in allowed_sources(target)]

        def q(conn: Connection) -> bool:
            values: dict[str, Any] = {"state": target.value, "update_time": now}
            if target.terminal:
                values["end_time"] = now
            if error is not None:
                values["error"] = error
            res = conn.execute(
                update(t.batches)
                .where(t.batches.c.id == batch_id, t.batches.c.state.in_(sources))
                .values(**values)
            )
            return res.rowcount == 1

        return await self._run(q)

    async def delete_batch(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Delete a batch and its shards; return it (the caller removes blobs)."""

        def q(conn: Connection) -> Batch:
            row = _owned_row(conn, t.batches, batch_id, tenant)
            conn.execute(delete(t.shards).where(t.shards.c.batch_id == batch_id))
            conn.execute(delete(t.batches).where(t.batches.c.id == batch_id))
            return _batch(row)

        return await self._run(q)

    async def expire_batches(self, now: float) -> list[str]:
        """Move batches past their deadline to EXPIRED; return their ids."""
        sources = [s.value for s in allowed_sources(BatchState.EXPIRED)]

        def q(conn: Connection) -> list[str]:
            ids = list(
                conn.execute(
                    select(t.batches.c.id).where(
                        t.batches.c.state.in_(sources), t.batches.c.expire_time < now
                    )
                ).scalars()
            )
            if ids:
                conn.execute(
                    update(t.batches)
                    .where(t.batches.c.id.in_(ids), t.batches.c.state.in_(sources))
                    .values(
                        state=BatchState.EXPIRED.value,
                        update_time=now,
                        end_time=now,
                        error="the batch did not finish before its deadline",
                    )
                )
            return ids

        return await self._run(q)

    # --------------------------------------------------------- batch-level leases

    async def claim_batch_work(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        models: Iterable[str] | None = None,
        batch_id: str | None = None,
    ) -> tuple[Batch, str] | None:
        """Lease one batch that needs admission (``"admit"``) or finalizing (``"finalize"``).

        A RUNNING batch is finalizable once all its shards are DONE; a terminal batch
        (cancelled, expired, failed) once no live lease remains on its shards.
        """
        b, s = t.batches, t.shards
        free = or_(b.c.lease_owner.is_(None), b.c.lease_expires < now)
        open_shards = exists().where(s.c.batch_id == b.c.id, s.c.state != ShardState.DONE.value)
        live_shards = exists().where(
            s.c.batch_id == b.c.id, s.c.state == ShardState.LEASED.value, s.c.lease_expires >= now
        )
        admit = and_(b.c.state == BatchState.PENDING.value, not_(b.c.admitted))
        finish = and_(
            not_(b.c.finalized),
            or_(
                and_(b.c.state == BatchState.RUNNING.value, b.c.admitted, not_(open_shards)),
                and_(b.c.state.in_(TERMINAL), not_(live_shards)),
            ),
        )
        model_list = list(models) if models is not None else None

        def q(conn: Connection) -> tuple[Batch, str] | None:
            stmt = select(t.batches).where(free, or_(admit, finish))
            if batch_id is not None:
                stmt = stmt.where(b.c.id == batch_id)
            if model_list is not None:
                stmt = stmt.where(b.c.model_resolved.in_(model_list))
            stmt = stmt.order_by(b.c.create_time).limit(1)
            if not self.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            row = conn.execute(stmt).mappings().first()
            if row is None:
                return None
            conn.execute(
                update(b)
                .where(b.c.id == row["id"])
                .values(lease_owner=owner, lease_expires=lease_until)
            )
            batch = _batch(row)
            phase = "admit" if batch.state is BatchState.PENDING else "finalize"
            return batch, phase

        return await self._run(q)

    async def release_batch(self, batch_id: str, owner: str) -> None:
        await self._run(
            lambda c: c.execute(
                update(t.batches)
                .where(t.batches.c.id == batch_id, t.batches.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires=None)
            )
        )

    async def admit(
        self,
        batch_id: str,
        owner: str,
        shards: Sequence[ShardSpec],
        *,
        now: float,
    ) -> bool:
        """Record the shards and move PENDING → RUNNING, in one transaction."""
        request_count = sum(sp.request_count for sp in shards)

        def q(conn: Connection) -> bool:
            res = conn.execute(
                update(t.batches)
                .where(
                    t.batches.c.id == batch_id,
                    t.batches.c.state == BatchState.PENDING.value,
                    t.batches.c.lease_owner == owner,
                )
                .values(
                    state=BatchState.RUNNING.value,
                    admitted=True,
                    request_count=request_count,
                    update_time=now,
                    lease_owner=None,
                    lease_expires=None,
                )
            )
            if res.rowcount != 1:
                return False
            rows = [
                {
                    "batch_id": batch_id,
                    "seq": sp.seq,
                    "byte_start": sp.byte_start,
                    "byte_end": sp.byte_end,
                    "first_line": sp.first_line,
                    "request_count": sp.request_count,
                    "state": ShardState.PENDING.value,
                    "attempts": 0,
                    "succeeded_count": 0,
                    "failed_count": 0,
                    "prompt_tokens": 0,
                    "candidates_tokens": 0,
                }
                for sp in shards
            ]
            for i in range(0, len(rows), 1000):
                conn.execute(insert(t.shards), rows[i : i + 1000])
            return True

        return await self._run(q)

    async def finalize(
        self,
        batch_id: str,
        owner: str,
        *,
        now: float,
        output: File | None,
        target: BatchState | None,
        error: str | None = None,
    ) -> bool:
        """Record the output file and, if ``target``, the final transition. One transaction.

        Returns False (and changes nothing) if the lease was lost or the batch moved
        to a state ``target`` cannot be entered from.
        """

        def q(conn: Connection) -> bool:
            stmt = update(t.batches).where(
                t.batches.c.id == batch_id,
                t.batches.c.lease_owner == owner,
                not_(t.batches.c.finalized),
            )
            values: dict[str, Any] = {
                "finalized": True,
                "update_time": now,
                "lease_owner": None,
                "lease_expires": None,
                "output_file_id": output.id if output else None,
            }
            if target is not None:
                stmt = stmt.where(t.batches.c.state.in_([s.value for s in allowed_sources(target)]))
                values["state"] = target.value
                values["end_time"] = now
            if error is not None:
                values["error"] = error
            if conn.execute(stmt.values(**values)).rowcount != 1:
                return False  # nothing was written yet
            if output is not None:
                conn.execute(insert(t.files).values(**_file_row(output)))
            return True

        return await self._run(q)

    # --------------------------------------------------------------------- shards

    async def lease_shard(
        self,
        owner: str,
        token: str,
        *,
        now: float,
        lease_until: float,
        models: Iterable[str] | None = None,
        batch_id: str | None = None,
    ) -> Shard | None:
        """Lease the next runnable shard: PENDING, or LEASED with an expired lease."""
        s, b = t.shards, t.batches
        model_list = list(models) if models is not None else None
        runnable = or_(
            s.c.state == ShardState.PENDING.value,
            and_(s.c.state == ShardState.LEASED.value, s.c.lease_expires < now),
        )

        def q(conn: Connection) -> Shard | None:
            stmt = (
                select(s.c.batch_id, s.c.seq)
                .join(b, b.c.id == s.c.batch_id)
                .where(runnable, b.c.state == BatchState.RUNNING.value)
            )
            if batch_id is not None:
                stmt = stmt.where(s.c.batch_id == batch_id)
            if model_list is not None:
                stmt = stmt.where(b.c.model_resolved.in_(model_list))
            stmt = stmt.order_by(b.c.create_time, s.c.batch_id, s.c.seq).limit(1)
            if not self.is_sqlite:
                stmt = stmt.with_for_update(of=s, skip_locked=True)
            found = conn.execute(stmt).first()
            if found is None:
                return None
            key = (s.c.batch_id == found[0], s.c.seq == found[1])
            res = conn.execute(
                update(s)
                .where(*key, runnable)
                .values(
                    state=ShardState.LEASED.value,
                    lease_owner=owner,
                    lease_token=token,
                    lease_expires=lease_until,
                    attempts=s.c.attempts + 1,
                )
            )
            if res.rowcount != 1:
                return None
            row = conn.execute(select(s).where(*key)).mappings().one()
            return _shard(row)

        return await self._run(q)

    async def renew_shard(self, batch_id: str, seq: int, token: str, lease_until: float) -> bool:
        """Extend a lease we hold. False if it was lost (expired and taken)."""

        def q(conn: Connection) -> bool:
            res = conn.execute(
                update(t.shards)
                .where(
                    t.shards.c.batch_id == batch_id,
                    t.shards.c.seq == seq,
                    t.shards.c.lease_token == token,
                    t.shards.c.state == ShardState.LEASED.value,
                )
                .values(lease_expires=lease_until)
            )
            return res.rowcount == 1

        return await self._run(q)

    async def release_shard(self, batch_id: str, seq: int, token: str) -> bool:
        """Give a leased shard back unfinished, so another worker can take it now."""

        def q(conn: Connection) -> bool:
            res = conn.execute(
                update(t.shards)
                .where(
                    t.shards.c.batch_id == batch_id,
                    t.shards.c.seq == seq,
                    t.shards.c.lease_token == token,
                    t.shards.c.state == ShardState.LEASED.value,
                )
                .values(
                    state=ShardState.PENDING.value,
                    lease_owner=None,
                    lease_token=None,
                    lease_expires=None,
                )
            )
            return res.rowcount == 1

        return await self._run(q)

    async def commit_shard(
        self, batch_id: str, seq: int, token: str, outcome: ShardOutcome, *, now: float
    ) -> bool:
        """Mark a shard DONE and add its counters to the batch, in one transaction.

        Only the holder of the current lease can commit; a worker whose lease expired
        and was taken gets False and must discard its output. This is what makes each
        request counted exactly once.
        """

        def q(conn: Connection) -> bool:
            res = conn.execute(
                update(t.shards)
                .where(
                    t.shards.c.batch_id == batch_id,
                    t.shards.c.seq == seq,
                    t.shards.c.lease_token == token,
                    t.shards.c.state == ShardState.LEASED.value,
                )
                .values(
                    state=ShardState.DONE.value,
                    output_blob=outcome.output_blob,
                    lease_owner=None,
                    lease_expires=None,
                    succeeded_count=outcome.succeeded,
                    failed_count=outcome.failed,
                    prompt_tokens=outcome.usage.prompt_tokens,
                    candidates_tokens=outcome.usage.candidates_tokens,
                )
            )
            if res.rowcount != 1:
                return False
            b = t.batches
            conn.execute(
                update(b)
                .where(b.c.id == batch_id)
                .values(
                    succeeded_count=b.c.succeeded_count + outcome.succeeded,
                    failed_count=b.c.failed_count + outcome.failed,
                    prompt_tokens=b.c.prompt_tokens + outcome.usage.prompt_tokens,
                    candidates_tokens=b.c.candidates_tokens + outcome.usage.candidates_tokens,
                    update_time=now,
                )
            )
            return True

        return await self._run(q)

    async def list_shards(self, batch_id: str) -> list[Shard]:
        def q(conn: Connection) -> list[Shard]:
            rows = conn.execute(
                select(t.shards).where(t.shards.c.batch_id == batch_id).order_by(t.shards.c.seq)
            ).mappings()
            return [_shard(r) for r in rows]

        return await self._run(q)

    async def lease_owners(self) -> set[str]:
        """Owners of live-or-stale leases, for recovering those of dead processes."""

        def q(conn: Connection) -> set[str]:
            shard_owners = conn.execute(
                select(t.shards.c.lease_owner)
                .where(t.shards.c.state == ShardState.LEASED.value)
                .distinct()
            ).scalars()
            batch_owners = conn.execute(
                select(t.batches.c.lease_owner)
                .where(t.batches.c.lease_owner.is_not(None))
                .distinct()
            ).scalars()
            return {o for o in [*shard_owners, *batch_owners] if o}

        return await self._run(q)

    async def release_owner(self, owner: str) -> int:
        """Release every lease held by ``owner`` (shutdown, or a dead process)."""

        def q(conn: Connection) -> int:
            res = conn.execute(
                update(t.shards)
                .where(t.shards.c.lease_owner == owner, t.shards.c.state == ShardState.LEASED.value)
                .values(
                    state=ShardState.PENDING.value,
                    lease_owner=None,
                    lease_token=None,
                    lease_expires=None,
                )
            )
            conn.execute(
                update(t.batches)
                .where(t.batches.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires=None)
            )
            return int(res.rowcount)

        return await self._run(q)


# -------------------------------------------------------------------- plumbing


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


_NOUNS = {"files": "file", "batches": "batch"}


def _owned_row(conn: Connection, table: Table, row_id: str, tenant: str | None) -> Any:
    """The row with ``row_id`` (of ``tenant``, if given). Raises ``NotFound``."""
    stmt = select(table).where(table.c.id == row_id)
    if tenant is not None:
        stmt = stmt.where(table.c.tenant == tenant)
    row = conn.execute(stmt).mappings().first()
    if row is None:
        raise NotFound(f"{_NOUNS[table.name]} {table.name}/{row_id} does not exist")
    return row


def _page(table: Table, tenant: str, limit: int, after: tuple[float, str] | None) -> Select[Any]:
    """Newest first; ``after`` is the (create_time, id) of the previous page's last row."""
    stmt = select(table).where(table.c.tenant == tenant)
    if after is not None:
        stmt = stmt.where(
            or_(
                table.c.create_time < after[0],
                and_(table.c.create_time == after[0], table.c.id < after[1]),
            )
        )
    return stmt.order_by(table.c.create_time.desc(), table.c.id.desc()).limit(limit)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


def _file_row(file: File) -> dict[str, Any]:
    return {
        "id": file.id,
        "tenant": file.tenant,
        "display_name": file.display_name,
        "mime_type": file.mime_type,
        "size_bytes": file.size_bytes,
        "sha256": file.sha256,
        "blob_key": file.blob_key,
        "source": file.source.value,
        "state": file.state.value,
        "create_time": file.create_time,
        "update_time": file.update_time,
        "expire_time": file.expire_time,
    }


def _file(row: Any) -> File:
    return File(
        id=row["id"],
        tenant=row["tenant"],
        display_name=row["display_name"],
        mime_type=row["mime_type"],
        size_bytes=int(row["size_bytes"]),
        sha256=row["sha256"],
        blob_key=row["blob_key"],
        source=FileSource(row["source"]),
        state=FileState(row["state"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        expire_time=row["expire_time"],
    )


def _upload_row(upload: Upload) -> dict[str, Any]:
    return {
        "id": upload.id,
        "tenant": upload.tenant,
        "file_id": upload.file_id,
        "display_name": upload.display_name,
        "mime_type": upload.mime_type,
        "size_bytes": upload.size_bytes,
        "received": upload.received,
        "expire_time": upload.expire_time,
    }


def _upload(row: Any) -> Upload:
    return Upload(
        id=row["id"],
        tenant=row["tenant"],
        file_id=row["file_id"],
        display_name=row["display_name"],
        mime_type=row["mime_type"],
        size_bytes=int(row["size_bytes"]),
        received=int(row["received"]),
        expire_time=row["expire_time"],
    )


def _batch_row(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "tenant": batch.tenant,
        "kind": batch.kind.value,
        "model": batch.model,
        "model_resolved": batch.model_resolved,
        "display_name": batch.display_name,
        "state": batch.state.value,
        "input_file_id": batch.input_file_id,
        "inline": batch.inline,
        "output_file_id": batch.output_file_id,
        "request_count": batch.request_count,
        "succeeded_count": batch.succeeded_count,
        "failed_count": batch.failed_count,
        "prompt_tokens": batch.usage.prompt_tokens,
        "candidates_tokens": batch.usage.candidates_tokens,
        "create_time": batch.create_time,
        "update_time": batch.update_time,
        "end_time": batch.end_time,
        "expire_time": batch.expire_time,
        "error": batch.error,
        "ref": batch.ref,
        "admitted": batch.admitted,
        "finalized": batch.finalized,
    }


def _batch(row: Any) -> Batch:
    return Batch(
        id=row["id"],
        tenant=row["tenant"],
        kind=BatchKind(row["kind"]),
        model=row["model"],
        model_resolved=row["model_resolved"],
        display_name=row["display_name"],
        state=BatchState(row["state"]),
        input_file_id=row["input_file_id"],
        inline=bool(row["inline"]),
        output_file_id=row["output_file_id"],
        request_count=int(row["request_count"]),
        succeeded_count=int(row["succeeded_count"]),
        failed_count=int(row["failed_count"]),
        usage=Usage(int(row["prompt_tokens"]), int(row["candidates_tokens"])),
        create_time=row["create_time"],
        update_time=row["update_time"],
        end_time=row["end_time"],
        expire_time=row["expire_time"],
        error=row["error"],
        ref=row["ref"],
        admitted=bool(row["admitted"]),
        finalized=bool(row["finalized"]),
    )


def _shard(row: Any) -> Shard:
    return Shard(
        batch_id=row["batch_id"],
        seq=int(row["seq"]),
        byte_start=int(row["byte_start"]),
        byte_end=int(row["byte_end"]),
        first_line=int(row["first_line"]),
        request_count=int(row["request_count"]),
        state=ShardState(row["state"]),
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        lease_token=row["lease_token"],
        attempts=int(row["attempts"]),
        output_blob=row["output_blob"],
    )
