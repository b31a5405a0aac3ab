"""The metadata store on SQLAlchemy 2 Core, for SQLite and PostgreSQL.

Every public method is async; the blocking driver calls run on the store's own
threads, so a heartbeat's renewal never queues behind model work or file copies in
the event loop's default executor.
Each method is one transaction. State changes are conditional UPDATEs (``WHERE
state IN …`` / ``WHERE lease_token = …``) and report whether they won, so two
workers racing for the same shard or transition cannot both succeed.

SQLite runs in WAL mode, and every transaction starts with ``BEGIN IMMEDIATE`` so
that concurrent writers queue on the busy timeout instead of failing. On
PostgreSQL, shard leasing uses ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from overnight.domain.batches import (
    Batch,
    BatchState,
    Shard,
    ShardOutcome,
    ShardSpec,
    ShardState,
    allowed_sources,
)
from overnight.domain.files import File
from overnight.domain.uploads import Upload
from overnight.errors import AlreadyExists, FailedPrecondition, NotFound, StorageFull, StoreError
from overnight.store import tables as t
from overnight.store.connect import create_sql_engine, normalize_url, redact_url
from overnight.store.migrations import MIGRATIONS
from overnight.store.rows import (
    batch_values,
    file_values,
    to_batch,
    to_file,
    to_shard,
    to_upload,
    upload_values,
)

T = TypeVar("T")
log = logging.getLogger("overnight.store")

TERMINAL = [s.value for s in BatchState if s.terminal]


class SqlStore:
    """Files, batches and shards. Build with ``await SqlStore.open(url)``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # As many threads as the pool has connections (create_sql_engine: 10 + 10).
        self._threads = ThreadPoolExecutor(max_workers=20, thread_name_prefix="overnight-store")
        self._calls: dict[int, float] = {}  # calls in flight: id -> monotonic start
        self._call_ids = itertools.count()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, url: str) -> SqlStore:
        """Connect and apply pending migrations. Raises ``StoreError`` naming the URL."""
        url = normalize_url(url)
        try:
            engine = create_sql_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot use database URL {redact_url(url)}: {exc}") from None
        store = cls(engine)
        await store._run(store._migrate)
        return store

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)
        self._threads.shutdown(wait=False)

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

    @property
    def sqlite_dir(self) -> Path | None:
        """The directory of the SQLite database file (None: not SQLite, or in memory)."""
        database = self._engine.url.database
        if not self.is_sqlite or not database or database == ":memory:":
            return None
        return Path(database).resolve().parent

    def _data_where(self) -> str:
        """Where the database keeps its data, for a full-disk message."""
        if self.sqlite_dir is not None:
            return str(self.sqlite_dir)
        url = self._engine.url.render_as_string(hide_password=True)
        return f"the database of {redact_url(url)}"

    async def schema_version(self) -> int:
        def q(conn: Connection) -> int:
            return int(conn.execute(select(func.max(t.schema_migrations.c.version))).scalar() or 0)

        return await self._run(q)

    def waiting_since(self) -> float | None:
        """When (``time.monotonic``) the oldest call still in flight began; None if idle.

        A call that waits long means a locked or unreachable database: the workers'
        health report says so.
        """
        return min(self._calls.values(), default=None)

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction in a thread; driver errors become StoreError.

        A connection the database dropped (restart, network cut) is discarded by the
        pool (``pool_pre_ping``, and SQLAlchemy invalidates the pool on a disconnect
        error), so once the database is back the next call reconnects.
        """

        def call() -> T:
            with self._engine.begin() as conn:
                return fn(conn)

        call_id = next(self._call_ids)
        self._calls[call_id] = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except IntegrityError as exc:
            # The driver's text names tables and key values (perhaps another tenant's):
            # it goes to the log, not to the caller.
            log.info("integrity error: %s", _first_line(exc))
            raise AlreadyExists(
                "a record with that name already exists; choose another name"
            ) from None
        except (DBAPIError, SQLAlchemyError) as exc:
            if _disk_full(exc):
                raise StorageFull(
                    f"the disk holding {self._data_where()} is full: delete files or batches "
                    "you no longer need, or free space on that disk, then retry; no restart "
                    "is needed"
                ) from None
            raise StoreError(f"metadata store error: {_first_line(exc)}") from None
        finally:
            del self._calls[call_id]

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
        await self._run(lambda c: c.execute(insert(t.files).values(**file_values(file))))

    async def get_file(self, file_id: str, tenant: str | None = None) -> File:
        """Raises ``NotFound``; another tenant's file is not found either."""

        return await self._run(lambda c: to_file(_owned_row(c, t.files, file_id, tenant)))

    async def list_files(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[File]:
        stmt = _page(t.files, tenant, limit, after)
        return await self._run(lambda c: [to_file(r) for r in c.execute(stmt).mappings()])

    async def delete_file(self, file_id: str, tenant: str | None = None) -> File:
        """Delete the row and return it (the caller deletes the blob).

        Raises ``NotFound``, or ``FailedPrecondition`` naming the batch while the file is
        the input of a batch not yet finalized. The check and the delete are one
        transaction holding the file's row, and ``create_batch`` locks that row too, so no
        batch can start on a file as it is deleted (on SQLite and PostgreSQL alike).
        """
        f, b = t.files, t.batches

        def q(conn: Connection) -> File:
            row = _owned_row(conn, f, file_id, tenant, lock=True)
            reader = conn.execute(
                select(b.c.id, b.c.state)
                .where(b.c.tenant == row["tenant"], b.c.input_file_id == file_id)
                .where(not_(b.c.finalized))
                .order_by(b.c.create_time)
                .limit(1)
            ).first()
            if reader is not None:
                raise FailedPrecondition(_input_in_use(file_id, reader[0], BatchState(reader[1])))
            conn.execute(delete(f).where(f.c.tenant == row["tenant"], f.c.id == file_id))
            return to_file(row)

        return await self._run(q)

    async def take_expired_files(self, now: float, *, limit: int = 1000) -> list[File]:
        """Delete up to ``limit`` files whose ``expire_time`` has passed; return them.

        A file that is the input of a batch not yet finalized is kept until it is: the
        batch still reads it. The caller deletes the blobs.
        """
        f, b = t.files, t.batches
        in_use = exists().where(
            b.c.tenant == f.c.tenant, b.c.input_file_id == f.c.id, not_(b.c.finalized)
        )

        def q(conn: Connection) -> list[File]:
            stmt = (
                select(f)
                .where(f.c.expire_time.is_not(None), f.c.expire_time < now, not_(in_use))
                .limit(limit)
            )
            rows = [to_file(r) for r in conn.execute(stmt).mappings()]
            if rows:
                keys = [(r.tenant, r.id) for r in rows]
                conn.execute(delete(f).where(tuple_(f.c.tenant, f.c.id).in_(keys)))
            return rows

        return await self._run(q)

    # -------------------------------------------------------------- upload sessions

    async def create_upload(self, upload: Upload) -> None:
        """Record a session, reserving its file name in the tenant. Raises ``AlreadyExists``
        if the name is taken by a file or by another open session of the tenant."""
        u, f = t.uploads, t.files
        taken = AlreadyExists(
            f"file files/{upload.file_id} already exists; choose another name, or delete "
            "that file first"
        )

        def q(conn: Connection) -> None:
            if (
                conn.execute(
                    select(f.c.id).where(f.c.tenant == upload.tenant, f.c.id == upload.file_id)
                ).first()
                or conn.execute(
                    select(u.c.id).where(u.c.tenant == upload.tenant, u.c.file_id == upload.file_id)
                ).first()
            ):
                raise taken
            conn.execute(insert(u).values(**upload_values(upload)))

        try:
            await self._run(q)
        except AlreadyExists:  # lost the race for the name to a concurrent start
            raise taken from None

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
            return to_upload(row)

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
        if the session is gone (finalized concurrently, or swept).


        Raises ``AlreadyExists`` if a file of that name was recorded meanwhile (the name
        was taken while this session was open): the files key, not the session, is what
        guarantees one file per name. Nothing changes then; the caller drops the session.
        """
        f = t.files
        taken = AlreadyExists(
            f"file {file.name} already exists: another upload of that name finished first; "
            "choose another name, or delete that file first"
        )

        def q(conn: Connection) -> None:
            res = conn.execute(delete(t.uploads).where(t.uploads.c.id == upload_id))
            if res.rowcount != 1:
                raise NotFound("upload session not found: it expired or was finalized")
            if conn.execute(
                select(f.c.id).where(f.c.tenant == file.tenant, f.c.id == file.id)
            ).first():
                raise taken
            conn.execute(insert(f).values(**file_values(file)))

        try:
            await self._run(q)
        except AlreadyExists:  # a concurrent insert won on the key
            raise taken from None

    async def delete_upload(self, upload_id: str) -> None:
        await self._run(lambda c: c.execute(delete(t.uploads).where(t.uploads.c.id == upload_id)))

    async def take_expired_uploads(self, now: float) -> list[Upload]:
        """Delete sessions past their expiry; return them (the caller removes staging blobs)."""

        def q(conn: Connection) -> list[Upload]:
            stmt = select(t.uploads).where(t.uploads.c.expire_time < now)
            rows = [to_upload(r) for r in conn.execute(stmt).mappings()]
            if rows:
                conn.execute(delete(t.uploads).where(t.uploads.c.id.in_([r.id for r in rows])))
            return rows

        return await self._run(q)

    # -------------------------------------------------------------------- batches

    async def create_batch(
        self, batch: Batch, input_blob: str, annotations: dict[str, Any] | None = None
    ) -> None:
        """Insert a new batch. Raises ``AlreadyExists`` if its ``ref`` is taken, ``NotFound``
        if its input file is gone."""
        row = batch_values(batch)
        row["input_blob"] = input_blob
        row["annotations"] = json.dumps(annotations or {})

        def q(conn: Connection) -> None:
            if batch.input_file_id is not None:
                # Hold the input file's row so that a concurrent delete_file either
                # sees this batch or has already removed the file.
                _owned_row(conn, t.files, batch.input_file_id, batch.tenant, lock=True)
            conn.execute(insert(t.batches).values(**row))

        await self._run(q)

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Raises ``NotFound``; another tenant's batch is not found either."""

        return await self._run(lambda c: to_batch(_owned_row(c, t.batches, batch_id, tenant)))

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
            return None if row is None else to_batch(row)

        return await self._run(q)

    async def list_batches(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[Batch]:
        stmt = _page(t.batches, tenant, limit, after)
        return await self._run(lambda c: [to_batch(r) for r in c.execute(stmt).mappings()])

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
            return to_batch(row)

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
        # An overdue batch is never admitted or run: the reaper expires it instead,
        # whichever of the two a worker happens to reach first.
        admit = and_(
            b.c.state == BatchState.PENDING.value, not_(b.c.admitted), b.c.expire_time >= now
        )
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
            batch = to_batch(row)
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
        done_shards: int | None = None,
    ) -> bool:
        """Record the output file and, if ``target``, the final transition. One transaction.

        Returns False (and changes nothing) if the lease was lost, the batch moved to a
        state ``target`` cannot be entered from, or (``done_shards``) a shard committed
        after the output was built from that many DONE shards: the caller tries again.
        """

        def q(conn: Connection) -> bool:
            # Lock the batch row first: commit_shard does the same, so a shard can never
            # be counted on one side of a finalize and missing from its output.
            _lock_batch(conn, batch_id)
            if done_shards is not None and _count_done(conn, batch_id) != done_shards:
                return False
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
                conn.execute(insert(t.files).values(**file_values(output)))
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
                .where(runnable, b.c.state == BatchState.RUNNING.value, b.c.expire_time >= now)
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
                )
            )
            if res.rowcount != 1:
                return None
            row = conn.execute(select(s).where(*key)).mappings().one()
            return to_shard(row)

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

    async def count_failed_attempt(self, batch_id: str, seq: int, token: str) -> int | None:
        """Count one failed attempt at a shard we hold; return its failures so far.

        Only failures count: a lease lost to a crash or a shutdown is not an attempt.
        None if the lease was lost.
        """
        key = (t.shards.c.batch_id == batch_id, t.shards.c.seq == seq)

        def q(conn: Connection) -> int | None:
            res = conn.execute(
                update(t.shards)
                .where(
                    *key,
                    t.shards.c.lease_token == token,
                    t.shards.c.state == ShardState.LEASED.value,
                )
                .values(attempts=t.shards.c.attempts + 1)
            )
            if res.rowcount != 1:
                return None
            return int(conn.execute(select(t.shards.c.attempts).where(*key)).scalar_one())

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
        request counted exactly once. Committing again what was committed (a retry
        after the database dropped the reply) returns True and changes nothing.
        """

        def q(conn: Connection) -> bool:
            if _lock_batch(conn, batch_id) is not False:
                return False  # finalized (or gone): its output no longer takes shards
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
                # Committed already, if an earlier try's reply was lost with the connection.
                done = conn.execute(
                    select(t.shards.c.output_blob).where(
                        t.shards.c.batch_id == batch_id,
                        t.shards.c.seq == seq,
                        t.shards.c.state == ShardState.DONE.value,
                    )
                ).scalar()
                return done is not None and done == outcome.output_blob
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
            return [to_shard(r) for r in rows]

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

_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_PG_DISK_FULL = "53100"  # disk_full


def _disk_full(exc: BaseException) -> bool:
    """Whether a driver error says the disk under the database is full."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    if getattr(orig, "sqlstate", None) == _PG_DISK_FULL:
        return True
    return "database or disk is full" in str(orig) or "No space left on device" in str(orig)


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's message on one line (psycopg's span several)."""
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.split()) or type(exc).__name__


def _lock_batch(conn: Connection, batch_id: str) -> bool | None:
    """Lock the batch row for this transaction; returns its ``finalized`` (None: no such batch).

    PostgreSQL takes a row lock (SELECT … FOR UPDATE). SQLite needs none: every
    transaction already holds the database's write lock (BEGIN IMMEDIATE).
    """
    stmt = select(t.batches.c.finalized).where(t.batches.c.id == batch_id)
    if conn.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    value = conn.execute(stmt).scalar()
    return None if value is None else bool(value)


def _count_done(conn: Connection, batch_id: str) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(t.shards)
            .where(t.shards.c.batch_id == batch_id, t.shards.c.state == ShardState.DONE.value)
        ).scalar()
        or 0
    )


_NOUNS = {"files": "file", "batches": "batch"}


def _input_in_use(file_id: str, batch_id: str, state: BatchState) -> str:
    what = f"files/{file_id} is the input of batches/{batch_id}, which is {state.value}"
    if state.terminal:
        return f"{what} and still finishing; wait for it to finish, then delete the file"
    return f"{what}; cancel it or wait for it to finish, then delete the file"


def _owned_row(
    conn: Connection, table: Table, row_id: str, tenant: str | None, *, lock: bool = False
) -> Any:
    """The row with ``row_id`` (of ``tenant``, if given). Raises ``NotFound``.

    ``lock`` holds the row for the transaction on PostgreSQL (SQLite's write lock
    already covers it).
    """
    stmt = select(table).where(table.c.id == row_id)
    if tenant is not None:
        stmt = stmt.where(table.c.tenant == tenant)
    if lock and conn.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
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
