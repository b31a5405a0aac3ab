"""Blobs as files in a local directory.

Atomicity: a writer writes ``<key>.tmp-<random>`` beside its target, fsyncs it and
renames it over the key, so a crash leaves either the old blob or the new one, never
a torn file. A crashed writer can leave its temporary behind; it is never read, and
shard temporaries go when their batch's ``batches/<id>/`` prefix is deleted.

A staged blob (``LocalStagedBlob``) is a plain file under its staging key, appended
in place; ``publish`` fsyncs it and links it under its final key (never over another
blob), then unlinks the staging name.

A full disk (ENOSPC) raises ``StorageFull`` and removes the temporary, so a failed
write never leaves a partial file taking the space that is short; a failed append
cuts the staged file back to where it began.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

from overnight.blobs.space import is_no_space, storage_full
from overnight.errors import BlobError, BlobNotFound

TMP_MARK = ".tmp-"
READ_CHUNK = 1 << 20
# link(2) errors of filesystems without hard links
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})


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


class LocalStagedBlob:
    """A staged blob: the file at ``path`` (see ``blobs.base.StagedBlob``)."""

    def __init__(self, store: LocalBlobStore, key: str) -> None:
        self.key = key
        self._store = store
        self._path = store.path(key)

    def create(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._path, "wb"):
                pass
        except OSError as exc:
            self._path.unlink(missing_ok=True)
            raise self._store.failed(exc) from None

    def append(self, offset: int, data: bytes) -> None:
        try:
            with open(self._path, "r+b") as f:
                f.truncate(offset)
                f.seek(offset)
                f.write(data)
        except FileNotFoundError:
            raise self._missing() from None
        except OSError as exc:
            with contextlib.suppress(OSError):  # the next append truncates again
                os.truncate(self._path, offset)
            raise self._store.failed(exc) from None

    def truncate(self, size: int) -> None:
        try:
            os.truncate(self._path, size)
        except FileNotFoundError:
            raise self._missing() from None
        except OSError as exc:
            raise self._store.failed(exc) from None

    def read_range(self, start: int, end: int) -> bytes:
        return self._store.read_range(self.key, start, end)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self._store.open_read(self.key) as f:
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def publish(self, key: str) -> None:
        target = self._store.path(key)
        try:
            with open(self._path, "rb+") as f:
                os.fsync(f.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            _move_new(self._path, target)
        except FileNotFoundError:
            raise self._missing() from None
        except OSError as exc:
            raise self._store.failed(exc) from None

    def reclaim(self, key: str) -> None:
        published = self._store.path(key)
        if not self._path.exists() and published.exists():
            os.replace(published, self._path)

    def _missing(self) -> BlobNotFound:
        return BlobNotFound(f"no upload bytes are staged under {self.key} in {self._store.root}")


def _move_new(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, never replacing a file already there.

    A hard link then an unlink: the link fails rather than replace. A ``target`` that
    already is ``source`` (a move interrupted between the two) is finished. Where the
    filesystem has no hard links, ``target`` is checked to be free, then renamed over.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        if not os.path.samefile(source, target):
            raise BlobError(f"cannot publish to {target}: a blob is already there") from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if target.exists():
            raise BlobError(f"cannot publish to {target}: a blob is already there") from None
        os.replace(source, target)
        return
    source.unlink()


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

    def staged(self, key: str) -> LocalStagedBlob:
        return LocalStagedBlob(self, key)

    def failed(self, exc: OSError) -> Exception:
        """``StorageFull`` for a full disk; any other I/O error as it is."""
        return storage_full(self.root) if is_no_space(exc) else exc

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
