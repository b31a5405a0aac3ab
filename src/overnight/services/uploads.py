"""Resumable uploads (spec §3.1-3.2): open a session, append chunks in order, finalize.

The upload URL's ``upload_id`` is a capability: whoever holds it may send the bytes,
without an API key, exactly as with Google. Only its SHA-256 is stored. Chunks are
streamed to a staging blob (``uploads/<id>.part``) and never held whole in memory;
at finalize the staging blob is renamed to ``files/<file id>`` and the file recorded.

A chunk whose offset is below the bytes received so far is a retry (the SDK resends a
chunk whose reply it did not understand): the bytes already held are skipped, so a
repeated chunk changes nothing. An offset beyond them is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import BinaryIO

from overnight.blobs.local import LocalBlobStore
from overnight.domain.files import File, FileSource, FileState
from overnight.domain.uploads import UNKNOWN_SIZE, Upload
from overnight.errors import FailedPrecondition, InvalidArgument
from overnight.services.ids import new_id
from overnight.store.sql import SqlStore

CHUNK_GRANULARITY = 8 * 1024 * 1024
WRITE_BUFFER = 1 << 20
_FILE_ID = re.compile(r"[a-z0-9-]{1,40}")


def session_id(token: str) -> str:
    """The stored id of the session that the URL token ``token`` opens."""
    return hashlib.sha256(token.encode()).hexdigest()


class UploadService:
    """Resumable upload sessions. One instance per process: it serializes the chunks
    of each session and keeps their running SHA-256."""

    def __init__(
        self,
        store: SqlStore,
        blobs: LocalBlobStore,
        *,
        max_bytes: int,
        session_s: float,
        retention_s: float | None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.max_bytes = max_bytes
        self.session_s = session_s
        self.retention_s = retention_s
        self._locks: dict[str, asyncio.Lock] = {}
        # session id -> (hash of the first ``n`` bytes, n); lets finalize skip a re-read
        self._hashes: dict[str, tuple[hashlib._Hash, int]] = {}

    async def start(
        self,
        tenant: str,
        *,
        name: str | None = None,
        display_name: str = "",
        mime_type: str = "application/octet-stream",
        size_bytes: int | None = None,
    ) -> str:
        """Open a session; returns the URL token. Raises ``InvalidArgument`` for a size
        over ``server.max_upload_bytes`` or a bad requested name, ``AlreadyExists`` if
        the requested ``files/<id>`` is taken."""
        if size_bytes is not None and size_bytes < 0:
            raise InvalidArgument(f"size_bytes must not be negative, got {size_bytes}")
        if size_bytes is not None and size_bytes > self.max_bytes:
            raise InvalidArgument(
                f"the file is {size_bytes} bytes, over this server's upload limit of "
                f"{self.max_bytes} bytes (setting server.max_upload_bytes)"
            )
        file_id = new_id()
        if name:
            file_id = name.removeprefix("files/")
            if not _FILE_ID.fullmatch(file_id):
                raise InvalidArgument(
                    f"file name {name!r} is invalid: use files/ID where ID is 1-40 "
                    "lowercase letters, digits or '-'"
                )
        token = secrets.token_urlsafe(32)
        upload = Upload(
            id=session_id(token),
            tenant=tenant,
            file_id=file_id,
            display_name=display_name,
            mime_type=mime_type,
            size_bytes=UNKNOWN_SIZE if size_bytes is None else size_bytes,
            received=0,
            expire_time=time.time() + self.session_s,
        )
        staging = self.blobs.path(upload.staging_key)

        def create() -> None:
            staging.parent.mkdir(parents=True, exist_ok=True)
            staging.touch()

        await asyncio.to_thread(create)
        try:
            await self.store.create_upload(upload)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        return token

    async def status(self, token: str) -> Upload:
        """The open session of ``token``. Raises ``NotFound``."""
        return await self.store.get_upload(session_id(token), now=time.time())

    async def append(
        self, token: str, offset: int, body: AsyncIterator[bytes], *, finalize: bool
    ) -> Upload | File:
        """Append one chunk sent at ``offset``; with ``finalize``, make the file.

        Returns the session (still active) or, after finalize, the new file. Raises
        ``NotFound`` for an unknown, expired or finalized session, ``InvalidArgument``
        for an offset beyond the bytes received, more bytes than declared, or a final
        size that differs from the declared one.
        """
        sid = session_id(token)
        lock = self._locks.setdefault(sid, asyncio.Lock())
        async with lock:
            upload = await self.store.get_upload(sid, now=time.time())
            if offset > upload.received:
                raise InvalidArgument(
                    f"X-Goog-Upload-Offset {offset} is beyond the {upload.received} bytes "
                    f"received so far; resume at offset {upload.received}"
                )
            received = await self._write(upload, offset, body)
            if received != upload.received:
                # each chunk that lands keeps the session alive for another ``session_s``
                expire = time.time() + self.session_s
                if not await self.store.advance_upload(
                    sid, upload.received, received, expire_time=expire
                ):
                    raise FailedPrecondition("the upload session was changed by another request")
                upload = _with_received(upload, received)
            if not finalize:
                return upload
            file = await self._finalize(upload)
        self._forget(sid)
        return file

    async def cancel(self, token: str) -> None:
        """Drop a session and its staged bytes. Raises ``NotFound``."""
        upload = await self.status(token)
        await self.store.delete_upload(upload.id)
        await asyncio.to_thread(self.blobs.delete, upload.staging_key)
        self._forget(upload.id)

    async def sweep_expired(self, now: float | None = None) -> int:
        """Drop sessions past their expiry and their staged bytes; returns how many."""
        expired = await self.store.take_expired_uploads(time.time() if now is None else now)
        for upload in expired:
            await asyncio.to_thread(self.blobs.delete, upload.staging_key)
            self._forget(upload.id)
        return len(expired)

    # ------------------------------------------------------------------ internals

    async def _write(self, upload: Upload, offset: int, body: AsyncIterator[bytes]) -> int:
        """Stream ``body`` onto the staging blob; returns the new received count."""
        limit = upload.size_bytes if upload.size_bytes != UNKNOWN_SIZE else self.max_bytes
        skip = upload.received - offset  # bytes of this chunk we already hold (a retry)
        received = upload.received
        hashed = self._hashes.pop(upload.id, None)
        if hashed and hashed[1] == received:
            hasher: hashlib._Hash | None = hashed[0]
        else:  # lost after a failed chunk: finalize re-reads the staged bytes instead
            hasher = hashlib.sha256() if received == 0 else None
        handle = await asyncio.to_thread(_open_at, self.blobs.path(upload.staging_key), received)
        pending: list[bytes] = []
        pending_len = 0
        try:
            async for piece in body:
                if skip:
                    dropped = min(skip, len(piece))
                    skip -= dropped
                    piece = piece[dropped:]
                if not piece:
                    continue
                if received + pending_len + len(piece) > limit:
                    raise InvalidArgument(_too_much(upload, limit, self.max_bytes))
                pending.append(piece)
                pending_len += len(piece)
                if pending_len >= WRITE_BUFFER:
                    await asyncio.to_thread(_write_out, handle, hasher, pending)
                    received += pending_len
                    pending, pending_len = [], 0
            if pending:
                await asyncio.to_thread(_write_out, handle, hasher, pending)
                received += pending_len
        except BaseException:
            await asyncio.to_thread(handle.close)
            raise  # ``received`` in the store is unchanged; the next chunk truncates
        await asyncio.to_thread(handle.close)
        if hasher is not None:
            self._hashes[upload.id] = (hasher, received)
        return received

    async def _finalize(self, upload: Upload) -> File:
        if upload.size_bytes != UNKNOWN_SIZE and upload.received != upload.size_bytes:
            raise InvalidArgument(
                f"the upload declared {upload.size_bytes} bytes "
                f"(X-Goog-Upload-Header-Content-Length) but {upload.received} were received"
            )
        hashed = self._hashes.get(upload.id)
        staging = self.blobs.path(upload.staging_key)
        target = self.blobs.path(f"files/{upload.file_id}")
        known = hashed[0].hexdigest() if hashed and hashed[1] == upload.received else None

        def publish() -> str:
            digest = known or _sha256_of(staging)
            with staging.open("rb+") as f:
                os.fsync(f.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
            return digest

        digest = await asyncio.to_thread(publish)
        now = time.time()
        file = File(
            id=upload.file_id,
            tenant=upload.tenant,
            display_name=upload.display_name,
            mime_type=upload.mime_type,
            size_bytes=upload.received,
            sha256=digest,
            blob_key=f"files/{upload.file_id}",
            source=FileSource.UPLOADED,
            state=FileState.ACTIVE,
            create_time=now,
            update_time=now,
            expire_time=None if self.retention_s is None else now + self.retention_s,
        )
        try:
            await self.store.finish_upload(upload.id, file)
        except BaseException:
            await asyncio.to_thread(target.unlink, True)
            raise
        return file

    def _forget(self, sid: str) -> None:
        self._locks.pop(sid, None)
        self._hashes.pop(sid, None)


def _with_received(upload: Upload, received: int) -> Upload:
    return Upload(
        id=upload.id,
        tenant=upload.tenant,
        file_id=upload.file_id,
        display_name=upload.display_name,
        mime_type=upload.mime_type,
        size_bytes=upload.size_bytes,
        received=received,
        expire_time=upload.expire_time,
    )


def _too_much(upload: Upload, limit: int, max_bytes: int) -> str:
    if upload.size_bytes != UNKNOWN_SIZE:
        return (
            f"more bytes than the {upload.size_bytes} declared "
            "(X-Goog-Upload-Header-Content-Length) were sent"
        )
    return (
        f"the file is over this server's upload limit of {max_bytes} bytes "
        "(setting server.max_upload_bytes)"
    )


def _open_at(path: os.PathLike[str], received: int) -> BinaryIO:
    """The staging file, cut back to ``received`` (dropping a torn earlier chunk)."""
    handle = open(path, "r+b")  # noqa: SIM115 - closed by the caller
    handle.truncate(received)
    handle.seek(received)
    return handle


def _write_out(handle: BinaryIO, hasher: hashlib._Hash | None, pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    handle.write(data)
    if hasher is not None:
        hasher.update(data)


def _sha256_of(path: os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(WRITE_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()
