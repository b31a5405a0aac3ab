"""Resumable uploads (spec §3.1-3.2): open a session, append chunks in order, finalize.

The upload URL's ``upload_id`` is a capability: whoever holds it may send the bytes,
without an API key, exactly as with Google. Only its SHA-256 is stored. Chunks are
streamed to a staged blob (``BlobStore.staged``, ``uploads/<id>.part``) and never held
whole in memory; at finalize the staged bytes are published under a key of the
session's own (``blobs.keys.uploaded_file_key``) and the file recorded. No finalize ever writes over, or removes,
bytes another session wrote: if the name was taken meanwhile, only this session's
bytes go.

A chunk whose offset is below the bytes received so far is a retry (the SDK resends a
chunk whose reply it did not understand): the bytes already held are compared with
the resent ones and skipped, so a repeated chunk changes nothing, while one that
differs is refused, saying where. An offset beyond them is refused.

A full disk fails the chunk with ``StorageFull`` and cuts the staged bytes back to
what the session had received: the client may resend once space is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator

from overnight.blobs.base import BlobStore, StagedBlob
from overnight.blobs.keys import upload_staging_key, uploaded_file_key
from overnight.domain.files import File, requested_name_problem
from overnight.domain.uploads import UNKNOWN_SIZE, Upload
from overnight.errors import AlreadyExists, BlobError, FailedPrecondition, InvalidArgument
from overnight.services.ids import new_id
from overnight.store.base import UploadStore

CHUNK_GRANULARITY = 8 * 1024 * 1024
WRITE_BUFFER = 1 << 20


def session_id(token: str) -> str:
    """The stored id of the session that the URL token ``token`` opens."""
    return hashlib.sha256(token.encode()).hexdigest()


class UploadService:
    """Resumable upload sessions. One instance per process: it serializes the chunks
    of each session and keeps their running SHA-256."""

    def __init__(
        self,
        store: UploadStore,
        blobs: BlobStore,
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
        over ``server.max_upload_bytes`` or a bad (or reserved) requested name,
        ``AlreadyExists`` if the tenant's ``files/<id>`` is taken, ``StorageFull``."""
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
            problem = requested_name_problem(file_id)
            if problem:
                raise InvalidArgument(f"file name {name!r} is invalid: {problem}")
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
        staged = self._staged(upload)
        await asyncio.to_thread(staged.create)
        try:
            await self.store.create_upload(upload)
        except BaseException:
            self.blobs.delete(staged.key)
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
        for an offset beyond the bytes received, a resent chunk whose bytes differ from
        those received, more bytes than declared, or a final size that differs from the
        declared one; ``AlreadyExists`` if the name was taken while the session was open
        (the session is dropped); ``StorageFull`` on a full disk (resend the chunk).
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
        await asyncio.to_thread(_drop_bytes, self.blobs, upload)
        self._forget(upload.id)

    async def sweep_expired(self, now: float | None = None) -> int:
        """Drop sessions past their expiry and their staged bytes; returns how many."""
        expired = await self.store.take_expired_uploads(time.time() if now is None else now)
        for upload in expired:
            await asyncio.to_thread(_drop_bytes, self.blobs, upload)
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
        staged = self._staged(upload)
        # an earlier finalize of this still-open session moved the bytes, then failed
        await asyncio.to_thread(staged.reclaim, _file_key(upload))
        await asyncio.to_thread(staged.truncate, received)  # drop a torn earlier chunk
        pending: list[bytes] = []
        pending_len = 0
        try:
            async for piece in body:
                if skip:
                    held = min(skip, len(piece))
                    at = received - skip
                    await asyncio.to_thread(_check_resent, staged, piece[:held], at, offset)
                    skip -= held
                    piece = piece[held:]
                if not piece:
                    continue
                if received + pending_len + len(piece) > limit:
                    raise InvalidArgument(_too_much(upload, limit, self.max_bytes))
                pending.append(piece)
                pending_len += len(piece)
                if pending_len >= WRITE_BUFFER:
                    await asyncio.to_thread(_write_out, staged, received, hasher, pending)
                    received += pending_len
                    pending, pending_len = [], 0
            if pending:
                await asyncio.to_thread(_write_out, staged, received, hasher, pending)
                received += pending_len
        except BaseException:
            # ``received`` in the store is unchanged: drop what this chunk appended, now
            # (on a full disk, that space is what the next request needs)
            await asyncio.to_thread(_cut_back, staged, upload.received)
            raise
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
        staged = self._staged(upload)
        target = _file_key(upload)  # this session's own key: nobody else's
        known = hashed[0].hexdigest() if hashed and hashed[1] == upload.received else None

        def publish() -> str:
            digest = known or staged.sha256()
            staged.publish(target)
            return digest

        digest = await asyncio.to_thread(publish)
        file = File.uploaded(
            id=upload.file_id,
            tenant=upload.tenant,
            display_name=upload.display_name,
            mime_type=upload.mime_type,
            size_bytes=upload.received,
            sha256=digest,
            blob_key=target,
            now=time.time(),
            retention_s=self.retention_s,
        )
        try:
            await self.store.finish_upload(upload.id, file)
        except AlreadyExists:
            # The name went to another upload while this session was open: this session
            # is over, and only the bytes it wrote itself go.
            await asyncio.to_thread(self.blobs.delete, target)
            await self.store.delete_upload(upload.id)
            self._forget(upload.id)
            raise
        # Any other failure leaves the bytes where they are: the commit may even have
        # happened (a connection lost at COMMIT). A resent finalize that still finds the
        # session open knows it did not, and takes them back (see ``_write``).
        return file

    def _staged(self, upload: Upload) -> StagedBlob:
        return self.blobs.staged(upload_staging_key(upload.id))

    def _forget(self, sid: str) -> None:
        self._locks.pop(sid, None)
        self._hashes.pop(sid, None)


def _file_key(upload: Upload) -> str:
    """Where finalize publishes the session's bytes (see ``blobs.keys``)."""
    return uploaded_file_key(upload.tenant, upload.file_id, upload.id)


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


def _check_resent(staged: StagedBlob, resent: bytes, at: int, offset: int) -> None:
    """Refuse a resent stretch (starting at byte ``at``) that differs from the bytes held."""
    held = staged.read_range(at, at + len(resent))
    if held == resent:
        return
    where = next(
        (i for i, (a, b) in enumerate(zip(held, resent, strict=False)) if a != b),
        min(len(held), len(resent)),
    )
    byte = at + where
    got = f"0x{resent[where]:02x}" if where < len(resent) else "nothing"
    had = f"0x{held[where]:02x}" if where < len(held) else "nothing"
    raise InvalidArgument(
        f"the chunk sent at X-Goog-Upload-Offset {offset} overlaps bytes already received "
        f"but differs from them: byte {byte} of the file is {got} in this chunk and was "
        f"{had} before. A resent chunk must repeat the original bytes; to change the "
        "file, start a new upload"
    )


def _cut_back(staged: StagedBlob, received: int) -> None:
    """Drop whatever a failed chunk appended past ``received``."""
    with contextlib.suppress(OSError, BlobError):  # the next chunk truncates again
        staged.truncate(received)


def _drop_bytes(blobs: BlobStore, upload: Upload) -> None:
    """The bytes of a session that never became a file, wherever a failed finalize left them."""
    blobs.delete(upload_staging_key(upload.id))
    blobs.delete(_file_key(upload))


def _write_out(
    staged: StagedBlob, offset: int, hasher: hashlib._Hash | None, pieces: list[bytes]
) -> None:
    data = b"".join(pieces)
    staged.append(offset, data)
    if hasher is not None:
        hasher.update(data)
