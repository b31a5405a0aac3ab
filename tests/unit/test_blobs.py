"""LocalBlobStore: atomic writes, ranged reads, prefix deletes, safe keys, staged blobs."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from tests.helpers import mounted_tmpfs

from overnight.blobs.local import TMP_MARK, LocalBlobStore
from overnight.blobs.space import SpaceReserve
from overnight.errors import BlobError, BlobNotFound, StorageFull


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


# ---------------------------------------------------------------- staged blobs


def test_a_staged_blob_is_appended_then_published(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    staged = store.staged("uploads/s.part")
    staged.create()
    staged.append(0, b"hello ")
    staged.append(6, b"world")
    assert staged.read_range(3, 8) == b"lo wo"
    assert staged.sha256() == hashlib.sha256(b"hello world").hexdigest()
    with pytest.raises(BlobNotFound):
        store.open_read("files/t/a")  # nothing under the final key until publish
    staged.publish("files/t/a")
    assert read(store, "files/t/a") == b"hello world"
    assert files_under(store.root) == [store.path("files/t/a")]
    with pytest.raises(BlobNotFound, match=r"uploads/s\.part"):
        staged.append(11, b"!")


def test_an_append_drops_a_torn_tail(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    staged = store.staged("uploads/s.part")
    staged.create()
    staged.append(0, b"abcdef")
    staged.append(3, b"XY")  # a chunk resumed at offset 3: "def" was never acknowledged
    assert read(store, "uploads/s.part") == b"abcXY"
    staged.truncate(2)
    assert read(store, "uploads/s.part") == b"ab"
    staged.create()  # starts over, empty
    assert store.size("uploads/s.part") == 0


def test_a_missing_staged_blob_is_blob_not_found(tmp_path: Path) -> None:
    staged = LocalBlobStore(tmp_path / "blobs").staged("uploads/none.part")
    for call in (
        lambda: staged.append(0, b"x"),
        lambda: staged.truncate(0),
        lambda: staged.read_range(0, 1),
        staged.sha256,
        lambda: staged.publish("files/t/x"),
    ):
        with pytest.raises(BlobNotFound):
            call()


def test_publish_never_replaces_a_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    put(store, "files/t/a", b"theirs")
    staged = store.staged("uploads/s.part")
    staged.create()
    staged.append(0, b"mine")
    with pytest.raises(BlobError, match="already there"):
        staged.publish("files/t/a")
    assert read(store, "files/t/a") == b"theirs"
    assert read(store, "uploads/s.part") == b"mine"  # still staged: nothing was lost


def test_publish_without_hard_links_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_: object) -> None:
        raise OSError(errno.EPERM, "hard links are not supported")

    monkeypatch.setattr(os, "link", no_links)
    store = LocalBlobStore(tmp_path / "blobs")
    put(store, "files/t/taken", b"theirs")
    staged = store.staged("uploads/s.part")
    staged.create()
    staged.append(0, b"mine")
    with pytest.raises(BlobError, match="already there"):
        staged.publish("files/t/taken")
    staged.publish("files/t/a")
    assert read(store, "files/t/a") == b"mine"
    assert read(store, "files/t/taken") == b"theirs"
    assert not store.path("uploads/s.part").exists()


def test_an_interrupted_publish_finishes_when_repeated(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    staged = store.staged("uploads/s.part")
    staged.create()
    staged.append(0, b"bytes")
    store.path("files/t").mkdir(parents=True)
    os.link(store.path("uploads/s.part"), store.path("files/t/a"))  # crashed before unlink
    staged.publish("files/t/a")
    assert read(store, "files/t/a") == b"bytes"
    assert files_under(store.root) == [store.path("files/t/a")]


def test_reclaim_stages_published_bytes_again(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    staged = store.staged("uploads/s.part")
    staged.reclaim("files/t/a")  # nothing published, nothing staged: nothing to do
    assert files_under(store.root) == []
    staged.create()
    staged.append(0, b"bytes")
    staged.publish("files/t/a")
    staged.reclaim("files/t/a")
    assert files_under(store.root) == [store.path("uploads/s.part")]
    staged.append(5, b" more")
    staged.reclaim("files/t/a")  # bytes are staged: left as they are
    assert read(store, "uploads/s.part") == b"bytes more"


# ----------------------------------------------------------------- full disk


def test_a_full_disk_is_storage_full_and_leaves_no_partial_blob(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        store = LocalBlobStore(disk / "blobs")
        writer = store.open_write("files/big")
        with pytest.raises(StorageFull) as full:
            for _ in range(64):
                writer.write(b"x" * 65536)
            writer.commit()
        assert str(disk / "blobs") in full.value.message
        assert "delete files or batches" in full.value.message
        assert full.value.http_code == 507 and full.value.status == "RESOURCE_EXHAUSTED"
        assert files_under(disk) == []
        put(store, "files/small", b"fits")  # the space is usable again at once
        assert read(store, "files/small") == b"fits"


def test_a_full_disk_cuts_a_staged_append_back(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        store = LocalBlobStore(disk / "blobs")
        staged = store.staged("uploads/s.part")
        staged.create()
        staged.append(0, b"kept")
        with pytest.raises(StorageFull) as full:
            staged.append(4, b"x" * (2 * 1024 * 1024))
        assert str(disk / "blobs") in full.value.message
        assert read(store, "uploads/s.part") == b"kept"  # the failed append's bytes are gone
        staged.append(4, b" more")  # the space is usable again at once
        staged.publish("files/t/a")
        assert read(store, "files/t/a") == b"kept more"


def test_a_first_append_on_a_full_disk_leaves_the_staged_blob_empty(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        store = LocalBlobStore(disk / "blobs")
        staged = store.staged("uploads/s.part")
        staged.create()
        fill(disk / "filler")
        with pytest.raises(StorageFull):
            staged.append(0, b"x" * 65536)
        assert store.size("uploads/s.part") == 0


def test_the_space_reserve_is_released_and_kept_again(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        reserve = SpaceReserve(disk / "space.reserve", size=256 * 1024)
        assert reserve.keep() and reserve.held
        assert (disk / "space.reserve").stat().st_blocks * 512 >= 256 * 1024  # not sparse
        filler = disk / "filler"
        fill(filler)
        assert reserve.release() and not reserve.held
        assert not reserve.release()
        fill(filler)  # someone else takes the space the reserve gave up
        assert not reserve.keep()  # no room: no reserve, and no partial one left behind
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
        filler.write_bytes(b"")
        assert reserve.keep() and reserve.held  # room again: the reserve is back


def fill(path: Path) -> None:
    """Append to ``path`` until the disk is full."""
    with path.open("ab") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
