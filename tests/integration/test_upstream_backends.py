"""The ``openai`` and ``gemini`` backends against the fake upstream, over real HTTP.

The fake (``overnight.testing.upstream``) runs on loopback in a background thread and
misbehaves on request: errors, resets, downtime, and a rate-limit enforcer that counts
every request over its limits.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import drive, output_lines, request, write_jsonl

from overnight.app import Runtime, build_runtime
from overnight.backends.gemini import GeminiBackend
from overnight.backends.openai import OpenAIBackend
from overnight.config import ModelSettings, load_settings
from overnight.domain.batches import BatchKind, BatchState
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.errors import BackendUnavailable, RequestRejected
from overnight.testing.upstream import FakeUpstream


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(seed=7) as up:
        yield up


async def services(tmp_path: Path, model: dict[str, Any], **engine: Any) -> Runtime:
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "engine": {"heartbeat_seconds": 0.2, "poll_seconds": 0.02, **engine},
            "models": {"up": model},
        },
    )
    return await build_runtime(settings)


async def submit(svc: Runtime, path: Path, kind: BatchKind = BatchKind.GENERATE) -> str:
    file = await svc.services.files.import_path("t", path)
    batch = await svc.services.batches.create_from_file("t", model="up", kind=kind, file_id=file.id)
    return batch.id


def text_of(line: dict[str, Any]) -> str:
    return line["response"]["candidates"][0]["content"]["parts"][0]["text"]


# ---------------------------------------------------------------- conversion


def test_openai_request_and_reply_conversion(upstream: FakeUpstream) -> None:
    settings = ModelSettings(
        backend="openai", base_url=f"{upstream.url}/v1", model="served-name", max_output_tokens=50
    )
    backend = OpenAIBackend("up", settings)
    image = base64.b64encode(b"\x89PNG fake").decode()
    req = GenerateRequest.model_validate(
        {
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello."}]},
                {
                    "role": "user",
                    "parts": [
                        {"text": "what is this"},
                        {"inlineData": {"mimeType": "image/png", "data": image}},
                    ],
                },
            ],
            "generationConfig": {
                "temperature": 0.5,
                "topP": 0.9,
                "topK": 20,
                "maxOutputTokens": 3,
                "stopSequences": ["END"],
                "seed": 11,
                "candidateCount": 2,
            },
        }
    )

    async def go() -> Any:
        await backend.start()
        try:
            return await backend.generate([req])
        finally:
            await backend.close()

    (result,) = asyncio.run(go())
    sent = upstream.last_request
    assert sent is not None and sent.path == "/v1/chat/completions"
    body = sent.body
    assert body["model"] == "served-name"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1] == {"role": "user", "content": "Hi"}
    assert body["messages"][2] == {"role": "assistant", "content": "Hello."}
    assert body["messages"][3]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
    ]
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "stop")} == {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "max_tokens": 3,
        "stop": ["END"],
    }
    assert (body["seed"], body["n"]) == (11, 2)
    assert "response_format" not in body
    wire = result.to_wire("r1")
    assert [c["finishReason"] for c in wire["candidates"]] == ["MAX_TOKENS", "MAX_TOKENS"]
    assert wire["candidates"][0]["content"]["parts"][0]["text"] == "echo: what is"
    assert wire["usageMetadata"]["candidatesTokenCount"] == 6
    assert wire["usageMetadata"]["promptTokenCount"] > 0
    assert wire["modelVersion"] == "served-name"


def test_openai_default_max_tokens_and_json_mode(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(
        "up", ModelSettings(backend="openai", base_url=f"{upstream.url}/v1", max_output_tokens=77)
    )
    free = GenerateRequest.model_validate(request("one two"))
    json_mode = GenerateRequest.model_validate(
        request("give json", responseMimeType="application/json")
    )
    enum = GenerateRequest.model_validate(
        request(
            "label it",
            responseMimeType="text/x.enum",
            responseSchema={"type": "STRING", "enum": ["good", "bad"]},
        )
    )

    async def go() -> list[Any]:
        await backend.start()
        try:
            return await backend.generate([free, json_mode, enum])
        finally:
            await backend.close()

    results = asyncio.run(go())
    bodies = {r.body["messages"][-1]["content"]: r.body for r in upstream.requests()}
    assert bodies["one two"]["max_tokens"] == 77
    assert "response_format" not in bodies["one two"]
    assert bodies["give json"]["response_format"] == {"type": "json_object"}
    fmt = bodies["label it"]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"]["enum"] == ["good", "bad"]
    assert results[0].candidates[0].text == "echo: one two"
    assert results[2].candidates[0].text in ("good", "bad")  # unquoted


def test_openai_embeddings_are_packed_into_few_calls(upstream: FakeUpstream) -> None:
    upstream.configure(embedding_dimensions=16)
    backend = OpenAIBackend(
        "up",
        ModelSettings(
            backend="openai", base_url=f"{upstream.url}/v1", options={"embed_batch_size": 4}
        ),
    )
    reqs = [
        EmbedRequest.model_validate(
            {"content": {"parts": [{"text": f"text number {i}"}]}, "outputDimensionality": d}
        )
        for i, d in enumerate([None] * 7 + [4] * 3)
    ]

    async def go() -> list[Any]:
        await backend.start()
        try:
            return await backend.embed(reqs)
        finally:
            await backend.close()

    results = asyncio.run(go())
    assert [len(r.values) for r in results] == [16] * 7 + [4] * 3
    assert upstream.stats().by_endpoint == {"embeddings": 3}  # 4 + 3 inputs, then 3
    assert sum(r.token_count for r in results) > 0
    # Same text, same vector: results come back in request order.
    assert results[0].values != results[1].values


def test_an_upstream_refusal_fails_that_request_only(upstream: FakeUpstream) -> None:
    upstream.configure(max_embedding_inputs=2)
    backend = OpenAIBackend(
        "up",
        ModelSettings(
            backend="openai", base_url=f"{upstream.url}/v1", options={"embed_batch_size": 3}
        ),
    )
    reqs = [
        EmbedRequest.model_validate({"content": {"parts": [{"text": f"t{i}"}]}}) for i in range(4)
    ]

    async def go() -> list[Any]:
        await backend.start()
        try:
            return await backend.embed(reqs)
        finally:
            await backend.close()

    results = asyncio.run(go())
    assert all(isinstance(r, RequestRejected) for r in results[:3])
    assert "HTTP 400" in results[0].message and results[0].status == "INVALID_ARGUMENT"
    assert len(results[3].values) == 8
    assert upstream.stats().requests == 2  # a 400 is not retried


def test_a_bad_key_fails_the_call_and_is_never_echoed(upstream: FakeUpstream) -> None:
    upstream.configure(api_key="right-key")
    backend = GeminiBackend(
        "up",
        ModelSettings(
            backend="gemini", base_url=upstream.url, api_key_env="TEST_GEMINI_KEY", model="g"
        ),
    )

    async def go(key: str) -> Any:
        backend.session.start({"TEST_GEMINI_KEY": key})
        try:
            return await backend.generate([GenerateRequest.model_validate(request("hi"))])
        finally:
            await backend.close()

    with pytest.raises(BackendUnavailable) as info:
        asyncio.run(go("wrong-secret-key"))
    assert "403" in info.value.message and "api_key" in info.value.message
    assert "wrong-secret-key" not in info.value.message
    (result,) = asyncio.run(go("right-key"))
    assert result.candidates[0].text == "echo: hi"

    missing = GeminiBackend(
        "up", ModelSettings(backend="gemini", base_url=upstream.url, api_key_env="NOPE_UNSET")
    )
    with pytest.raises(BackendUnavailable, match="NOPE_UNSET"):
        missing.session.start({})


def test_gemini_passes_requests_and_answers_through(upstream: FakeUpstream) -> None:
    backend = GeminiBackend(
        "up",
        ModelSettings(
            backend="gemini",
            base_url=upstream.url,
            model="models/gemini-test",
            options={"embed_batch_size": 2},
        ),
    )
    req = GenerateRequest.model_validate(
        {
            "contents": [{"role": "user", "parts": [{"text": "pass me through"}]}],
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "generationConfig": {"maxOutputTokens": 2, "responseLogprobs": False},
        }
    )
    embeds = [
        EmbedRequest.model_validate(
            {"content": {"parts": [{"text": f"e{i}"}]}, "taskType": "RETRIEVAL_DOCUMENT"}
        )
        for i in range(3)
    ]

    async def go() -> tuple[Any, Any, Any]:
        await backend.start()
        try:
            return (
                await backend.generate([req]),
                await backend.embed(embeds),
                await backend.count_tokens([req]),
            )
        finally:
            await backend.close()

    (result,), vectors, counts = asyncio.run(go())
    generate_call = next(r for r in upstream.requests() if r.path.endswith(":generateContent"))
    assert generate_call.path == "/v1beta/models/gemini-test:generateContent"
    assert generate_call.body["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    assert generate_call.body["generationConfig"] == {
        "maxOutputTokens": 2,
        "responseLogprobs": False,
    }
    wire = result.to_wire("mine")
    assert wire["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert wire["candidates"][0]["content"]["parts"][0]["text"] == "echo: pass"
    assert wire["usageMetadata"]["candidatesTokenCount"] == 2
    assert result.candidates_tokens == 2 and result.prompt_tokens > 0
    assert upstream.stats().by_endpoint["batchEmbedContents"] == 2
    batch_call = next(r for r in upstream.requests() if r.path.endswith(":batchEmbedContents"))
    assert batch_call.body["requests"][0]["model"] == "models/gemini-test"
    assert batch_call.body["requests"][0]["taskType"] == "RETRIEVAL_DOCUMENT"
    assert len(vectors) == 3 and all(len(v.values) == 8 for v in vectors)
    assert counts == [3]


# ------------------------------------------------------------------ batches


def test_chaos_batch_every_key_once_and_no_rate_limit_violations(tmp_path: Path) -> None:
    """2,000 requests; 20% of calls answer 429/5xx and 2% reset; rpm enforced.

    The fake counts arrivals over 10 s windows (500 per window for 3,000 a minute), so
    the limit binds well within the test. Arrivals may bunch by up to half a second on a
    loaded two-core machine (the client's and the fake's loops both lag), so the window
    has that much slack; a pacer that overran the rate would still break it.
    """
    rpm = 3000
    with FakeUpstream(
        latency_s=0.005,
        error_rates={429: 0.10, 500: 0.05, 503: 0.05},
        reset_rate=0.02,
        requests_per_minute=rpm,
        window_s=10,
        limit_tolerance_s=0.5,
        seed=3,
    ) as up:

        async def go() -> tuple[Any, list[dict[str, Any]]]:
            svc = await services(
                tmp_path,
                {
                    "backend": "openai",
                    "base_url": f"{up.url}/v1",
                    "max_concurrency": 16,
                    "requests_per_minute": rpm,
                    "max_attempts": 4,
                    "retry_base_s": 0.05,
                    "retry_max_s": 0.5,
                    "timeout_s": 10,
                },
                shard_size=250,
            )
            src = write_jsonl(
                tmp_path / "in.jsonl",
                ({"key": f"k{i}", "request": request(f"item {i}")} for i in range(2000)),
            )
            batch = await drive(svc, await submit(svc, src), workers=1, timeout=240)
            lines = await output_lines(svc, batch)
            await svc.close()
            return batch, lines

        started = time.monotonic()
        batch, lines = asyncio.run(go())
        elapsed = time.monotonic() - started
        stats = up.stats()

    assert [line["key"] for line in lines] == [f"k{i}" for i in range(2000)]
    failed = [line for line in lines if "error" in line]
    for line in lines:
        if "response" in line:
            assert text_of(line) == f"echo: item {line['key'][1:]}"
    for line in failed:
        assert re.search(
            r"failed the chat completion on all 4 attempts: (HTTP (429|500|503)|connection failed)",
            line["error"]["message"],
        ), line
        assert line["error"]["status"] in ("RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE")
    assert batch.state is BatchState.SUCCEEDED
    assert (batch.succeeded_count, batch.failed_count) == (2000 - len(failed), len(failed))
    assert len(failed) < 40  # 22% per try, 4 tries: about 0.2% exhaust
    assert stats.violations == {}, stats
    assert stats.by_status[200] == 2000 - len(failed)  # each success answered exactly once
    assert stats.resets > 10 and stats.by_status[429] > 100
    # The pacing really bound: ~2,500 calls at 50 a second take over 40 s.
    assert stats.requests > 2300 and elapsed > 40


def test_without_pacing_the_enforcer_does_count_violations(tmp_path: Path) -> None:
    """The control for the test above: the enforcer is not blind."""
    with FakeUpstream(requests_per_minute=600, window_s=10, seed=3) as up:

        async def go() -> Any:
            svc = await services(
                tmp_path,
                {"backend": "openai", "base_url": f"{up.url}/v1", "max_attempts": 1},
            )
            src = write_jsonl(
                tmp_path / "in.jsonl",
                ({"key": f"k{i}", "request": request(f"x {i}")} for i in range(300)),
            )
            batch = await drive(svc, await submit(svc, src), timeout=60)
            await svc.close()
            return batch

        batch = asyncio.run(go())
        assert up.stats().violations["requests_per_minute"] == 200
    assert batch.failed_count == 200


def test_an_upstream_down_for_30_s_delays_the_batch_without_failures(tmp_path: Path) -> None:
    with FakeUpstream(latency_s=0.05, seed=1) as up:

        async def go() -> tuple[Any, Any, int, float]:
            svc = await services(
                tmp_path,
                {
                    "backend": "openai",
                    "base_url": f"{up.url}/v1",
                    "max_concurrency": 4,
                    "max_attempts": 3,
                    "retry_base_s": 0.05,
                    "circuit_failures": 3,
                    "circuit_cooldown_s": 1,
                    # Shorter than the outage: shards are given back and taken again.
                    "circuit_wait_s": 10,
                },
                shard_size=50,
                poll_seconds=0.2,
            )
            src = write_jsonl(
                tmp_path / "in.jsonl",
                ({"key": f"k{i}", "request": request(f"q {i}")} for i in range(400)),
            )
            batch_id = await submit(svc, src)
            runner = asyncio.create_task(drive(svc, batch_id, workers=1, timeout=120))
            while up.stats().requests < 100:
                await asyncio.sleep(0.05)
            up.down_for(30)
            down_at = time.monotonic()
            batch = await runner
            lines = await output_lines(svc, batch)
            backend = await svc.pool.get("up")
            opened = backend.session.traffic.circuit.opened  # type: ignore[attr-defined]
            await svc.close()
            return batch, lines, opened, time.monotonic() - down_at

        batch, lines, opened, after_down = asyncio.run(go())

    assert batch.state is BatchState.SUCCEEDED
    assert (batch.succeeded_count, batch.failed_count) == (400, 0)
    assert [line["key"] for line in lines] == [f"k{i}" for i in range(400)]
    assert after_down > 30  # the outage really landed mid-batch
    assert opened >= 1


def test_tokens_per_minute_is_never_exceeded(tmp_path: Path) -> None:
    """Token estimates (characters / 4 + the output budget) pace the calls; the fake
    counts words plus max_tokens over 5 s windows (3,000 tokens for 36,000 a minute)."""
    tpm = 36_000
    with FakeUpstream(tokens_per_minute=tpm, window_s=5, seed=5) as up:

        async def go() -> Any:
            svc = await services(
                tmp_path,
                {
                    "backend": "openai",
                    "base_url": f"{up.url}/v1",
                    "tokens_per_minute": tpm,
                    "max_attempts": 1,
                },
            )
            src = write_jsonl(
                tmp_path / "in.jsonl",
                (
                    {
                        "key": f"k{i}",
                        "request": request("please summarize " * (i % 7 + 1), maxOutputTokens=40),
                    }
                    for i in range(150)
                ),
            )
            batch = await drive(svc, await submit(svc, src), timeout=120)
            await svc.close()
            return batch

        started = time.monotonic()
        batch = asyncio.run(go())
        elapsed = time.monotonic() - started
        stats = up.stats()
    assert stats.violations == {}, stats
    assert (batch.succeeded_count, batch.failed_count) == (150, 0)
    assert elapsed > 8  # ~7,000 tokens at 600 a second: the limit bound


def test_retry_after_is_honoured(upstream: FakeUpstream) -> None:
    """Every first try gets 429 with Retry-After: 1; the tiny backoff is not used."""
    upstream.configure(error_rates={429: 1.0}, retry_after_s=1)
    backend = OpenAIBackend(
        "up",
        ModelSettings(
            backend="openai", base_url=f"{upstream.url}/v1", retry_base_s=0.01, max_attempts=3
        ),
    )

    async def go() -> list[Any]:
        await backend.start()
        try:
            first = asyncio.create_task(
                backend.generate([GenerateRequest.model_validate(request("wait"))])
            )
            await asyncio.sleep(0.5)
            upstream.configure(error_rates={})  # the retry, a second later, succeeds
            return await first
        finally:
            await backend.close()

    started = time.monotonic()
    (result,) = asyncio.run(go())
    assert result.candidates[0].text == "echo: wait"
    assert time.monotonic() - started >= 1.0
    assert upstream.stats().by_status == {429: 1, 200: 1}
