"""Files under pressure: generated names, protected inputs, racing uploads, conflicting
chunk replays, per-tenant names, a BOM, and a disk that fills up.

Everything runs on real stores (SQLite and PostgreSQL), the real ASGI app and, for the
full disk, a real 20 MB tmpfs.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import run
from tests.helpers import drive, mounted_tmpfs, read_jsonl
from tests.integration.test_api_files import (
    Client,
    api,
    b64_sha256,
    chunk,
    error,
    scenario,
    start,
    upload,
)

from overnight.app import Runtime
from overnight.domain.batches import BatchKind, BatchState, ShardSpec
from overnight.engine.admission import cut_shards
from overnight.engine.finalize import output_file_id
from overnight.errors import AlreadyExists

BOM = b"\xef\xbb\xbf"


def line(key: str, text: str = "hi") -> bytes:
    body = {"key": key, "request": {"contents": [{"parts": [{"text": text}]}]}}
    return json.dumps(body).encode() + b"\n"


LINE = line("a")


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


# ------------------------------------------------------------ generated names


def test_a_user_cannot_take_a_generated_name(tmp_path: Path, database_url: str) -> None:
    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await upload(client, LINE)
        batch = await runtime.services.batches.create_from_file(
            "default", model="echo", kind=BatchKind.GENERATE, file_id=file["name"]
        )
        generated = f"files/{output_file_id(batch.id)}"
        taken = await start(client, len(LINE), file={"name": generated})
        message = error(taken, 400, "INVALID_ARGUMENT")
        assert "reserved" in message and "batch" in message
        # a name merely starting with "batch-" is the user's to take
        mine = await upload(client, LINE, file={"name": "files/batch-requests"})
        assert mine["name"] == "files/batch-requests"
        done = await drive(runtime, batch.id)
        assert done.state is BatchState.SUCCEEDED
        assert f"files/{done.output_file_id}" == generated
        got = await client.get(f"/v1/{generated}")
        assert got.json()["source"] == "GENERATED"


# ----------------------------------------------------------- protected inputs


def test_deleting_the_input_of_a_running_batch_is_refused(
    tmp_path: Path, database_url: str
) -> None:
    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await upload(client, LINE)
        batch = await runtime.services.batches.create_from_file(
            "default", model="echo", kind=BatchKind.GENERATE, file_id=file["name"]
        )
        now = time.time()
        claimed = await runtime.store.queue.claim_batch_work(
            "w", now=now, lease_until=now + 60, batch_id=batch.id
        )
        assert claimed is not None
        assert await runtime.store.queue.admit(
            batch.id, "w", [ShardSpec(0, 0, len(LINE), 1, 1)], now=now
        )
        refused = await client.delete(f"/v1/{file['name']}")
        message = error(refused, 400, "FAILED_PRECONDITION")
        assert file["name"] in message and batch.name in message and "RUNNING" in message
        assert (await client.get(f"/v1/{file['name']}")).status_code == 200
        # once the batch is finished with it, the file can go
        assert (await client.post(f"/v1/{batch.name}:cancel")).status_code == 200
        assert (await drive(runtime, batch.id)).finalized
        assert (await client.delete(f"/v1/{file['name']}")).status_code == 200


# ------------------------------------------------------------- racing uploads


def test_concurrent_uploads_of_one_name_never_corrupt_the_winner(
    tmp_path: Path, database_url: str
) -> None:
    rounds = 60 if database_url.startswith("postgres") else 10

    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        async def attempt(name: str, data: bytes) -> tuple[str, Any]:
            started = await start(client, len(data), file={"name": name})
            if started.status_code != 200:
                return "start", error(started, 409, "ALREADY_EXISTS")
            url = started.headers["x-goog-upload-url"]
            half = len(data) // 2
            first = await chunk(client, url, data[:half], 0)
            assert first.status_code == 200, first.text
            final = await chunk(client, url, data[half:], half, final=True)
            if final.status_code != 200:
                return "finalize", error(final, 409, "ALREADY_EXISTS")
            return "won", final.json()["file"]

        for i in range(rounds):
            name = f"files/race-{i}"
            payloads = [os.urandom(64 * 1024 + n) for n in range(4)]
            results = await asyncio.gather(*(attempt(name, data) for data in payloads))
            winners = [
                (r, data) for r, data in zip(results, payloads, strict=True) if r[0] == "won"
            ]
            assert len(winners) == 1, results
            (_, file), data = winners[0]
            assert file["sha256Hash"] == b64_sha256(data)
            for outcome, message in results:
                if outcome != "won":
                    assert f"{name} already exists" in message
            stored = await runtime.services.files.get("default", name)
            assert stored.sha256 == hashlib.sha256(data).hexdigest()  # the store keeps hex
            assert runtime.blobs.path(stored.blob_key).read_bytes() == data
        # every loser's bytes are gone; only the winners' blobs remain
        blobs = [p for p in runtime.blobs.path("files").rglob("*") if p.is_file()]
        assert len(blobs) == rounds
        assert not [p for p in runtime.blobs.path("uploads").iterdir()]


def test_a_finalize_that_loses_the_name_leaves_the_winners_bytes(
    tmp_path: Path, database_url: str
) -> None:
    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        uploads = runtime.services.uploads
        token = await uploads.start("default", name="files/report", size_bytes=5)
        # the race a retried start can lose on PostgreSQL: another upload of the same
        # name finishes while this session is open
        winner = await runtime.services.files.create_from_chunks("default", [b"first"])
        moved = replace(winner, id="report")
        await runtime.store.files.delete_file(winner.id, "default")
        await runtime.store.files.create_file(moved)
        with pytest.raises(AlreadyExists, match="files/report already exists"):
            await uploads.append(token, 0, body(b"later"), finalize=True)
        assert runtime.blobs.path(moved.blob_key).read_bytes() == b"first"
        stored = await runtime.services.files.get("default", "files/report")
        assert stored.sha256 == hashlib.sha256(b"first").hexdigest()
        assert not list(runtime.blobs.path("uploads").iterdir())


# ------------------------------------------------------------- chunk replays


def test_conflicting_chunk_replay_is_refused_and_identical_replay_accepted(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * 16

    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        url = (await start(client, len(data))).headers["x-goog-upload-url"]
        assert (await chunk(client, url, data[:1000], 0)).status_code == 200
        same = await chunk(client, url, data[:1000], 0)
        assert same.headers["x-goog-upload-size-received"] == "1000"
        changed = data[:500] + b"X" + data[501:1000]
        message = error(await chunk(client, url, changed, 0), 400, "INVALID_ARGUMENT")
        assert "Offset 0" in message and "byte 500" in message
        # an overlapping resend whose held part differs is refused too, new tail and all
        tail = data[900:950].replace(data[920:921], b"?") + data[1000:1200]
        message = error(await chunk(client, url, tail, 900), 400, "INVALID_ARGUMENT")
        assert "byte 920" in message
        query = await client.post(url, headers={"X-Goog-Upload-Command": "query"})
        assert query.headers["x-goog-upload-size-received"] == "1000"
        overlap = await chunk(client, url, data[900:2000], 900)
        assert overlap.headers["x-goog-upload-size-received"] == "2000"
        final = await chunk(client, url, data[2000:], 2000, final=True)
        assert final.json()["file"]["sha256Hash"] == b64_sha256(data)


# --------------------------------------------------------- per-tenant names


def test_file_names_are_per_tenant(tmp_path: Path, database_url: str) -> None:
    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        alice = {"x-goog-api-key": await runtime.services.keys.create("alice")}
        bob = {"x-goog-api-key": await runtime.services.keys.create("bob")}
        mine = await upload(client, LINE, file={"name": "files/report"}, headers=alice)
        other = line("b", "bob's")
        theirs = await upload(client, other, file={"name": "files/report"}, headers=bob)
        assert mine["name"] == theirs["name"] == "files/report"
        assert mine["sha256Hash"] != theirs["sha256Hash"]
        got = await client.get("/v1/files/report", headers=alice)
        assert got.json()["sha256Hash"] == mine["sha256Hash"]
        got = await client.get("/v1/files/report", headers=bob)
        assert got.json()["sha256Hash"] == theirs["sha256Hash"]
        # a taken name answers 409 only to its owner
        again = await start(client, 3, file={"name": "files/report"}, headers=bob)
        assert "files/report already exists" in error(again, 409, "ALREADY_EXISTS")
        # a batch over bob's files/report reads bob's bytes
        batch = await runtime.services.batches.create_from_file(
            "bob", model="echo", kind=BatchKind.GENERATE, file_id="files/report"
        )
        input_key, _ = await runtime.store.batches.batch_input(batch.id)
        assert runtime.blobs.path(input_key).read_bytes() == other
        done = await drive(runtime, batch.id)
        assert done.output_file_id is not None
        output = await runtime.services.files.get("bob", done.output_file_id)
        assert [ln["key"] for ln in read_jsonl(runtime.blobs.path(output.blob_key))] == ["b"]
        # deleting bob's keeps alice's
        await runtime.services.batches.delete("bob", batch.name)
        assert (await client.delete("/v1/files/report", headers=bob)).status_code == 200
        got = await client.get("/v1/files/report", headers=alice)
        assert got.json()["sha256Hash"] == mine["sha256Hash"]
        stored = await runtime.services.files.get("alice", "files/report")
        assert runtime.blobs.path(stored.blob_key).read_bytes() == LINE


# ------------------------------------------------------------------------ BOM


def test_a_bom_is_skipped_at_admission() -> None:
    data = BOM + LINE + line("b")
    admission = cut_shards(
        io.BytesIO(data), BatchKind.GENERATE, shard_size=1, shard_max_bytes=1 << 20
    )
    assert admission.has_valid_line and admission.first_error is None
    assert admission.request_count == 2
    assert [(s.byte_start, s.byte_end) for s in admission.shards] == [
        (3, 3 + len(LINE)),
        (3 + len(LINE), len(data)),
    ]


def test_a_bom_prefixed_jsonl_keeps_its_first_line(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await upload(client, BOM + LINE + line("b"))
        batch = await runtime.services.batches.create_from_file(
            "default", model="echo", kind=BatchKind.GENERATE, file_id=file["name"]
        )
        done = await drive(runtime, batch.id)
        assert done.state is BatchState.SUCCEEDED
        assert (done.succeeded_count, done.failed_count) == (2, 0)
        assert done.output_file_id is not None
        output = await runtime.services.files.get("default", done.output_file_id)
        lines = read_jsonl(runtime.blobs.path(output.blob_key))
        assert [ln["key"] for ln in lines] == ["a", "b"]
        assert all("response" in ln for ln in lines)


# ------------------------------------------------------------------ full disk


def test_a_full_disk_answers_507_deletes_still_work_and_uploads_recover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = tmp_path / "disk"
    with mounted_tmpfs(disk, "20m"), caplog.at_level(logging.WARNING, "overnight.files"):
        run(_full_disk(disk))
    # SQLite could not even delete on the full disk: the space reserve made room
    assert "gave up the space reserve" in caplog.text


async def _full_disk(disk: Path) -> None:
    async with api(disk) as (runtime, client):
        data_dir = runtime.settings.data_dir
        request = json.loads(LINE)["request"]
        inline = {"batch": {"inputConfig": {"requests": {"requests": [{"request": request}]}}}}
        created = await client.post("/v1/models/echo:batchGenerateContent", json=inline)
        assert created.status_code == 200, created.text
        batch_name = created.json()["name"]

        # fill the disk with uploads until it answers 507
        kept: list[str] = []
        full: httpx.Response | None = None
        for _ in range(12):
            data = os.urandom(3 * 1024 * 1024)
            started = await start(client, len(data))
            if started.status_code != 200:
                full = started
                break
            done = await chunk(client, started.headers["x-goog-upload-url"], data, 0, final=True)
            if done.status_code != 200:
                full = done
                break
            kept.append(done.json()["file"]["name"])
        assert full is not None, "the 20 MB disk never filled"
        message = error(full, 507, "RESOURCE_EXHAUSTED")
        assert str(data_dir) in message and "delete" in message.lower()
        assert len(kept) >= 2
        assert not _leftovers(data_dir)

        # fill what is left to the last byte, outside Overnight
        filler = data_dir / "filler"
        with filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        created = await client.post("/v1/models/echo:batchGenerateContent", json=inline)
        message = error(created, 507, "RESOURCE_EXHAUSTED")
        assert str(data_dir) in message
        assert not _leftovers(data_dir)

        # deletes go through on the full disk
        for name in kept[:2]:
            deleted = await client.delete(f"/v1/{name}")
            assert deleted.status_code == 200, deleted.text
            assert (await client.get(f"/v1/{name}")).status_code == 404
        deleted = await client.delete(f"/v1/{batch_name}")
        assert deleted.status_code == 200, deleted.text
        reserve = runtime.services.files.reserve
        assert reserve is not None and reserve.held  # made again in the space freed

        # space is back: uploads work again, without a restart
        data = os.urandom(1024 * 1024)
        started = await start(client, len(data))
        assert started.status_code == 200, started.text
        done = await chunk(client, started.headers["x-goog-upload-url"], data, 0, final=True)
        assert done.status_code == 200, done.text
        assert done.json()["file"]["sha256Hash"] == b64_sha256(data)


def _leftovers(data_dir: Path) -> list[Path]:
    """Partial blobs: writer temporaries, or staged bytes no session accounts for."""
    blobs = data_dir / "blobs"
    temporaries = [p for p in blobs.rglob("*") if ".tmp-" in p.name]
    staged = [p for p in (blobs / "uploads").glob("*") if p.stat().st_size]
    return temporaries + staged
