"""Batches in SQL: create, read, list, move between states, delete."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from overnight.domain.batches import Batch, BatchState, allowed_sources
from overnight.errors import NotFound
from overnight.store import tables as t
from overnight.store.db import Database
from overnight.store.outbox import enqueue_batch_events
from overnight.store.rows import batch_values, to_batch
from overnight.store.sqlhelpers import owned_row, page


class SqlBatchStore:
    """The ``BatchStore`` over a ``Database``."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
                owned_row(conn, t.files, batch.input_file_id, batch.tenant, lock=True)
            conn.execute(insert(t.batches).values(**row))

        await self._db.run(q)

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Raises ``NotFound``; another tenant's batch is not found either."""

        return await self._db.run(lambda c: to_batch(owned_row(c, t.batches, batch_id, tenant)))

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

        return await self._db.run(q)

    async def find_batch_by_ref(self, ref: str) -> Batch | None:
        def q(conn: Connection) -> Batch | None:
            row = conn.execute(select(t.batches).where(t.batches.c.ref == ref)).mappings().first()
            return None if row is None else to_batch(row)

        return await self._db.run(q)

    async def list_batches(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[Batch]:
        stmt = page(t.batches, tenant, limit, after)
        return await self._db.run(lambda c: [to_batch(r) for r in c.execute(stmt).mappings()])

    async def transition(
        self, batch_id: str, target: BatchState, *, now: float, error: str | None = None
    ) -> bool:
        """Move a batch to ``target`` if its current state allows it. True if it moved.

        A terminal ``target`` writes the batch's webhook deliveries to the outbox in the
        same transaction.
        """
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
            if res.rowcount != 1:
                return False
            if target.terminal:
                enqueue_batch_events(conn, [batch_id], target, now)
            return True

        return await self._db.run(q)

    async def delete_batch(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Delete a batch and its shards; return it (the caller removes blobs)."""

        def q(conn: Connection) -> Batch:
            row = owned_row(conn, t.batches, batch_id, tenant)
            conn.execute(delete(t.shards).where(t.shards.c.batch_id == batch_id))
            conn.execute(delete(t.batches).where(t.batches.c.id == batch_id))
            return to_batch(row)

        return await self._db.run(q)
