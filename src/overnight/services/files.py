"""File use-cases: import bytes as a file, read, list, download, delete, expire.

Every lookup is by tenant and id: file names are per tenant. Deletes work on a full
disk: one that meets ``StorageFull`` gives up the space reserve (``blobs.space``) and
runs again, and the reserve is made again once the delete has freed room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from overnight.blobs.base import BlobStore
from overnight.blobs.keys import file_key
from overnight.blobs.space import SpaceReserve
from overnight.domain.files import File, FileSource
from overnight.errors import (
    BlobNotFound,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StorageFull,
)
from overnight.services.ids import new_id
from overnight.store.base import FileStore

COPY_CHUNK = 1 << 20

T = TypeVar("T")
log = logging.getLogger("overnight.files")


class FileService:
    """Files of a tenant. ``retention_s`` sets the expiry of uploaded files (None: never);
    ``reserve`` is the space deletes may use on a full disk (None: no reserve)."""

    def __init__(
        self,
        store: FileStore,
        blobs: BlobStore,
        *,
        retention_s: float | None,
        reserve: SpaceReserve | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.retention_s = retention_s
        self.reserve = reserve

    async def create_from_chunks(
        self,
        tenant: str,
        chunks: Iterable[bytes],
        *,
        display_name: str = "",
        mime_type: str = "application/jsonl",
        max_bytes: int | None = None,
    ) -> File:
        """Stream ``chunks`` into a new blob (in a thread) and record the file.

        Raises ``InvalidArgument`` past ``max_bytes``, ``StorageFull`` on a full disk;
        either way no blob is left behind.
        """
        file_id = new_id()
        key = file_key(tenant, file_id)

        def copy() -> tuple[int, str]:
            writer = self.blobs.open_write(key)
            try:
                size = 0
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise InvalidArgument(f"the file is larger than the {max_bytes}-byte limit")
                    writer.write(chunk)
                return writer.commit()
            except BaseException:
                writer.abort()
                raise

        size, digest = await asyncio.to_thread(copy)
        file = File.uploaded(
            id=file_id,
            tenant=tenant,
            display_name=display_name,
            mime_type=mime_type,
            size_bytes=size,
            sha256=digest,
            blob_key=key,
            now=time.time(),
            retention_s=self.retention_s,
        )
        try:
            await self.store.create_file(file)
        except BaseException:
            await asyncio.to_thread(self.blobs.delete, key)
            raise
        return file

    async def import_path(
        self, tenant: str, path: Path, *, display_name: str | None = None
    ) -> File:
        """Copy a local file into the blob store, streaming."""
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"input file {path} does not exist") from None
        except IsADirectoryError:
            raise InvalidArgument(f"input {path} is a directory; give a JSONL file") from None

        def chunks() -> Iterable[bytes]:
            with handle:
                while chunk := handle.read(COPY_CHUNK):
                    yield chunk

        return await self.create_from_chunks(
            tenant, chunks(), display_name=display_name or path.name
        )

    async def get(self, tenant: str | None, file_id: str) -> File:
        return await self.store.get_file(file_id.removeprefix("files/"), tenant)

    async def list_page(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[File]:
        """Newest first; ``after`` is the (create_time, id) of the previous page's last file."""
        return await self.store.list_files(tenant, limit=limit, after=after)

    async def open_download(self, tenant: str | None, file_id: str) -> tuple[File, Iterator[bytes]]:
        """A GENERATED file and a (blocking) iterator over its bytes, in 1 MiB chunks.

        Raises ``NotFound``, or ``FailedPrecondition`` for uploaded files, which Gemini
        does not serve back either.
        """
        file = await self.get(tenant, file_id)
        if file.source is not FileSource.GENERATED:
            raise FailedPrecondition(
                f"only generated files can be downloaded; {file.name} was uploaded"
            )
        handle = await asyncio.to_thread(self.blobs.open_read, file.blob_key)

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(COPY_CHUNK):
                    yield chunk

        return file, chunks()

    async def read_part(self, tenant: str, file_id: str, max_bytes: int) -> tuple[str, bytes]:
        """The ``(mimeType, bytes)`` of a tenant's file, for a ``fileData`` part.

        Raises ``NotFound`` for a missing, expired or another tenant's file (its blob
        gone included) and ``InvalidArgument`` past ``max_bytes``.
        """
        file = await self.get(tenant, file_id)
        if file.expire_time is not None and file.expire_time <= time.time():
            raise NotFound(f"file {file.name} has expired")
        if file.size_bytes > max_bytes:
            raise InvalidArgument(
                f"file {file.name} has {file.size_bytes} bytes, over the {max_bytes}-byte "
                "limit for a fileData part"
            )
        try:
            data = await asyncio.to_thread(self.blobs.read_range, file.blob_key, 0, file.size_bytes)
        except BlobNotFound:
            raise NotFound(f"file {file.name} has no bytes any more") from None
        return file.mime_type, data

    async def copy_to(self, file: File, target: Path) -> None:
        """Write a file's bytes to a local path atomically (temporary name, then rename)."""

        def copy() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.partial")
            with self.blobs.open_read(file.blob_key) as src, tmp.open("wb") as dst:
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
            tmp.replace(target)

        await asyncio.to_thread(copy)

    async def delete(self, tenant: str | None, file_id: str) -> None:
        """Delete a file and its bytes; works on a full disk. Raises ``NotFound``, or
        ``FailedPrecondition`` while the file is the input of an unfinished batch."""
        key = file_id.removeprefix("files/")
        file = await self.freeing_space(lambda: self.store.delete_file(key, tenant))
        await asyncio.to_thread(self.blobs.delete, file.blob_key)
        await self.keep_reserve()

    async def sweep_expired(self, now: float | None = None) -> int:
        """Delete files past their expiry (rows, then blobs); returns how many."""
        now = time.time() if now is None else now
        removed = 0
        while expired := await self.freeing_space(lambda: self.store.take_expired_files(now)):
            for file in expired:
                await asyncio.to_thread(self.blobs.delete, file.blob_key)
            removed += len(expired)
        await self.keep_reserve()
        return removed

    async def freeing_space(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``, a store call that frees space; if the disk is too full even for
        that, give up the space reserve and run it once more."""
        try:
            return await op()
        except StorageFull:
            if self.reserve is None or not await asyncio.to_thread(self.reserve.release):
                raise
            log.warning("the disk is full: gave up the space reserve so that a delete can run")
        return await op()

    async def keep_reserve(self) -> None:
        """Make the space reserve again if it was given up and there is room for it."""
        if self.reserve is not None and not self.reserve.held:
            await asyncio.to_thread(self.reserve.keep)
