"""LocalBlobStore: atomic writes, ranged reads, prefix deletes, safe keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from overnight.blobs.local import TMP_MARK, LocalBlobStore
from overnight.errors import BlobError


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def put(store: LocalBlobStore, key: str, data: bytes) -> tuple[int, str]:
    writer = store.open_write(key)
    writer.write(data)
    return writer.commit()


def read(store: LocalBlobStore, key: str) -> bytes:
    with store.open_read(key) as f:
        return f.read()


def test_key_is_invisible_until_commit(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    writer = store.open_write("inputs/a.jsonl")
    writer.write(b"hello ")
    writer.write(b"world")
    assert not store.path("inputs/a.jsonl").exists()
    with pytest.raises(BlobError):
        store.open_read("inputs/a.jsonl")
    size, digest = writer.commit()
    assert (size, digest) == (11, hashlib.sha256(b"hello world").hexdigest())
    assert read(store, "inputs/a.jsonl") == b"hello world"
    assert store.size("inputs/a.jsonl") == 11
    assert files_under(store.root) == [store.path("inputs/a.jsonl")]


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    writer = store.open_write("out/x.jsonl")
    writer.write(b"partial")
    assert any(TMP_MARK in p.name for p in files_under(store.root))
    writer.abort()
    assert files_under(store.root) == []
    assert not store.path("out/x.jsonl").exists()


def test_abort_keeps_the_previous_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    put(store, "k", b"old")
    writer = store.open_write("k")
    writer.write(b"new")
    writer.abort()
    assert read(store, "k") == b"old"
    assert files_under(store.root) == [store.path("k")]


def test_commit_replaces_old_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    put(store, "k", b"old contents, longer")
    writer = store.open_write("k")
    writer.write(b"new")
    assert read(store, "k") == b"old contents, longer"  # old one visible until commit
    assert writer.commit() == (3, hashlib.sha256(b"new").hexdigest())
    assert read(store, "k") == b"new"
    assert files_under(store.root) == [store.path("k")]


def test_context_manager_aborts_on_error(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(RuntimeError), store.open_write("k") as writer:
        writer.write(b"data")
        raise RuntimeError("boom")
    assert files_under(store.root) == []


def test_context_manager_without_commit_aborts(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with store.open_write("k") as writer:
        writer.write(b"data")
    assert files_under(store.root) == []


def test_context_manager_after_commit_keeps_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with store.open_write("k") as writer:
        writer.write(b"data")
        writer.commit()
    assert read(store, "k") == b"data"


def test_read_range(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    put(store, "r", b"0123456789")
    assert store.read_range("r", 0, 3) == b"012"
    assert store.read_range("r", 4, 10) == b"456789"
    assert store.read_range("r", 5, 5) == b""


def test_read_range_past_the_end_fails(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    put(store, "r", b"0123")
    with pytest.raises(BlobError, match="shorter than expected"):
        store.read_range("r", 2, 10)


def test_delete_one_blob_and_missing_is_fine(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    put(store, "a/1", b"x")
    put(store, "a/2", b"y")
    store.delete("a/1")
    store.delete("a/1")
    store.delete("never/was")
    assert files_under(store.root) == [store.path("a/2")]


def test_delete_prefix(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    put(store, "dir/a", b"1")
    put(store, "dir/sub/b", b"2")
    put(store, "dirx/c", b"3")
    put(store, "keep", b"4")
    store.delete("dir/")
    assert files_under(store.root) == [store.path("dirx/c"), store.path("keep")]
    store.delete("dir/")  # missing prefix is fine too


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a/.."])
def test_invalid_keys_rejected(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobError, match="invalid blob key"):
        store.open_write(key)
    with pytest.raises(BlobError, match="invalid blob key"):
        store.open_read(key)
    with pytest.raises(BlobError, match="invalid blob key"):
        store.delete(key)
    assert not (tmp_path / "x").exists()


def test_open_read_missing_names_the_key(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobError, match=r"outputs/missing\.jsonl"):
        store.open_read("outputs/missing.jsonl")
    with pytest.raises(BlobError, match=r"outputs/missing\.jsonl"):
        store.size("outputs/missing.jsonl")


def test_unusable_root_is_a_blob_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BlobError, match="cannot create blob directory"):
        LocalBlobStore(blocker / "blobs")
