"""The Files API and the resumable upload protocol over HTTP (ASGI), on real stores.

The wire details asserted here are those of docs spec §3: absolute upload URL,
``X-Goog-Upload-Status`` on every chunk reply, idempotent repeated offsets, and
Google-style errors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import run

from overnight.api.server import create_app
from overnight.app import Runtime, build_runtime
from overnight.config import load_settings
from overnight.domain.batches import BatchKind
from overnight.domain.files import File

Client = httpx.AsyncClient


def settings(tmp_path: Path, database_url: str | None = None, **server: Any) -> Any:
    return load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "database_url": database_url,
            "server": server,
            "models": {"echo": {"backend": "fake"}},
        },
    )


@asynccontextmanager
async def api(
    tmp_path: Path, database_url: str | None = None, **server: Any
) -> AsyncIterator[tuple[Runtime, Client]]:
    runtime = await build_runtime(settings(tmp_path, database_url, **server))
    transport = httpx.ASGITransport(app=create_app(runtime.services))
    try:
        async with Client(transport=transport, base_url="http://testserver") as client:
            yield runtime, client
    finally:
        await runtime.close()


def scenario(
    tmp_path: Path, database_url: str | None = None, **server: Any
) -> Callable[[Callable[[Runtime, Client], Awaitable[None]]], None]:
    """Run an async test body against a fresh app."""

    def runner(body: Callable[[Runtime, Client], Awaitable[None]]) -> None:
        async def main() -> None:
            async with api(tmp_path, database_url, **server) as (runtime, client):
                await body(runtime, client)

        run(main())

    return runner


async def start(
    client: Client,
    size: int | None,
    *,
    version: str = "v1",
    file: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    head = {
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Type": "jsonl",
        **(headers or {}),
    }
    if size is not None:
        head["X-Goog-Upload-Header-Content-Length"] = str(size)
    return await client.post(f"/upload/{version}/files", json={"file": file or {}}, headers=head)


async def chunk(
    client: Client, url: str, data: bytes, offset: int, *, final: bool = False
) -> httpx.Response:
    return await client.post(
        url,
        content=data,
        headers={
            "X-Goog-Upload-Command": "upload, finalize" if final else "upload",
            "X-Goog-Upload-Offset": str(offset),
            "Content-Type": "application/json",  # what the SDK sends; must be ignored
        },
    )


async def upload(client: Client, data: bytes, **kwargs: Any) -> dict[str, Any]:
    started = await start(client, len(data), **kwargs)
    assert started.status_code == 200, started.text
    done = await chunk(client, started.headers["x-goog-upload-url"], data, 0, final=True)
    assert done.status_code == 200, done.text
    file: dict[str, Any] = done.json()["file"]
    return file


def b64_sha256(data: bytes) -> str:
    """``sha256Hash`` as Gemini gives it: base64 of the raw digest (not hex)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def error(response: httpx.Response, code: int, status: str) -> str:
    assert response.status_code == code, response.text
    body = response.json()["error"]
    assert body["status"] == status
    message: str = body["message"]
    return message


async def generated_file(runtime: Runtime, data: bytes, tenant: str = "default") -> File:
    key = f"files/gen{len(data)}"
    writer = runtime.blobs.open_write(key)
    writer.write(data)
    size, digest = writer.commit()
    file = File.generated(
        id=f"gen{len(data)}",
        tenant=tenant,
        display_name="responses",
        size_bytes=size,
        sha256=digest,
        blob_key=key,
        now=time.time(),
        retention_s=None,
    )
    await runtime.store.files.create_file(file)
    return file


# ---------------------------------------------------------------- upload protocol


