"""SQL fragments more than one store needs: row locks, tenant-owned rows, pages."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, Table, and_, func, or_, select

from overnight.domain.batches import BatchState, ShardState
from overnight.errors import NotFound
from overnight.store import tables as t

TERMINAL = [s.value for s in BatchState if s.terminal]

_NOUNS = {"files": "file", "batches": "batch", "webhooks": "webhook"}


def lock_batch(conn: Connection, batch_id: str) -> bool | None:
    """Lock the batch row for this transaction; returns its ``finalized`` (None: no such batch).

    PostgreSQL takes a row lock (SELECT … FOR UPDATE). SQLite needs none: every
    transaction already holds the database's write lock (BEGIN IMMEDIATE).
    """
    stmt = select(t.batches.c.finalized).where(t.batches.c.id == batch_id)
    if conn.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    value = conn.execute(stmt).scalar()
    return None if value is None else bool(value)


def count_done(conn: Connection, batch_id: str) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(t.shards)
            .where(t.shards.c.batch_id == batch_id, t.shards.c.state == ShardState.DONE.value)
        ).scalar()
        or 0
    )


def input_in_use(file_id: str, batch_id: str, state: BatchState) -> str:
    what = f"files/{file_id} is the input of batches/{batch_id}, which is {state.value}"
    if state.terminal:
        return f"{what} and still finishing; wait for it to finish, then delete the file"
    return f"{what}; cancel it or wait for it to finish, then delete the file"


def owned_row(
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


def page(table: Table, tenant: str, limit: int, after: tuple[float, str] | None) -> Select[Any]:
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
