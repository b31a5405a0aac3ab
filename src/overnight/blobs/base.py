"""The blob-store seam.

Blobs are immutable byte strings under a key (``inputs/ab12.jsonl``). Writes are
atomic: a writer fills a temporary object and only ``commit`` makes it visible
under its key, replacing any previous one. Reads stream, or read a bounded byte range.

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


class BlobStore(Protocol):
    def open_write(self, key: str) -> BlobWriter: ...

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
