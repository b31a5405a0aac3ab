"""Disk space: turning ENOSPC into ``StorageFull``, and the reserve that lets deletes run.

A full disk must not lock its owner out: deleting files and batches is how space comes
back. Yet SQLite, even to delete a row, writes to its WAL, and on a disk full to the last
byte that fails too. So Overnight keeps a small reserve file in the data dir; a delete
that meets a full disk releases it, runs again in the space it frees, and the reserve is
made again as soon as there is room for it. No restart is needed at any point.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from overnight.errors import StorageFull

RESERVE_NAME = "space.reserve"
RESERVE_BYTES = 2 * 1024 * 1024
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system saying the disk (or quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def storage_full(where: Path | str) -> StorageFull:
    """The error for a full disk under ``where``, saying what to do about it."""
    return StorageFull(
        f"the disk holding {where} is full (no space left on device): delete files or "
        "batches you no longer need, or free space on that disk, then retry; Overnight "
        "uses the space as soon as it is back, without a restart"
    )


class SpaceReserve:
    """A file of ``size`` bytes at ``path``, given up so that deletes can run on a full disk.

    The methods block (file I/O); call them in a thread.
    """

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def keep(self) -> bool:
        """Make the reserve if it is missing; True if it is held afterwards.

        On a disk without room for it, nothing is left behind and False is returned:
        the next delete (or sweep) tries again.
        """
        if self.held:
            return True
        tmp = self.path.with_name(f".{self.path.name}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _allocate(fd, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True

    def release(self) -> bool:
        """Free the reserve's space; True if there was a reserve to free."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def _allocate(fd: int, size: int) -> None:
    """Really take ``size`` bytes on disk (a sparse file would reserve nothing)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if is_no_space(exc):
                raise
    # the filesystem cannot preallocate: write the bytes out
    block = b"\0" * (1 << 16)
    written = 0
    while written < size:
        written += os.write(fd, block[: size - written])