def test_resumable_upload_in_chunks(tmp_path: Path, database_url: str) -> None:
    data = b'{"key": "a", "request": {}}\n' * 1000
    cut = 8000

    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        started = await start(
            client, len(data), file={"display_name": "my-batch", "mime_type": "jsonl"}
        )
        assert started.status_code == 200
        url = started.headers["X-Goog-Upload-URL"]
        assert url.startswith("http://testserver/upload/v1/files?upload_id=")
        assert url.endswith("&upload_protocol=resumable")
        assert started.headers["X-Goog-Upload-Status"] == "active"
        assert started.headers["X-Goog-Upload-Chunk-Granularity"] == "8388608"

        first = await chunk(client, url, data[:cut], 0)
        assert first.status_code == 200
        assert first.headers["X-Goog-Upload-Status"] == "active"
        # the SDK resends a chunk it did not understand the reply to: a no-op
        again = await chunk(client, url, data[:cut], 0)
        assert again.headers["X-Goog-Upload-Status"] == "active"
        assert again.headers["X-Goog-Upload-Size-Received"] == str(cut)

        final = await chunk(client, url, data[cut:], cut, final=True)
        assert final.status_code == 200, final.text
        assert final.headers["X-Goog-Upload-Status"] == "final"
        file = final.json()["file"]
        file_id = file["name"].removeprefix("files/")
        assert file["displayName"] == "my-batch"
        assert file["mimeType"] == "jsonl"
        assert file["sizeBytes"] == str(len(data))
        assert file["sha256Hash"] == b64_sha256(data)
        assert file["uri"] == f"http://testserver/v1/files/{file_id}"
        assert file["state"] == "ACTIVE" and file["source"] == "UPLOADED"
        assert "downloadUri" not in file
        assert file["createTime"].endswith("Z") and file["expirationTime"].endswith("Z")
        stored = await runtime.services.files.get("default", file_id)
        assert runtime.blobs.path(stored.blob_key).read_bytes() == data
        assert stored.sha256 == hashlib.sha256(data).hexdigest()  # the store keeps hex
        assert not list(runtime.blobs.path("uploads").iterdir())  # staging moved away

        # single use: the session is gone after finalize
        reused = await chunk(client, url, b"x", len(data), final=True)
        error(reused, 404, "NOT_FOUND")
        got = await client.get(f"/v1/files/{file_id}")
        assert got.json() == file


