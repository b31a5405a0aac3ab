"""The blob-store seam.

Blobs are immutable byte strings under a key (``inputs/ab12.jsonl``). Writes are
atomic: a writer fills a temporary object and only ``commit`` makes it visible
under its key, replacing any previous one. Reads stream, or read a bounded byte range.

A *staged* blob (``BlobStore.staged``) is the other way to write: bytes appended over
many requests (a resumable upload's chunks), then published under their final key in
one step. Key names are laid out in ``blobs.keys``.

The methods are blocking: callers run them in a thread (``asyncio.to_thread``), which
keeps file I/O off the event loop without twin sync/async APIs.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol


class BlobWriter(Protocol):
    """A blob being written. ``commit`` publishes it atomically; ``abort`` drops it."""

    def write(self, data: bytes) -> int: ...

    def commit(self) -> tuple[int, str]:
        """Publish; returns (size in bytes, sha256 hex)."""
        ...

    def abort(self) -> None: ...


class StagedBlob(Protocol):
    """Bytes assembled across requests under a staging key, then published.

    It outlives the process that began it: any replica can append the next chunk, read
    back what is held, or publish it. It lives under its own key, so
    ``BlobStore.delete(key)`` drops it. A full disk raises ``StorageFull`` and leaves
    the staged bytes as they were before the call.
    """

    key: str

    def create(self) -> None:
        """Stage an empty blob (replacing any bytes staged under this key)."""
        ...

    def append(self, offset: int, data: bytes) -> None:
        """Make the staged bytes their first ``offset`` bytes followed by ``data``.

        Whatever lay at or past ``offset`` (the torn tail of a failed append) is
        dropped. Raises ``BlobNotFound`` if nothing is staged.
        """
        ...

    def truncate(self, size: int) -> None:
        """Cut the staged bytes back to their first ``size``. Raises ``BlobNotFound``."""
        ...

    def read_range(self, start: int, end: int) -> bytes:
        """Staged bytes ``[start, end)`` (a resent chunk is compared with them)."""
        ...

    def sha256(self) -> str:
        """The SHA-256 (hex) of all the staged bytes, read through."""
        ...

    def publish(self, key: str) -> None:
        """Move the staged bytes, durably and atomically, to the blob ``key``.

        ``key`` must be free: a blob already there is never replaced (``BlobError``).
        Nothing is staged afterwards. Raises ``BlobNotFound`` if nothing was staged.
        """
        ...

    def reclaim(self, key: str) -> None:
        """Stage again the bytes that ``publish`` moved to ``key`` when what followed
        the publish failed. Does nothing while bytes are staged, or ``key`` is empty."""
        ...


class BlobStore(Protocol):
    def open_write(self, key: str) -> BlobWriter: ...

    def staged(self, key: str) -> StagedBlob:
        """The staged blob under ``key``; no I/O until one of its methods is called."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """A binary file object positioned at 0. Raises ``BlobError`` if missing."""
        ...

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``. The caller bounds the size."""
        ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None:
        """Remove a blob; missing is fine. A key ending in '/' removes a whole prefix."""
        ...
