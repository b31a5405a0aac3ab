"""Upload sessions in SQL: open resumable uploads, each reserving its file name."""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select, update

from overnight.domain.files import File
from overnight.domain.uploads import Upload
from overnight.errors import AlreadyExists, NotFound
from overnight.store import tables as t
from overnight.store.db import Database
from overnight.store.rows import file_values, to_upload, upload_values


class SqlUploadStore:
    """The ``UploadStore`` over a ``Database``."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
            await self._db.run(q)
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

        return await self._db.run(q)

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

        return await self._db.run(q)

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
            await self._db.run(q)
        except AlreadyExists:  # a concurrent insert won on the key
            raise taken from None

    async def delete_upload(self, upload_id: str) -> None:
        await self._db.run(
            lambda c: c.execute(delete(t.uploads).where(t.uploads.c.id == upload_id))
        )

    async def take_expired_uploads(self, now: float) -> list[Upload]:
        """Delete sessions past their expiry; return them (the caller removes staging blobs)."""

        def q(conn: Connection) -> list[Upload]:
            stmt = select(t.uploads).where(t.uploads.c.expire_time < now)
            rows = [to_upload(r) for r in conn.execute(stmt).mappings()]
            if rows:
                conn.execute(delete(t.uploads).where(t.uploads.c.id.in_([r.id for r in rows])))
            return rows

        return await self._db.run(q)
