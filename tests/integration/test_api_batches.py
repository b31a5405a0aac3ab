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

from overnight.api.server import create_app
from overnight.app import Runtime, build_runtime
from overnight.config import ModelSettings

GENERATE_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
EMBED_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.EmbedContentBatch"

Scenario = Callable[[httpx.AsyncClient, Runtime], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    database_url: str | None = None,
    *,
    worker: bool = True,
    shard_size: int = 1000,
    **server: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
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
    runtime = await build_runtime(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.worker().run(stop)) if worker else None
    transport = httpx.ASGITransport(app=create_app(runtime.services))
    try:
        # JSON content type on every request, as the SDK sends (the server requires it)
        json_type = {"content-type": "application/json"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=json_type
        ) as client:
            yield client, runtime
    finally:
        stop.set()
        if task is not None:
            await task
        await runtime.close()


def scenario(tmp_path: Path, fn: Scenario, database_url: str | None = None, **kw: Any) -> None:
    async def main() -> None:
        async with serving(tmp_path, database_url, **kw) as (client, runtime):
            await fn(client, runtime)

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


async def upload(runtime: Runtime, tenant: str, lines: list[dict[str, Any]]) -> str:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    file = await runtime.services.files.create_from_chunks(tenant, [data], display_name="in.jsonl")
    return file.name


@pytest.mark.parametrize("version", ["v1", "v1beta"])
@pytest.mark.parametrize("snake", [False, True])
def test_inline_batch_lifecycle(tmp_path: Path, version: str, snake: bool) -> None:
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
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
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
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
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
        items = [
            {"request": request("fine"), "metadata": {"key": "a"}},
            {"request": {"contents": []}, "metadata": {"key": "b"}},
            {"request": request("x", temperature=-1)},
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
        # An inline batch has no lines: an error names the item as it was sent.
        assert items_out[1]["error"]["message"].startswith("inlinedRequests[1]: request.contents")
        message = items_out[2]["error"]["message"]
        assert message.startswith("inlinedRequests[2]: request.generationConfig.temperature")
        assert "line " not in message
        assert "metadata" not in items_out[2]

    scenario(tmp_path, fn)


@pytest.mark.parametrize("snake", [False, True])
def test_file_batch(tmp_path: Path, snake: bool) -> None:
    async def fn(client: httpx.AsyncClient, runtime: Runtime) -> None:
        file_name = await upload(
            runtime,
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
        file = await runtime.services.files.get("default", output["responsesFile"])
        lines = [json.loads(x) for x in runtime.blobs.path(file.blob_key).read_text().splitlines()]
        assert [(x["key"], "response" in x) for x in lines] == [("k1", True), ("k2", True)]

    scenario(tmp_path, fn)


def test_embed_batches(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, runtime: Runtime) -> None:
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
            runtime, "default", [{"key": "e1", "request": {"content": {"parts": [{"text": "x"}]}}}]
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
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
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
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
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
        # Like Gemini: an ended batch cannot be cancelled (again).
        again = error(await client.post(f"/v1/{name}:cancel"), 400)
        assert again["status"] == "FAILED_PRECONDITION"
        assert "BATCH_STATE_CANCELLED" in again["message"] and name in again["message"]
        assert ok(await client.delete(f"/v1/{name}")) == {}
        error(await client.get(f"/v1/{name}"), 404)
        error(await client.delete(f"/v1/{name}"), 404)
        error(await client.post(f"/v1/{name}:cancel"), 404)
        listed = ok(await client.get("/v1/batches"))
        assert listed["operations"] == []

    scenario(tmp_path, fn, worker=False)


def test_cancel_running_keeps_partial_output(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, runtime: Runtime) -> None:
        created = ok(
            await client.post(
                "/v1/models/slow-echo:batchGenerateContent",
                content=inline_body([f"q{i}" for i in range(40)]),
            )
        )
        name = created["name"]
        deadline = time.monotonic() + 20
        while True:
            batch = await runtime.services.batches.get(None, name)
            if batch.succeeded_count > 0 or batch.state.terminal:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await client.post(f"/v1/{name}:cancel")
        deadline = time.monotonic() + 20
        while not (await runtime.services.batches.get(None, name)).finalized:
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
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
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
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
        big = inline_body(["word " * 400] * 10)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 500):
                yield big[i : i + 500]

        response = await client.post("/v1/models/echo:batchGenerateContent", content=chunks())
        assert "content-length" not in response.request.headers
        error(response, 400)

    scenario(tmp_path, fn, worker=False, max_inline_bytes=2000)


def test_tenant_isolation(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, runtime: Runtime) -> None:
        alice = {"x-goog-api-key": await runtime.services.keys.create("alice")}
        bob = {"x-goog-api-key": await runtime.services.keys.create("bob")}
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

        alice_file = await upload(runtime, "alice", [{"key": "k", "request": request("x")}])
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


def test_unknown_fields_are_refused_and_nothing_is_created(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
        def item(**extra: Any) -> dict[str, Any]:
            return {"request": request("x"), "metadata": {"key": "k"}, **extra}

        def inline(*items: dict[str, Any], **batch: Any) -> dict[str, Any]:
            return {"batch": {"inputConfig": {"requests": {"requests": list(items)}}, **batch}}

        cases = [
            (
                inline(item(), dispalyName="typo"),
                "Unknown name \"dispalyName\" at 'batch': Cannot find field.",
            ),
            (
                inline(item(), item(metdata={"key": "k"})),
                "Unknown name \"metdata\" at 'batch.inputConfig.requests.requests[1]'",
            ),
            (
                inline({"request": {**request("x"), "generationConfig": {"temprature": 1}}}),
                'Unknown name "temprature" at '
                "'batch.inputConfig.requests.requests[0].request.generationConfig'",
            ),
            (
                {"batch": {"inputConfig": {"fileName": "files/x", "fileNmae": "files/y"}}},
                "Unknown name \"fileNmae\" at 'batch.inputConfig'",
            ),
            (
                {"batch": {"inputConfig": {"fileName": "files/x"}, "webhookConfig": {"uri": "u"}}},
                "Unknown name \"uri\" at 'batch.webhookConfig'",
            ),
            (
                {"batch": {"inputConfig": {"fileName": "files/x"}}, "extra": 1},
                'Unknown name "extra"',
            ),
        ]
        for body, expected in cases:
            err = error(await client.post("/v1/models/echo:batchGenerateContent", json=body), 400)
            assert err["status"] == "INVALID_ARGUMENT"
            assert err["message"].startswith("Invalid JSON payload received. ")
            assert expected in err["message"], err["message"]
        embed = {"request": {"content": {"parts": [{"text": "x"}]}, "taskTyp": "CLUSTERING"}}
        err = error(
            await client.post("/v1/models/echo:asyncBatchEmbedContent", json=inline(embed)), 400
        )
        assert (
            "Unknown name \"taskTyp\" at 'batch.inputConfig.requests.requests[0].request'"
            in (err["message"])
        )
        assert ok(await client.get("/v1/batches")) == {"operations": []}

    scenario(tmp_path, fn, worker=False)


def test_every_spelling_the_sdk_and_the_docs_send_is_accepted(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, runtime: Runtime) -> None:
        inline_request = {
            "contents": [{"parts": [{"text": "x"}], "role": "user"}],
            "systemInstruction": {"parts": [{"text": "s"}], "role": "user"},
            "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}],
            "generation_config": {
                "temperature": 0.2,
                "topK": 40.0,
                "thinkingConfig": {"thinking_budget": 0},
                "responseModalities": ["TEXT"],
            },
        }
        body = {
            "batch": {
                "display_name": "d",
                "input_config": {
                    "requests": {"requests": [{"request": inline_request, "metadata": {"k": "v"}}]}
                },
                "webhook_config": {"user_metadata": {"job": 1}},
            }
        }
        created = ok(await client.post("/v1/models/echo:batchGenerateContent", json=body))
        done = await wait_done(client, created["name"])
        assert done["metadata"]["batchStats"]["successfulRequestCount"] == "1"
        file_name = await upload(runtime, "default", [{"key": "k", "request": request("y")}])
        body = {"batch": {"displayName": "x", "inputConfig": {"fileName": file_name}}}
        ok(await client.post("/v1/models/echo:batchGenerateContent", json=body))

    scenario(tmp_path, fn)


def test_a_file_line_with_an_unknown_field_gets_its_own_error(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, runtime: Runtime) -> None:
        file_name = await upload(
            runtime,
            "default",
            [
                {"key": "good", "request": request("one")},
                {"key": "typo", "request": request("two"), "metdata": {"m": 1}},
                {"key": "deep", "request": {**request("three"), "generation_cfg": {}}},
                {"key": "also-good", "request": request("four")},
            ],
        )
        body = {"batch": {"inputConfig": {"fileName": file_name}}}
        created = ok(await client.post("/v1/models/echo:batchGenerateContent", json=body))
        done = await wait_done(client, created["name"])
        assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
        assert done["metadata"]["batchStats"]["failedRequestCount"] == "2"
        file = await runtime.services.files.get(
            "default", done["metadata"]["output"]["responsesFile"]
        )
        lines = {
            x["key"]: x
            for x in map(json.loads, runtime.blobs.path(file.blob_key).read_text().splitlines())
        }
        assert "response" in lines["good"] and "response" in lines["also-good"]
        assert lines["typo"]["error"]["message"].startswith(
            'line 2: Invalid JSON payload received. Unknown name "metdata": Cannot find field.'
        )
        assert lines["typo"]["error"]["status"] == "INVALID_ARGUMENT"
        assert lines["deep"]["error"]["message"] == (
            'line 3: Invalid JSON payload received. Unknown name "generation_cfg" at '
            "'request': Cannot find field."
        )

    scenario(tmp_path, fn)


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("gemini-2.5-flash-image", "images"),
        ("gemini-2.0-flash-preview-image-generation", "images"),
        ("gemini-2.5-flash-preview-tts", "speech"),
        ("gemini-live-2.5-flash-preview", "live audio"),
        ("gemini-2.5-flash-native-audio-preview-09-2025", "live audio"),
    ],
)
def test_media_models_are_refused_at_create(tmp_path: Path, model: str, kind: str) -> None:
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
        err = error(
            await client.post(
                f"/v1/models/{model}:batchGenerateContent", content=inline_body(["x"])
            ),
            404,
        )
        assert err["status"] == "NOT_FOUND"
        message = err["message"]
        assert f"model '{model}' generates {kind}" in message
        assert "'gemini-*'" in message and "echo" in message
        assert f'[models."{model}"]' in message
        assert ok(await client.get("/v1/batches")) == {"operations": []}
        # the text models the same pattern serves still work
        ok(
            await client.post(
                "/v1/models/gemini-2.5-flash:batchGenerateContent", content=inline_body(["x"])
            )
        )

    scenario(tmp_path, fn, worker=False)


@pytest.mark.parametrize("modalities", [["TEXT"], ["text"]])
def test_text_response_modality_runs_on_a_text_model(tmp_path: Path, modalities: list[str]) -> None:
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
        items = [
            {"request": request("fine", responseModalities=modalities)},
            {"request": request("picture", responseModalities=["TEXT", "IMAGE"])},
        ]
        body = {"batch": {"inputConfig": {"requests": {"requests": items}}}}
        created = ok(await client.post("/v1/models/echo:batchGenerateContent", json=body))
        done = await wait_done(client, created["name"])
        out = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        assert out[0]["response"]["candidates"][0]["content"]["parts"][0]["text"] == "echo: fine"
        message = out[1]["error"]["message"]
        assert message.startswith("inlinedRequests[1]: generationConfig.responseModalities[1]:")
        assert "'IMAGE' is not supported" in message

    scenario(tmp_path, fn)


def test_cancelling_an_ended_batch_names_its_state(tmp_path: Path) -> None:
    async def fn(client: httpx.AsyncClient, _: Runtime) -> None:
        created = ok(
            await client.post("/v1/models/echo:batchGenerateContent", content=inline_body(["x"]))
        )
        done = await wait_done(client, created["name"])
        assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
        err = error(await client.post(f"/v1/{created['name']}:cancel"), 400)
        assert err["status"] == "FAILED_PRECONDITION"
        assert f"{created['name']} is already in state BATCH_STATE_SUCCEEDED" in err["message"]
        op = ok(await client.get(f"/v1/{created['name']}"))
        assert op["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
        # an unknown field in the (normally empty) cancel body is refused too
        other = ok(
            await client.post(
                "/v1/models/slow-echo:batchGenerateContent", content=inline_body(["y"])
            )
        )
        err = error(await client.post(f"/v1/{other['name']}:cancel", json={"force": True}), 400)
        assert 'Unknown name "force"' in err["message"]

    scenario(tmp_path, fn)
