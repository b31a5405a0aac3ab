"""The fake upstream itself, over real HTTP on loopback (httpx as the client)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from overnight.testing import FakeUpstream, UpstreamConfig, UpstreamStats
from overnight.testing.upstream import main, minimal_instance


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def chat(text: str, **fields: Any) -> dict[str, Any]:
    return {"model": "m1", "messages": [{"role": "user", "content": text}], **fields}


def gemini(text: str, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return body


# ------------------------------------------------------------------ OpenAI replies


def test_chat_echoes_the_last_user_turn(up: FakeUpstream) -> None:
    body = {
        "model": "m1",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "in this picture"},
                ],
            },
        ],
        "temperature": 0.5,
        "seed": 3,
    }
    r = httpx.post(f"{up.url}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["object"] == "chat.completion"
    assert reply["model"] == "m1"
    (choice,) = reply["choices"]
    assert choice["message"] == {"role": "assistant", "content": "echo: what is in this picture"}
    assert choice["finish_reason"] == "stop"
    # prompt: "be brief" + "first question" + "an answer" + "what is in this picture"
    assert reply["usage"] == {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}
    recorded = up.last_request
    assert recorded is not None
    assert recorded.path == "/v1/chat/completions" and recorded.model == "m1"
    assert recorded.body == body


def test_chat_max_tokens_stop_and_n(up: FakeUpstream) -> None:
    url = f"{up.url}/v1/chat/completions"
    cut = httpx.post(url, json=chat("one two three four five", max_tokens=3)).json()
    assert cut["choices"][0]["message"]["content"] == "echo: one two"
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 3
    new_name = httpx.post(url, json=chat("a b c d", max_completion_tokens=2)).json()
    assert new_name["choices"][0]["finish_reason"] == "length"
    stopped = httpx.post(url, json=chat("alpha beta gamma", stop=["gamma"])).json()
    assert stopped["choices"][0]["message"]["content"] == "echo: alpha beta "
    assert stopped["choices"][0]["finish_reason"] == "stop"
    many = httpx.post(url, json=chat("hi", n=3)).json()
    assert [c["message"]["content"] for c in many["choices"]] == [
        "echo: hi",
        "echo 1: hi",
        "echo 2: hi",
    ]
    bad = httpx.post(url, json=chat("hi", max_tokens=0))
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in bad.json()["error"]["message"]


def test_chat_response_format(up: FakeUpstream) -> None:
    url = f"{up.url}/v1/chat/completions"
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2},
            "age": {"type": "integer", "minimum": 18},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1},
            "note": {"type": "string"},
        },
        "required": ["name", "age", "tags"],
        "$defs": {"tag": {"enum": ["x", "y"]}},
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    reply = httpx.post(url, json=chat("who", response_format=fmt)).json()
    assert json.loads(reply["choices"][0]["message"]["content"]) == {
        "name": "aa",
        "age": 18,
        "tags": ["x"],
    }
    mode = httpx.post(url, json=chat("who", response_format={"type": "json_object"})).json()
    assert json.loads(mode["choices"][0]["message"]["content"]) == {}


def test_minimal_instance_of_gemini_style_schema() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {"ok": {"type": "BOOLEAN"}, "n": {"type": ["null", "number"]}},
        "required": ["ok", "n"],
    }
    assert minimal_instance(schema) == {"ok": False, "n": 0}
    assert minimal_instance({"anyOf": [{"type": "string", "format": "date"}]}) == "2000-01-01"


def test_embeddings_are_deterministic_unit_vectors(up: FakeUpstream) -> None:
    url = f"{up.url}/v1/embeddings"
    one = httpx.post(url, json={"model": "e", "input": "hello world"}).json()
    (item,) = one["data"]
    assert len(item["embedding"]) == 8
    assert math.isclose(sum(v * v for v in item["embedding"]), 1.0)
    assert one["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    many = httpx.post(url, json={"model": "e", "input": ["hello world", "bye"], "dimensions": 4})
    data = many.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert len(data[0]["embedding"]) == 4
    again = httpx.post(url, json={"model": "e", "input": ["hello world"]}).json()
    assert again["data"][0]["embedding"] == item["embedding"]
    up.configure(max_embedding_inputs=1)
    too_many = httpx.post(url, json={"model": "e", "input": ["a", "b"]})
    assert too_many.status_code == 400
    assert "at most 1" in too_many.json()["error"]["message"]


def test_models_listing_and_unknown_models() -> None:
    with FakeUpstream(models=("m1", "m2")) as up:
        listed = httpx.get(f"{up.url}/v1/models").json()
        assert [m["id"] for m in listed["data"]] == ["m1", "m2"]
        missing = httpx.post(f"{up.url}/v1/chat/completions", json={**chat("x"), "model": "m3"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"


# ------------------------------------------------------------------ Gemini replies


def test_gemini_generate_content(up: FakeUpstream) -> None:
    for version in ("v1beta", "v1"):
        url = f"{up.url}/{version}/models/gem-1:generateContent"
        reply = httpx.post(url, json=gemini("one two three", maxOutputTokens=2)).json()
        (candidate,) = reply["candidates"]
        assert candidate["content"] == {"role": "model", "parts": [{"text": "echo: one"}]}
        assert candidate["finishReason"] == "MAX_TOKENS"
        assert reply["modelVersion"] == "gem-1"
        assert reply["usageMetadata"] == {
            "promptTokenCount": 3,
            "candidatesTokenCount": 2,
            "totalTokenCount": 5,
        }
    url = f"{up.url}/v1beta/models/gem-1:generateContent"
    two = httpx.post(url, json=gemini("hi", candidateCount=2)).json()
    assert [c["finishReason"] for c in two["candidates"]] == ["STOP", "STOP"]
    schema = {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "required": ["a"]}
    structured = httpx.post(
        url, json=gemini("hi", responseMimeType="application/json", responseSchema=schema)
    ).json()
    assert json.loads(structured["candidates"][0]["content"]["parts"][0]["text"]) == {"a": ""}
    assert up.stats().by_model == {"gem-1": 4}


def test_gemini_embeddings_and_count_tokens(up: FakeUpstream) -> None:
    base = f"{up.url}/v1beta/models/emb"
    content = {"parts": [{"text": "hello world"}]}
    one = httpx.post(f"{base}:embedContent", json={"content": content}).json()
    assert len(one["embedding"]["values"]) == 8
    batch = httpx.post(
        f"{base}:batchEmbedContents",
        json={
            "requests": [
                {"model": "models/emb", "content": content},
                {"model": "models/emb", "content": content, "outputDimensionality": 3},
            ]
        },
    ).json()
    assert batch["embeddings"][0]["values"] == one["embedding"]["values"]
    assert len(batch["embeddings"][1]["values"]) == 3
    count = httpx.post(f"{base}:countTokens", json=gemini("a b c")).json()
    assert count == {"totalTokens": 3}


def test_api_key_checks() -> None:
    with FakeUpstream(api_key="sekret") as up:
        url = f"{up.url}/v1beta/models/g:generateContent"
        missing = httpx.post(url, json=gemini("x"))
        assert missing.status_code == 401
        assert missing.json()["error"]["status"] == "UNAUTHENTICATED"
        wrong = httpx.post(url, json=gemini("x"), headers={"x-goog-api-key": "nope"})
        assert wrong.status_code == 403
        assert wrong.json()["error"] == {
            "code": 403,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "PERMISSION_DENIED",
        }
        assert httpx.post(url, json=gemini("x"), headers={"x-goog-api-key": "sekret"}).is_success
        assert httpx.post(url, json=gemini("x"), params={"key": "sekret"}).is_success
        openai = f"{up.url}/v1/chat/completions"
        no_bearer = httpx.post(openai, json=chat("x"))
        assert no_bearer.status_code == 401
        assert no_bearer.json()["error"]["code"] == "invalid_api_key"
        bearer = {"authorization": "Bearer sekret"}
        assert httpx.post(openai, json=chat("x"), headers=bearer).is_success


# ------------------------------------------------------------------ faults


def test_error_rates_are_honoured_with_a_seed() -> None:
    rates = {429: 0.2, 500: 0.1, 503: 0.1}

    def statuses() -> list[int]:
        with (
            FakeUpstream(error_rates=rates, seed=7) as up,
            httpx.Client(base_url=up.url) as client,
        ):
            return [
                client.post("/v1/chat/completions", json=chat("x")).status_code for _ in range(400)
            ]

    first = statuses()
    assert first == statuses()  # the same seed, the same faults
    counts = {s: first.count(s) for s in (200, 429, 500, 503)}
    assert sum(counts.values()) == 400
    assert 40 <= counts[429] <= 120 and 15 <= counts[500] <= 65 and 15 <= counts[503] <= 65


def test_error_bodies_and_retry_after() -> None:
    with FakeUpstream(error_rates={503: 1.0}, retry_after_s=2) as up:
        r = httpx.post(f"{up.url}/v1/chat/completions", json=chat("x"))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"
        assert r.headers["retry-after-ms"] == "2000"
        assert r.json()["error"]["type"] == "server_error"
        g = httpx.post(f"{up.url}/v1beta/models/g:generateContent", json=gemini("x"))
        assert g.json()["error"]["status"] == "UNAVAILABLE" and g.json()["error"]["code"] == 503
        up.configure(error_rates={500: 1.0}, retry_after_s=0.5)
        r = httpx.post(f"{up.url}/v1/chat/completions", json=chat("x"))
        assert r.status_code == 500 and "retry-after" not in r.headers
        up.configure(error_rates={429: 1.0})
        assert (
            httpx.post(f"{up.url}/v1/embeddings", json={"model": "e", "input": "x"}).headers[
                "retry-after"
            ]
            == "0.5"
        )
        assert up.stats().by_status == {503: 2, 500: 1, 429: 1}


def test_resets_raise_a_connection_error() -> None:
    with FakeUpstream(reset_rate=1.0) as up, httpx.Client(base_url=up.url) as client:
        with pytest.raises(httpx.TransportError) as info:
            client.post("/v1/chat/completions", json=chat("x"))
        assert isinstance(info.value, httpx.ReadError | httpx.RemoteProtocolError)
        assert up.stats().resets == 1
        up.configure(reset_rate=0.0)
        assert client.post("/v1/chat/completions", json=chat("x")).status_code == 200


def test_keep_alive_reuses_one_connection(up: FakeUpstream) -> None:
    ports = set()
    with httpx.Client(base_url=up.url) as client:
        for _ in range(5):
            r = client.post("/v1/chat/completions", json=chat("x"))
            stream = r.extensions["network_stream"]
            ports.add(stream.get_extra_info("client_addr")[1])
    assert len(ports) == 1


def test_latency_and_down_then_up() -> None:
    with FakeUpstream(latency_s=0.1) as up, httpx.Client(base_url=up.url) as client:
        started = time.monotonic()
        assert client.post("/v1/chat/completions", json=chat("x")).status_code == 200
        assert time.monotonic() - started >= 0.1
        up.configure(latency_s=0.0)
        up.set_down(True)
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{up.url}/v1/chat/completions", json=chat("x"))
        assert httpx.get(f"{up.control_url}/_fake/health").json() == {"ok": True, "down": True}
        up.set_down(False)
        assert httpx.post(f"{up.url}/v1/chat/completions", json=chat("x")).status_code == 200
        up.down_for(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{up.url}/v1/chat/completions", json=chat("x"))
        time.sleep(0.5)
        assert httpx.post(f"{up.url}/v1/chat/completions", json=chat("x")).status_code == 200


# ------------------------------------------------------------------ limits and stats


def test_requests_per_minute_enforcer_counts_violations() -> None:
    with FakeUpstream(requests_per_minute=5) as up, httpx.Client(base_url=up.url) as client:
        codes = [client.post("/v1/chat/completions", json=chat("x")).status_code for _ in range(8)]
        assert codes == [200] * 5 + [429] * 3
        stats = up.stats()
        assert stats.violations == {"requests_per_minute": 3}
        assert stats.requests == 8 and stats.by_status == {200: 5, 429: 3}
        body = client.post("/v1/chat/completions", json=chat("x")).json()
        assert "requests_per_minute" in body["error"]["message"]


def test_tokens_per_minute_counts_prompt_words_and_max_tokens() -> None:
    with FakeUpstream(tokens_per_minute=20) as up, httpx.Client(base_url=up.url) as client:
        # 2 prompt words + 8 max tokens = 10 tokens each: two fit, the third does not
        codes = [
            client.post("/v1/chat/completions", json=chat("a b", max_tokens=8)).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        assert up.stats().violations == {"tokens_per_minute": 1}


def test_max_concurrency_and_max_in_flight() -> None:
    async def burst(url: str, count: int) -> list[int]:
        async with httpx.AsyncClient(base_url=url) as client:
            replies = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=chat("x")) for _ in range(count))
            )
        return [r.status_code for r in replies]

    with FakeUpstream(latency_s=0.2, max_concurrency=4) as up:
        codes = asyncio.run(burst(up.url, 6))
        assert sorted(codes) == [200] * 4 + [429] * 2
        stats = up.stats()
        assert stats.violations == {"max_concurrency": 2}
        assert stats.max_in_flight == 4 and stats.in_flight == 0
        up.reset_stats()
        up.configure(max_concurrency=None)
        assert asyncio.run(burst(up.url, 6)) == [200] * 6
        assert up.stats().max_in_flight == 6


def test_window_tolerance_forgives_timer_slop() -> None:
    config = UpstreamConfig(requests_per_minute=1, limit_tolerance_s=0.05)
    from overnight.testing.upstream import _Limiter

    limiter = _Limiter()
    assert limiter.admit(config, 100.0, 0, 0) is None
    assert limiter.admit(config, 159.96, 0, 0) is None  # 40 ms early: forgiven
    assert limiter.admit(config, 200.0, 0, 0) == "requests_per_minute"  # 40 s after the last


def test_stats_and_config_over_http(up: FakeUpstream) -> None:
    httpx.post(f"{up.url}/v1/chat/completions", json=chat("x"))
    httpx.post(f"{up.url}/v1beta/models/g:countTokens", json=gemini("x"))
    stats = UpstreamStats.from_json(httpx.get(f"{up.control_url}/_fake/stats").json())
    assert stats.requests == 2
    assert stats.by_endpoint == {"chat.completions": 1, "countTokens": 1}
    assert stats.by_status == {200: 2}
    changed = httpx.post(
        f"{up.url}/_fake/config", json={"error_rates": {"500": 1.0}, "latency_s": 0.01}
    )
    assert changed.json()["config"]["error_rates"] == {"500": 1.0}
    assert up.config.error_rates == {500: 1.0}
    assert httpx.post(f"{up.url}/v1/chat/completions", json=chat("x")).status_code == 500
    bad = httpx.post(f"{up.url}/_fake/config", json={"latency": 1})
    assert bad.status_code == 400 and "latency_s" in bad.json()["error"]["message"]
    recorded = httpx.get(f"{up.url}/_fake/requests").json()
    assert [r["path"] for r in recorded][-1] == "/v1/chat/completions"
    httpx.post(f"{up.url}/_fake/reset")
    assert up.stats() == UpstreamStats()


def test_bad_options_name_the_problem() -> None:
    with pytest.raises(TypeError, match="latency_s"):
        FakeUpstream(latency=0.1)
    with pytest.raises(ValueError, match="add up to"):
        UpstreamConfig(error_rates={429: 0.7, 500: 0.5})
    with pytest.raises(ValueError, match="not an HTTP error status"):
        UpstreamConfig(error_rates={200: 0.1})
    with pytest.raises(SystemExit, match="error_rates"):
        main(["--error-rate", "429=2"])


# ------------------------------------------------------------------ a separate process


def test_spawned_process_is_driven_over_its_control_port() -> None:
    with FakeUpstream.spawn(error_rates={500: 1.0}, seed=1) as up:
        assert httpx.post(f"{up.url}/v1/chat/completions", json=chat("x")).status_code == 500
        up.configure(error_rates={})
        assert httpx.post(f"{up.url}/v1/chat/completions", json=chat("x")).status_code == 200
        assert up.stats().by_status == {500: 1, 200: 1}
        assert up.requests()[-1].model == "m1"
        up.set_down(True)
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{up.url}/v1/chat/completions", json=chat("x"))
        up.set_down(False)
        assert httpx.post(f"{up.url}/v1/chat/completions", json=chat("x")).status_code == 200


def test_bucket_mode_allows_a_burst_then_the_steady_rate() -> None:
    from overnight.testing.upstream import _Limiter

    config = UpstreamConfig(requests_per_minute=2, tokens_per_minute=100, limit_mode="bucket")
    limiter = _Limiter()
    assert limiter.admit(config, 0.0, 50, 0) is None
    assert limiter.admit(config, 0.0, 50, 0) is None  # the burst: the bucket starts full
    assert limiter.admit(config, 1.0, 1, 0) == "requests_per_minute"
    assert limiter.admit(config, 30.0, 60, 0) == "tokens_per_minute"  # 50 tokens refilled
    assert limiter.admit(config, 30.0, 50, 0) is None  # one request refilled by 30 s
    with pytest.raises(ValueError, match="limit_mode"):
        UpstreamConfig(limit_mode="leaky")
