"""The database the stores share: engine, migrations, and the transaction runner.

Every store method runs its blocking driver calls through ``Database.run``, on the
database's own threads, so a heartbeat's renewal never queues behind model work or
file copies in the event loop's default executor. ``run`` is also where driver
errors become store errors (``AlreadyExists``, ``StorageFull``, ``StoreError``) and
where calls in flight are tracked for the workers' health report.

SQLite runs in WAL mode, and every transaction starts with ``BEGIN IMMEDIATE`` so
that concurrent writers queue on the busy timeout instead of failing (see
``connect.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from overnight.errors import AlreadyExists, StorageFull, StoreError
from overnight.store import tables as t
from overnight.store.connect import create_sql_engine, normalize_url, redact_url
from overnight.store.migrations import MIGRATIONS

T = TypeVar("T")
log = logging.getLogger("overnight.store")


class Database:
    """One SQL database (SQLite or PostgreSQL). Build with ``await Database.open(url)``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # As many threads as the pool has connections (create_sql_engine: 10 + 10).
        self._threads = ThreadPoolExecutor(max_workers=20, thread_name_prefix="overnight-store")
        self._calls: dict[int, float] = {}  # calls in flight: id -> monotonic start
        self._call_ids = itertools.count()

    @classmethod
    async def open(cls, url: str) -> Database:
        """Connect and apply pending migrations. Raises ``StoreError`` naming the URL."""
        url = normalize_url(url)
        try:
            engine = create_sql_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot use database URL {redact_url(url)}: {exc}") from None
        db = cls(engine)
        await db.run(db._migrate)
        return db

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

        return await self.run(q)

    def waiting_since(self) -> float | None:
        """When (``time.monotonic``) the oldest call still in flight began; None if idle.

        A call that waits long means a locked or unreachable database: the workers'
        health report says so.
        """
        return min(self._calls.values(), default=None)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction in a thread; driver errors become StoreError.

        Raises ``AlreadyExists`` for an integrity error (a taken key), ``StorageFull``
        when the disk under the database is full, ``StoreError`` for any other driver
        error. A connection the database dropped (restart, network cut) is discarded by
        the pool (``pool_pre_ping``, and SQLAlchemy invalidates the pool on a disconnect
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
