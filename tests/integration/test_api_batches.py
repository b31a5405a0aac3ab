"""The batches API over ASGI, with a real worker on the fake ``echo`` model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import fake_settings, run
from tests.helpers import request

from overnight.api.auth import create_key
from overnight.api.server import create_app
from overnight.app import Services, build_services
from overnight.config import ModelSettings

GENERATE_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
EMBED_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.EmbedContentBatch"

Scenario = Callable[[httpx.AsyncClient, Services], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    database_url: str | None = None,
    *,
    worker: bool = True,
    shard_size: int = 1000,
    **server: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    settings = fake_settings(tmp_path, database_url, shard_size=shard_size)
    slow = ModelSettings(backend="fake", options={"latency_s": 0.05, "max_batch_size": 2})
    settings = settings.model_copy(
        update={
            "models": {**settings.models, "slow-echo": slow},
            "aliases": {"gemini-*": "echo", "gemini-embedding-*": "echo"},
        }
    )
    if server:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=server)})
    services = await build_services(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(services.worker().run(stop)) if worker else None
    transport = httpx.ASGITransport(app=create_app(services))
    try:
        # JSON content type on every request, as the SDK sends (the server requires it)
        json_type = {"content-type": "application/json"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=json_type
        ) as client:
            yield client, services
    finally:
        stop.set()
        if task is not None:
            await task
        await services.close()


def scenario(tmp_path: Path, fn: Scenario, database_url: str | None = None, **kw: Any) -> None:
    async def main() -> None:
        async with serving(tmp_path, database_url, **kw) as (client, services):
            await fn(client, services)

    run(main())


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def error(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code
    return body


async def wait_done(
    client: httpx.AsyncClient, name: str, version: str = "v1", **headers: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        op: dict[str, Any] = ok(await client.get(f"/{version}/{name}", headers=headers))
        if op.get("done"):
            return op
        assert time.monotonic() < deadline, op
        await asyncio.sleep(0.02)


def inline_body(texts: list[str], *, snake: bool = False, name: str | None = "job") -> bytes:
    items = [{"request": request(t), "metadata": {"key": f"req-{i}"}} for i, t in enumerate(texts)]
    if snake:
        batch: dict[str, Any] = {"input_config": {"requests": {"requests": items}}}
        if name is not None:
            batch["display_name"] = name
    else:
        batch = {"inputConfig": {"requests": {"requests": items}}}
        if name is not None:
            batch["displayName"] = name
    return json.dumps({"batch": batch}).encode()


async def upload(services: Services, tenant: str, lines: list[dict[str, Any]]) -> str:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    file = await services.files.create_from_chunks(tenant, [data], display_name="in.jsonl")
    return file.name


@pytest.mark.parametrize("version", ["v1", "v1beta"])
@pytest.mark.parametrize("snake", [False, True])
def test_inline_batch_lifecycle(tmp_path: Path, version: str, snake: bool) -> None:
    async def fn(client: httpx.AsyncClient, _: Services) -> None:
        body = inline_body(["hello world", "why is the sky blue"], snake=snake)
        created = ok(
            await client.post(
                f"/{version}/models/gemini-2.5-flash:batchGenerateContent", content=body
            )
        )
        name = created["name"]
        assert name.startswith("batches/") and name[8:].isalnum() and name[8:].islower()
        meta = created["metadata"]
        assert meta["@type"] == GENERATE_TYPE
        assert meta["name"] == name
        assert meta["model"] == "models/gemini-2.5-flash"
        assert meta["displayName"] == "job"
        assert meta["state"] == "BATCH_STATE_PENDING"
        assert meta["createTime"].endswith("Z") and meta["updateTime"].endswith("Z")
        assert "done" not in created and "output" not in meta

        done = await wait_done(client, name, version)
        meta = done["metadata"]
        assert meta["state"] == "BATCH_STATE_SUCCEEDED"
        assert meta["endTime"].endswith("Z")
        assert meta["batchStats"] == {"requestCount": "2", "successfulRequestCount": "2"}
        items = meta["output"]["inlinedResponses"]["inlinedResponses"]
        texts = [i["response"]["candidates"][0]["content"]["parts"][0]["text"] for i in items]
        assert texts == ["echo: hello world", "echo: why is the sky blue"]
        assert [i["metadata"] for i in items] == [{"key": "req-0"}, {"key": "req-1"}]
        assert done["response"]["@type"] == GENERATE_TYPE + "Output"
        assert done["response"]["inlinedResponses"] == meta["output"]["inlinedResponses"]
        assert "error" not in done

    scenario(tmp_path, fn)


def test_inline_batch_on_postgres_and_sqlite(tmp_path: Path, database_url: str) -> None:
    async def fn(client: httpx.AsyncClient, _: Services) -> None:
        created = ok(
            await client.post(
                "/v1/models/echo:batchGenerateContent", content=inline_body(["a b"], name=None)
            )
        )
        assert created["metadata"]["displayName"] == ""
        done = await wait_done(client, created["name"])
        assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"

    scenario(tmp_path, fn, database_url)


def test_per_request_errors_do_not_fail_the_batch(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, _: Services) -> None:
        items = [
            {"request": request("fine"), "metadata": {"key": "a"}},
            {"request": {"contents": []}, "metadata": {"key": "b"}},
            {"request": {"contents": [{"parts": [{"text": "x"}]}], "bogus": 1}},
        ]
        body = {"batch": {"inputConfig": {"requests": {"requests": items}}}}
        created = ok(await client.post("/v1/models/echo:batchGenerateContent", json=body))
        done = await wait_done(client, created["name"])
        meta = done["metadata"]
        assert meta["state"] == "BATCH_STATE_SUCCEEDED"
        assert meta["batchStats"] == {
            "requestCount": "3",
            "successfulRequestCount": "1",
            "failedRequestCount": "2",
        }
        items_out = meta["output"]["inlinedResponses"]["inlinedResponses"]
        assert "response" in items_out[0]
        assert items_out[1]["error"]["code"] == 400
        assert items_out[1]["metadata"] == {"key": "b"}
        assert items_out[1]["error"]["details"] == []
        assert "bogus" in items_out[2]["error"]["message"]
        assert "metadata" not in items_out[2]

    scenario(tmp_path, fn)


@pytest.mark.parametrize("snake", [False, True])
def test_file_batch(tmp_path: Path, snake: bool) -> None:
    async def fn(client: httpx.AsyncClient, services: Services) -> None:
        file_name = await upload(
            services,
            "default",
            [{"key": "k1", "request": request("one")}, {"key": "k2", "request": request("two")}],
        )
        config = {"file_name": file_name} if snake else {"fileName": file_name}
        key = "input_config" if snake else "inputConfig"
        created = ok(
            await client.post(
                "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
                json={"batch": {key: config}},
            )
        )
        done = await wait_done(client, created["name"], "v1beta")
        output = done["metadata"]["output"]
        assert output["responsesFile"].startswith("files/batch")
        assert done["response"]["responsesFile"] == output["responsesFile"]
        file = await services.files.get("default", output["responsesFile"])
        lines = [json.loads(x) for x in services.blobs.path(file.blob_key).read_text().splitlines()]
        assert [(x["key"], "response" in x) for x in lines] == [("k1", True), ("k2", True)]

    scenario(tmp_path, fn)


def test_embed_batches(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, services: Services) -> None:
        items = [
            {"request": {"content": {"parts": [{"text": t}]}, "outputDimensionality": 4}}
            for t in ("first text", "second")
        ]
        created = ok(
            await client.post(
                "/v1/models/gemini-embedding-001:asyncBatchEmbedContent",
                json={
                    "batch": {
                        "displayName": "emb",
                        "inputConfig": {"requests": {"requests": items}},
                    }
                },
            )
        )
        assert created["metadata"]["@type"] == EMBED_TYPE
        done = await wait_done(client, created["name"])
        out = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        assert [len(i["response"]["embedding"]["values"]) for i in out] == [4, 4]
        assert done["response"]["@type"] == EMBED_TYPE + "Output"

        file_name = await upload(
            services, "default", [{"key": "e1", "request": {"content": {"parts": [{"text": "x"}]}}}]
        )
        created = ok(
            await client.post(
                "/v1/models/echo:asyncBatchEmbedContent",
                json={"batch": {"inputConfig": {"file_name": file_name}}},
            )
        )
        done = await wait_done(client, created["name"])
        assert done["metadata"]["output"]["responsesFile"].startswith("files/batch")

    scenario(tmp_path, fn)


def test_pagination(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, _: Services) -> None:
        names = []
        for i in range(5):
            op = ok(
                await client.post(
                    "/v1/models/echo:batchGenerateContent", content=inline_body([f"t{i}"])
                )
            )
            names.append(op["name"])
        seen: list[str] = []
        token = None
        pages = 0
        while True:
            params = {"pageSize": "2", **({"pageToken": token} if token else {})}
            page = ok(await client.get("/v1/batches", params=params))
            pages += 1
            assert len(page["operations"]) <= 2
            seen += [op["name"] for op in page["operations"]]
            token = page.get("nextPageToken")
            if not token:
                break
        assert pages == 3
        assert seen == list(reversed(names))
        everything = ok(await client.get("/v1beta/batches"))
        assert [op["name"] for op in everything["operations"]] == seen
        assert "nextPageToken" not in everything
        alpha = ok(await client.get("/v1alpha/batches", params={"pageSize": "100"}))
        assert [op["name"] for op in alpha["operations"]] == seen
        error(await client.get("/v1/batches", params={"pageToken": "garbage!"}), 400)

    scenario(tmp_path, fn, worker=False)


def test_cancel_and_delete(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, _: Services) -> None:
        created = ok(
            await client.post("/v1/models/echo:batchGenerateContent", content=inline_body(["x"]))
        )
        name = created["name"]
        assert ok(await client.post(f"/v1/{name}:cancel")) == {}
        op = ok(await client.get(f"/v1/{name}"))
        assert op["metadata"]["state"] == "BATCH_STATE_CANCELLED"
        assert op["done"] is True
        assert op["error"]["code"] == 1
        assert "response" not in op
        assert ok(await client.post(f"/v1/{name}:cancel")) == {}  # idempotent
        assert ok(await client.delete(f"/v1/{name}")) == {}
        error(await client.get(f"/v1/{name}"), 404)
        error(await client.delete(f"/v1/{name}"), 404)
        error(await client.post(f"/v1/{name}:cancel"), 404)
        listed = ok(await client.get("/v1/batches"))
        assert listed["operations"] == []

    scenario(tmp_path, fn, worker=False)


def test_cancel_running_keeps_partial_output(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, services: Services) -> None:
        created = ok(
            await client.post(
                "/v1/models/slow-echo:batchGenerateContent",
                content=inline_body([f"q{i}" for i in range(40)]),
            )
        )
        name = created["name"]
        deadline = time.monotonic() + 20
        while True:
            batch = await services.batches.get(None, name)
            if batch.succeeded_count > 0 or batch.state.terminal:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await client.post(f"/v1/{name}:cancel")
        deadline = time.monotonic() + 20
        while not (await services.batches.get(None, name)).finalized:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        op = ok(await client.get(f"/v1/{name}"))
        if op["metadata"]["state"] == "BATCH_STATE_SUCCEEDED":
            pytest.skip("the batch finished before the cancel landed")
        items = op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        assert len(items) == 40
        assert any("response" in i for i in items)
        assert any("error" in i for i in items)
        for i, item in enumerate(items):
            assert item["metadata"] == {"key": f"req-{i}"}
            if "error" in item:
                assert item["error"]["code"] == 499

    scenario(tmp_path, fn, shard_size=2)


def test_errors(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, _: Services) -> None:
        body = inline_body(["x"])
        err = error(await client.post("/v1/models/nope:batchGenerateContent", content=body), 404)
        assert err["status"] == "NOT_FOUND" and "echo" in err["message"]
        err = error(
            await client.post("/v1/models/all-minilm-l6-v2:batchGenerateContent", content=body),
            400,
        )
        assert err["status"] == "INVALID_ARGUMENT"
        err = error(
            await client.post("/v1/models/echo:batchGenerateContent", content=b"{nope"), 400
        )
        assert "JSON" in err["message"]
        for bad in (
            {},
            {"batch": {}},
            {"batch": {"inputConfig": {"requests": {"requests": []}}}},
            {"batch": {"inputConfig": {"requests": {"requests": [{"metadata": {}}]}}}},
            {"batch": {"inputConfig": {"requests": [request("x")]}}},
            {"batch": {"inputConfig": {"fileName": "files/a", "requests": {"requests": []}}}},
        ):
            error(await client.post("/v1/models/echo:batchGenerateContent", json=bad), 400)
        err = error(
            await client.post(
                "/v1/models/echo:batchGenerateContent",
                json={"batch": {"inputConfig": {"fileName": "files/doesnotexist"}}},
            ),
            404,
        )
        error(await client.get("/v1/batches/doesnotexist"), 404)
        error(await client.get("/v2/batches/doesnotexist"), 404)
        big = inline_body(["word " * 400] * 10)
        err = error(await client.post("/v1/models/echo:batchGenerateContent", content=big), 400)
        assert "2000-byte" in err["message"] and "file" in err["message"]

    scenario(tmp_path, fn, worker=False, max_inline_bytes=2000)


def test_oversize_without_content_length(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, _: Services) -> None:
        big = inline_body(["word " * 400] * 10)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 500):
                yield big[i : i + 500]

        response = await client.post("/v1/models/echo:batchGenerateContent", content=chunks())
        assert "content-length" not in response.request.headers
        error(response, 400)

    scenario(tmp_path, fn, worker=False, max_inline_bytes=2000)


def test_tenant_isolation(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, services: Services) -> None:
        alice = {"x-goog-api-key": await create_key(services.store.keys, "alice")}
        bob = {"x-goog-api-key": await create_key(services.store.keys, "bob")}
        error(await client.get("/v1/batches"), 401)
        created = ok(
            await client.post(
                "/v1/models/echo:batchGenerateContent", content=inline_body(["x"]), headers=alice
            )
        )
        name = created["name"]
        error(await client.get(f"/v1/{name}", headers=bob), 404)
        error(await client.post(f"/v1/{name}:cancel", headers=bob), 404)
        error(await client.delete(f"/v1/{name}", headers=bob), 404)
        assert ok(await client.get("/v1/batches", headers=bob))["operations"] == []
        assert ok(await client.get(f"/v1/{name}?key={alice['x-goog-api-key']}"))["name"] == name

        alice_file = await upload(services, "alice", [{"key": "k", "request": request("x")}])
        err = error(
            await client.post(
                "/v1/models/echo:batchGenerateContent",
                json={"batch": {"inputConfig": {"fileName": alice_file}}},
                headers=bob,
            ),
            404,
        )
        assert "does not exist" in err["message"]
        ok(
            await client.post(
                "/v1/models/echo:batchGenerateContent",
                json={"batch": {"inputConfig": {"fileName": alice_file}}},
                headers=alice,
            )
        )

    scenario(tmp_path, fn, worker=False)