def test_retried_final_chunk_and_partial_overlap(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40

    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        url = (await start(client, len(data))).headers["x-goog-upload-url"]
        await chunk(client, url, data[:1000], 0)
        # a resend that overlaps what we hold: only the new tail is appended
        overlap = await chunk(client, url, data[500:3000], 500)
        assert overlap.headers["x-goog-upload-size-received"] == "3000"
        final = await chunk(client, url, data[3000:], 3000, final=True)
        file = final.json()["file"]
        assert file["sha256Hash"] == b64_sha256(data)


def test_camel_case_body_custom_name_and_v1beta(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        started = await start(
            client,
            None,
            version="v1beta",
            file={"name": "files/my-custom-1", "displayName": "camel", "sizeBytes": 3},
            headers={"X-Goog-Upload-Header-Content-Type": "application/x-ndjson"},
        )
        url = started.headers["x-goog-upload-url"]
        assert url.startswith("http://testserver/upload/v1beta/files?upload_id=")
        file = (await chunk(client, url, b"abc", 0, final=True)).json()["file"]
        assert file["name"] == "files/my-custom-1"
        assert file["displayName"] == "camel"
        assert file["mimeType"] == "application/x-ndjson"
        assert file["uri"] == "http://testserver/v1beta/files/my-custom-1"

        taken = await start(client, 3, file={"name": "files/my-custom-1"})
        error(taken, 409, "ALREADY_EXISTS")
        bad = await start(client, 3, file={"name": "files/Not_OK"})
        assert "lowercase" in error(bad, 400, "INVALID_ARGUMENT")


def test_unknown_fields_in_the_start_body_are_refused(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        typo = await start(client, 3, file={"dispaly_name": "x", "mime_type": "jsonl"})
        assert error(typo, 400, "INVALID_ARGUMENT") == (
            "Invalid JSON payload received. Unknown name \"dispaly_name\" at 'file': "
            "Cannot find field."
        )
        head = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"}
        outside = await client.post("/upload/v1/files", json={"fiel": {}}, headers=head)
        assert 'Unknown name "fiel"' in error(outside, 400, "INVALID_ARGUMENT")
        # every File field the SDK may send, in either spelling, is known
        everything = {
            "name": "files/all-fields",
            "display_name": "d",
            "mimeType": "jsonl",
            "size_bytes": 3,
            "sha256Hash": "x",
            "uri": "u",
            "download_uri": "u",
            "state": "ACTIVE",
            "source": "UPLOADED",
            "createTime": "2026-01-01T00:00:00Z",
            "expiration_time": "2026-01-01T00:00:00Z",
            "video_metadata": {},
        }
        assert (await start(client, 3, file=everything)).status_code == 200
        assert (await client.get("/v1/files")).json().get("files", []) == []


def test_empty_file(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await upload(client, b"")
        assert file["sizeBytes"] == "0"
        assert file["sha256Hash"] == b64_sha256(b"")


def test_offset_beyond_received_is_refused(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        url = (await start(client, 20)).headers["x-goog-upload-url"]
        await chunk(client, url, b"0123456789", 0)
        gap = await chunk(client, url, b"0123456789", 15, final=True)
        assert "resume at offset 10" in error(gap, 400, "INVALID_ARGUMENT")
        missing = await client.post(url, content=b"x", headers={"X-Goog-Upload-Command": "upload"})
        assert "X-Goog-Upload-Offset" in error(missing, 400, "INVALID_ARGUMENT")
        # the session survives a refused chunk
        done = await chunk(client, url, b"abcdefghij", 10, final=True)
        assert done.json()["file"]["sizeBytes"] == "20"


def test_size_mismatch_and_too_many_bytes(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        url = (await start(client, 10)).headers["x-goog-upload-url"]
        short = await chunk(client, url, b"12345", 0, final=True)
        message = error(short, 400, "INVALID_ARGUMENT")
        assert "declared 10 bytes" in message and "5 were received" in message
        long = await chunk(client, url, b"1234567890abc", 0, final=True)
        assert "more bytes than the 10 declared" in error(long, 400, "INVALID_ARGUMENT")


def test_upload_limit(tmp_path: Path) -> None:
    @scenario(tmp_path, max_upload_bytes=100)
    async def _(runtime: Runtime, client: Client) -> None:
        message = error(await start(client, 101), 400, "INVALID_ARGUMENT")
        assert "100 bytes" in message and "server.max_upload_bytes" in message
        # without a declared size the limit is enforced while streaming
        url = (await start(client, None)).headers["x-goog-upload-url"]
        over = await chunk(client, url, b"x" * 101, 0, final=True)
        assert "server.max_upload_bytes" in error(over, 400, "INVALID_ARGUMENT")
        assert (await chunk(client, url, b"x" * 100, 0, final=True)).status_code == 200


def test_unknown_and_expired_sessions(tmp_path: Path) -> None:
    @scenario(tmp_path, upload_session_minutes=0.001)
    async def _(runtime: Runtime, client: Client) -> None:
        unknown = "/upload/v1/files?upload_id=nope&upload_protocol=resumable"
        error(await chunk(client, unknown, b"x", 0), 404, "NOT_FOUND")
        url = (await start(client, 1)).headers["x-goog-upload-url"]
        await asyncio.sleep(0.1)
        error(await chunk(client, url, b"x", 0, final=True), 404, "NOT_FOUND")
        assert await runtime.services.uploads.sweep_expired() == 1
        assert not list(runtime.blobs.path("uploads").iterdir())


def test_chunks_need_no_api_key(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        key = await runtime.services.keys.create("alice")
        error(await start(client, 3), 401, "UNAUTHENTICATED")
        started = await start(client, 3, headers={"x-goog-api-key": key})
        url = started.headers["x-goog-upload-url"]
        file = (await chunk(client, url, b"abc", 0, final=True)).json()["file"]
        got = await client.get(f"/v1/{file['name']}", headers={"x-goog-api-key": key})
        assert got.status_code == 200


# ------------------------------------------------------------------ files routes


def test_list_pages(tmp_path: Path, database_url: str) -> None:
    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        for i in range(5):
            await runtime.services.files.create_from_chunks(
                "default", [b"x" * i], display_name=f"f{i}"
            )
        names: list[str] = []
        token = None
        pages = 0
        while True:
            params: dict[str, Any] = {"pageSize": 2}
            if token:
                params["pageToken"] = token
            body = (await client.get("/v1beta/files", params=params)).json()
            pages += 1
            assert len(body["files"]) <= 2
            names += [f["displayName"] for f in body["files"]]
            token = body.get("nextPageToken")
            if not token:
                break
        assert pages == 3
        assert names == ["f4", "f3", "f2", "f1", "f0"]
        default = (await client.get("/v1/files")).json()
        assert len(default["files"]) == 5 and "nextPageToken" not in default
        bad = await client.get("/v1/files", params={"pageToken": "garbage!"})
        assert "pageToken" in error(bad, 400, "INVALID_ARGUMENT")


def test_other_tenants_files_are_not_found(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        alice = {"x-goog-api-key": await runtime.services.keys.create("alice")}
        bob = {"x-goog-api-key": await runtime.services.keys.create("bob")}
        file = await upload(client, b"secret", headers=alice)
        generated = await generated_file(runtime, b"alice's results", tenant="alice")
        for name in (file["name"], generated.name):
            error(await client.get(f"/v1/{name}", headers=bob), 404, "NOT_FOUND")
            error(await client.delete(f"/v1/{name}", headers=bob), 404, "NOT_FOUND")
        error(
            await client.get(f"/v1/{generated.name}:download?alt=media", headers=bob),
            404,
            "NOT_FOUND",
        )
        assert (await client.get("/v1/files", headers=bob)).json()["files"] == []
        assert len((await client.get("/v1/files", headers=alice)).json()["files"]) == 2
        error(await client.get(f"/v1/{file['name']}"), 401, "UNAUTHENTICATED")


def test_download_generated_file(tmp_path: Path, database_url: str) -> None:
    data = b"".join(b'{"key": "%d", "response": {}}\n' % i for i in range(100_000))

    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await generated_file(runtime, data)
        body = (await client.get(f"/v1/{file.name}")).json()
        assert body["downloadUri"] == f"http://testserver/v1/{file.name}:download?alt=media"
        assert "expirationTime" not in body
        for path in (
            f"/v1/{file.name}:download?alt=media",
            f"/download/v1beta/{file.name}:download?alt=media",
        ):
            async with client.stream("GET", path) as response:
                assert response.status_code == 200
                assert response.headers["content-length"] == str(len(data))
                pieces = [piece async for piece in response.aiter_raw()]
            assert b"".join(pieces) == data


def test_uploaded_file_download_refused(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await upload(client, b"abc")
        refused = await client.get(f"/v1/{file['name']}:download", params={"alt": "media"})
        assert "only generated files" in error(refused, 400, "FAILED_PRECONDITION")


def test_delete(tmp_path: Path, database_url: str) -> None:
    @scenario(tmp_path, database_url)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await upload(client, b"abc")
        stored = await runtime.services.files.get(None, file["name"])
        deleted = await client.delete(f"/v1/{file['name']}")
        assert deleted.status_code == 200 and deleted.json() == {}
        error(await client.get(f"/v1/{file['name']}"), 404, "NOT_FOUND")
        error(await client.delete(f"/v1/{file['name']}"), 404, "NOT_FOUND")
        assert not runtime.blobs.path(stored.blob_key).exists()


def test_expired_files_are_swept(tmp_path: Path, database_url: str) -> None:
    @scenario(tmp_path, database_url, file_retention_hours=1)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await upload(client, b"abc")
        stored = await runtime.services.files.get(None, file["name"])
        assert stored.expire_time is not None
        assert abs(stored.expire_time - stored.create_time - 3600) < 1
        keep = await generated_file(runtime, b"no expiry")
        assert await runtime.services.files.sweep_expired(now=stored.expire_time - 1) == 0
        assert await runtime.services.files.sweep_expired(now=stored.expire_time + 1) == 1
        error(await client.get(f"/v1/{file['name']}"), 404, "NOT_FOUND")
        assert not runtime.blobs.path(stored.blob_key).exists()
        assert (await client.get(f"/v1/{keep.name}")).status_code == 200


def test_unknown_version_and_protocol(tmp_path: Path) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        error(await client.get("/v9/files"), 404, "NOT_FOUND")
        raw = await client.post(
            "/upload/v1/files", content=b"x", headers={"X-Goog-Upload-Command": "upload"}
        )
        assert "resumable" in error(raw, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("mime", ["jsonl", "application/jsonl", "text/plain", "application/json"])
def test_mime_types_stored_as_given(tmp_path: Path, mime: str) -> None:
    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        file = await upload(client, b"{}\n", headers={"X-Goog-Upload-Header-Content-Type": mime})
        assert file["mimeType"] == mime


def test_sweep_keeps_the_input_of_an_unfinished_batch(tmp_path: Path, database_url: str) -> None:
    @scenario(tmp_path, database_url, file_retention_hours=1)
    async def _(runtime: Runtime, client: Client) -> None:
        line = b'{"key": "a", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n'
        file = await upload(client, line)
        stored = await runtime.services.files.get(None, file["name"])
        assert stored.expire_time is not None
        await runtime.services.batches.create_from_file(
            "default", model="echo", kind=BatchKind.GENERATE, file_id=stored.id
        )
        assert await runtime.services.files.sweep_expired(now=stored.expire_time + 1) == 0
        assert runtime.blobs.path(stored.blob_key).exists()


def test_query_cancel_and_concurrent_resends(tmp_path: Path) -> None:
    data = b"z" * 300_000

    @scenario(tmp_path)
    async def _(runtime: Runtime, client: Client) -> None:
        url = (await start(client, len(data))).headers["x-goog-upload-url"]
        # the same chunk sent twice at once: one appends, the other is a no-op
        replies = await asyncio.gather(
            chunk(client, url, data[:200_000], 0), chunk(client, url, data[:200_000], 0)
        )
        assert [r.headers["x-goog-upload-status"] for r in replies] == ["active", "active"]
        query = await client.post(url, headers={"X-Goog-Upload-Command": "query"})
        assert query.headers["x-goog-upload-size-received"] == "200000"
        final = await chunk(client, url, data[200_000:], 200_000, final=True)
        assert final.json()["file"]["sha256Hash"] == b64_sha256(data)

        url = (await start(client, 10)).headers["x-goog-upload-url"]
        await chunk(client, url, b"12345", 0)
        cancelled = await client.post(url, headers={"X-Goog-Upload-Command": "cancel"})
        assert cancelled.status_code == 200
        error(await chunk(client, url, b"67890", 5, final=True), 404, "NOT_FOUND")
        assert not list(runtime.blobs.path("uploads").iterdir())
