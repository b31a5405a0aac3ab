"""API keys in SQL: the hash of each key and the tenant it belongs to."""

from __future__ import annotations

from sqlalchemy import Connection, func, insert, select

from overnight.store import tables as t
from overnight.store.db import Database


class SqlKeyStore:
    """The ``KeyStore`` over a ``Database``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_api_key(self, key_hash: str, tenant: str, prefix: str, *, now: float) -> None:
        await self._db.run(
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

        return await self._db.run(q)

    async def count_api_keys(self) -> int:
        return await self._db.run(
            lambda c: int(c.execute(select(func.count()).select_from(t.api_keys)).scalar() or 0)
        )
