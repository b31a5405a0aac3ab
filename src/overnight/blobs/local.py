"""Blobs as files in a local directory.

Atomicity: a writer writes ``<key>.tmp-<random>`` beside its target, fsyncs it and
renames it over the key, so a crash leaves either the old blob or the new one, never
a torn file. A crashed writer can leave its temporary behind; it is never read, and
shard temporaries go when their batch's ``batches/<id>/`` prefix is deleted.

A full disk (ENOSPC) raises ``StorageFull`` and removes the temporary, so a failed
write never leaves a partial file taking the space that is short.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

from overnight.blobs.space import is_no_space, storage_full
from overnight.errors import BlobError, BlobNotFound

TMP_MARK = ".tmp-"


class LocalBlobWriter:
    def __init__(self, target: Path, root: Path | None = None) -> None:
        self._target = target
        self._root = root or target.parent
        self._tmp = target.with_name(f"{target.name}{TMP_MARK}{secrets.token_hex(6)}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise self._failed(exc) from None
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise self._failed(exc) from None
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def commit(self) -> tuple[int, str]:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._target)
        except OSError as exc:
            self.abort()
            raise self._failed(exc) from None
        return self._size, self._hash.hexdigest()

    def abort(self) -> None:
        if not self._file.closed:
            with contextlib.suppress(OSError):  # an unflushable buffered tail: dropped anyway
                self._file.close()
        self._tmp.unlink(missing_ok=True)

    def _failed(self, exc: OSError) -> Exception:
        # Only a full disk is translated here; other I/O errors keep their type.
        return storage_full(self._root) if is_no_space(exc) else exc

    def __enter__(self) -> LocalBlobWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None or not self._file.closed:
            self.abort()


class LocalBlobStore:
    """A directory of blobs. Keys are relative POSIX paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BlobError(f"cannot create blob directory {root}: {exc.strerror}") from None

    def path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise BlobError(f"invalid blob key {key!r}")
        return self.root / key

    def open_write(self, key: str) -> LocalBlobWriter:
        return LocalBlobWriter(self.path(key), self.root)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {key} is missing from {self.root}") from None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self.open_read(key) as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise BlobError(f"blob {key} is shorter than expected (wanted bytes {start}-{end})")
        return data

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {key} is missing from {self.root}") from None

    def delete(self, key: str) -> None:
        target = self.path(key.rstrip("/"))
        if key.endswith("/"):
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
