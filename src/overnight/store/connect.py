"""Connecting to the metadata database: URL forms, SQLite pragmas, pooling."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

PG_CONNECT_DEFAULTS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def normalize_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_sql_engine(url: str) -> Engine:
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
    # pool_pre_ping: a connection the server dropped (restart, outage) is replaced on
    # checkout instead of failing the next transaction.
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "do_connect")
        def _on_do_connect(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
            # Defaults the URL may override: an unreachable server fails a connect in
            # seconds, and a dead peer is noticed by TCP keepalives instead of hanging.
            for name, value in PG_CONNECT_DEFAULTS.items():
                params.setdefault(name, value)

    return engine


def redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url
