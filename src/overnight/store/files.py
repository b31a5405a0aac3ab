"""Files in SQL: the records of uploaded and generated files, per tenant."""

from __future__ import annotations

from sqlalchemy import Connection, delete, exists, insert, not_, select, tuple_

from overnight.domain.batches import BatchState
from overnight.domain.files import File
from overnight.errors import FailedPrecondition
from overnight.store import tables as t
from overnight.store.db import Database
from overnight.store.rows import file_values, to_file
from overnight.store.sqlhelpers import input_in_use, owned_row, page


class SqlFileStore:
    """The ``FileStore`` over a ``Database``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_file(self, file: File) -> None:
        await self._db.run(lambda c: c.execute(insert(t.files).values(**file_values(file))))

    async def get_file(self, file_id: str, tenant: str | None = None) -> File:
        """Raises ``NotFound``; another tenant's file is not found either."""

        return await self._db.run(lambda c: to_file(owned_row(c, t.files, file_id, tenant)))

    async def list_files(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[File]:
        stmt = page(t.files, tenant, limit, after)
        return await self._db.run(lambda c: [to_file(r) for r in c.execute(stmt).mappings()])

    async def delete_file(self, file_id: str, tenant: str | None = None) -> File:
        """Delete the row and return it (the caller deletes the blob).

        Raises ``NotFound``, or ``FailedPrecondition`` naming the batch while the file is
        the input of a batch not yet finalized. The check and the delete are one
        transaction holding the file's row, and ``create_batch`` locks that row too, so no
        batch can start on a file as it is deleted (on SQLite and PostgreSQL alike).
        """
        f, b = t.files, t.batches

        def q(conn: Connection) -> File:
            row = owned_row(conn, f, file_id, tenant, lock=True)
            reader = conn.execute(
                select(b.c.id, b.c.state)
                .where(b.c.tenant == row["tenant"], b.c.input_file_id == file_id)
                .where(not_(b.c.finalized))
                .order_by(b.c.create_time)
                .limit(1)
            ).first()
            if reader is not None:
                raise FailedPrecondition(input_in_use(file_id, reader[0], BatchState(reader[1])))
            conn.execute(delete(f).where(f.c.tenant == row["tenant"], f.c.id == file_id))
            return to_file(row)

        return await self._db.run(q)

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

        return await self._db.run(q)
