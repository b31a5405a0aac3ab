"""The engine end to end on the fake backend, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.conftest import fake_settings
from tests.helpers import drive, output_lines, request, write_jsonl

from overnight.app import Runtime, build_runtime
from overnight.domain.batches import BatchKind, BatchState
from overnight.domain.requests import GenerateRequest
from overnight.errors import RetryableError


async def services(tmp_path: Path, database_url: str, **engine: object) -> Runtime:
    return await build_runtime(fake_settings(tmp_path, database_url, **engine))


async def submit(
    runtime: Runtime, path: Path, model: str = "echo", kind: BatchKind = BatchKind.GENERATE
):
    file = await runtime.services.files.import_path("t", path)
    return await runtime.services.batches.create_from_file(
        "t", model=model, kind=kind, file_id=file.id
    )


def test_batch_runs_in_input_order_with_counters(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url, shard_size=7)
        src = write_jsonl(
            tmp_path / "in.jsonl",
            ({"key": f"k{i}", "request": request("word " * (i % 5 + 1))} for i in range(50)),
        )
        finalized: list[str] = []
        created = await submit(runtime, src)
        batch = await drive(runtime, created.id, workers=2, on_finalized=finalized.append)
        assert batch.state is BatchState.SUCCEEDED
        assert finalized == [created.id]  # `overnight run` waits on this, not on polling
        assert (batch.request_count, batch.succeeded_count, batch.failed_count) == (50, 50, 0)
        lines = await output_lines(runtime, batch)
        assert [line["key"] for line in lines] == [f"k{i}" for i in range(50)]
        assert (
            lines[3]["response"]["candidates"][0]["content"]["parts"][0]["text"]
            == "echo: word word word word"
        )
        usage = sum(line["response"]["usageMetadata"]["totalTokenCount"] for line in lines)
        assert usage == batch.usage.total_tokens > 0
        assert len(await runtime.store.queue.list_shards(batch.id)) == 8
        await runtime.close()

    asyncio.run(go())


def test_malformed_lines_become_error_lines(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url, shard_size=3)
        src = write_jsonl(
            tmp_path / "in.jsonl",
            [
                {"key": "ok-1", "request": request("hello")},
                "{not json",
                {"key": "no-request"},
                {"key": "bad-type", "request": {"contents": [{"parts": [{"text": 42}]}]}},
                {"key": 7, "request": request("numeric key")},
                "",
                {
                    "key": "typo",
                    "request": {"contents": [{"parts": [{"text": "x"}]}], "generation_cfg": {}},
                },
                {"request": request("no key at all")},
                {"key": "bad-temp", "request": request("x", temperature="hot")},
                '["a list"]',
                {"key": "ok-2", "request": request("world")},
            ],
        )
        batch = await drive(runtime, (await submit(runtime, src)).id)
        assert batch.state is BatchState.SUCCEEDED
        lines = {line["key"]: line for line in await output_lines(runtime, batch)}
        assert (batch.request_count, batch.succeeded_count, batch.failed_count) == (10, 3, 7)
        assert "response" in lines["ok-1"] and "response" in lines["ok-2"]
        assert "response" in lines["line:8"]  # a valid line without a key
        errors = {k: v["error"]["message"] for k, v in lines.items() if "error" in v}
        assert errors["line:2"].startswith("line 2: invalid JSON")
        assert (
            errors["no-request"]
            == 'line 3: missing \'request\' (each line is {"key": ..., "request": {...}})'
        )
        assert "request.contents[0].parts[0].text" in errors["bad-type"]
        assert errors["line:5"] == "line 5: 'key' must be a string, got int"
        assert "generation_cfg" in errors["typo"] and errors["typo"].startswith("line 7")
        assert (
            "generationConfig.temperature" in errors["bad-temp"] and "line 9" in errors["bad-temp"]
        )
        assert errors["line:10"] == "line 10: expected a JSON object, got list"
        assert all(
            v["error"]["status"] == "INVALID_ARGUMENT" for v in lines.values() if "error" in v
        )
        assert all(v["error"]["code"] == 3 for v in lines.values() if "error" in v)
        await runtime.close()

    asyncio.run(go())


def test_input_without_a_valid_line_fails_at_admission(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url)
        src = write_jsonl(tmp_path / "in.jsonl", ["nope", '{"key": "x"}'])
        batch = await drive(runtime, (await submit(runtime, src)).id)
        assert batch.state is BatchState.FAILED
        assert batch.error is not None and "no valid request line" in batch.error
        assert "line 1: invalid JSON" in batch.error
        await runtime.close()

    asyncio.run(go())


def test_unsupported_features_are_rejected_per_request(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url)
        image = {"inlineData": {"mimeType": "image/png", "data": "__79Pz4="}}
        src = write_jsonl(
            tmp_path / "in.jsonl",
            [
                {"key": "image", "request": {"contents": [{"parts": [{"text": "what?"}, image]}]}},
                {"key": "tools", "request": {**request("x"), "tools": [{"codeExecution": {}}]}},
                {"key": "schema", "request": request("x", responseSchema={"type": "STRING"})},
                {"key": "many", "request": request("x", candidateCount=9)},
                {"key": "penalty", "request": request("x", presencePenalty=0.5)},
                {
                    "key": "safety",
                    "request": {
                        **request("fine"),
                        "safetySettings": [
                            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}
                        ],
                    },
                },
            ],
        )
        batch = await drive(runtime, (await submit(runtime, src)).id)
        lines = {line["key"]: line for line in await output_lines(runtime, batch)}
        msg = {k: v["error"]["message"] for k, v in lines.items() if "error" in v}
        assert "contents[0].parts[1].inlineData" in msg["image"]
        assert "tools" in msg["tools"]
        # The fake honours schemas; this one fails only for lack of a JSON mime type.
        assert "generationConfig.responseSchema" in msg["schema"]
        assert "responseMimeType" in msg["schema"]
        assert "generationConfig.candidateCount" in msg["many"]
        assert "generationConfig.presencePenalty" in msg["penalty"]
        assert "response" in lines["safety"]  # accepted, documented as not applied
        await runtime.close()

    asyncio.run(go())


def test_generation_config_reaches_the_backend(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url)
        src = write_jsonl(
            tmp_path / "in.jsonl",
            [
                {"key": "short", "request": request("a b c d e f", maxOutputTokens=3)},
                {"key": "stop", "request": request("alpha beta gamma", stopSequences=["gamma"])},
                {"key": "two", "request": request("hi", candidateCount=2, topK=40.0)},
            ],
        )
        batch = await drive(runtime, (await submit(runtime, src)).id)
        lines = {line["key"]: line["response"] for line in await output_lines(runtime, batch)}
        assert lines["short"]["candidates"][0]["finishReason"] == "MAX_TOKENS"
        assert lines["short"]["candidates"][0]["content"]["parts"][0]["text"] == "echo: a b"
        assert lines["stop"]["candidates"][0]["content"]["parts"][0]["text"] == "echo: alpha beta "
        assert len(lines["two"]["candidates"]) == 2
        await runtime.close()

    asyncio.run(go())


def test_cancel_keeps_finished_shards_as_partial_results(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        settings = fake_settings(tmp_path, database_url, shard_size=5)
        settings.models["slow"] = settings.models["echo"].model_copy(
            update={"options": {"latency_s": 0.05, "max_batch_size": 5}}
        )
        runtime = await build_runtime(settings)
        src = write_jsonl(
            tmp_path / "in.jsonl",
            ({"key": f"k{i}", "request": request(f"n {i}")} for i in range(200)),
        )
        created = await submit(runtime, src, model="slow")
        runner = asyncio.create_task(drive(runtime, created.id))
        while (await runtime.services.batches.get(None, created.id)).succeeded_count < 10:
            await asyncio.sleep(0.01)
        await runtime.services.batches.cancel("t", created.id)
        batch = await runner
        assert batch.state is BatchState.CANCELLED
        lines = await output_lines(runtime, batch)
        keys = [line["key"] for line in lines]
        assert 10 <= len(keys) < 200
        assert len(keys) == len(set(keys)) == batch.succeeded_count
        assert keys == sorted(keys, key=lambda k: int(k[1:]))  # input order
        await runtime.close()

    asyncio.run(go())


def test_overdue_batch_expires(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url)
        src = write_jsonl(tmp_path / "in.jsonl", [{"key": "a", "request": request("x")}])
        created = await submit(runtime, src)
        later = time.time() + 49 * 3600  # past the default 48 h deadline
        batch = await drive(runtime, created.id, clock=lambda: later)
        assert batch.state is BatchState.EXPIRED
        assert batch.error == "the batch did not finish before its deadline"
        await runtime.close()

    asyncio.run(go())


def test_expired_lease_is_recovered_and_counted_once(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url, shard_size=4, lease_seconds=0.5)
        src = write_jsonl(
            tmp_path / "in.jsonl",
            ({"key": f"k{i}", "request": request(f"n {i}")} for i in range(20)),
        )
        created = await submit(runtime, src)
        # Admit, then a "crashed" worker (another host, so not recognisably dead) takes a shard.
        first = runtime.worker(owner="elsewhere:1:x")
        assert await first.step()  # admission
        now = time.time()
        stolen = await runtime.store.queue.lease_shard(
            "elsewhere:1:x", "ghost", now=now, lease_until=now + 0.5
        )
        assert stolen is not None
        batch = await drive(runtime, created.id, workers=2)
        assert batch.state is BatchState.SUCCEEDED
        lines = await output_lines(runtime, batch)
        assert sorted(line["key"] for line in lines) == sorted(f"k{i}" for i in range(20))
        assert batch.succeeded_count == 20
        shard = next(
            s
            for s in await runtime.store.queue.list_shards(created.id)
            if s.seq == stolen.shard.seq
        )
        assert shard.attempts == 0  # a lease lost to a crash is not a failed attempt
        await runtime.close()

    asyncio.run(go())


def test_dead_local_process_leases_are_freed_at_once(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url, lease_seconds=3600)
        src = write_jsonl(tmp_path / "in.jsonl", [{"key": "a", "request": request("x")}])
        created = await submit(runtime, src)
        assert await runtime.worker().step()  # admission
        import socket

        dead_owner = f"{socket.gethostname()}:999999:dead"  # no such pid
        now = time.time()
        assert await runtime.store.queue.lease_shard(
            dead_owner, "t", now=now, lease_until=now + 3600
        )
        batch = await drive(runtime, created.id, timeout=10)
        assert batch.state is BatchState.SUCCEEDED
        await runtime.close()

    asyncio.run(go())


def test_many_workers_answer_each_request_exactly_once(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url, shard_size=3)
        n = 300
        src = write_jsonl(
            tmp_path / "in.jsonl",
            ({"key": f"k{i}", "request": request(f"n {i}")} for i in range(n)),
        )
        batch = await drive(runtime, (await submit(runtime, src)).id, workers=4)
        keys = [line["key"] for line in await output_lines(runtime, batch)]
        assert keys == [f"k{i}" for i in range(n)]
        assert batch.succeeded_count == n
        await runtime.close()

    asyncio.run(go())


class FlakyOnce:
    """Wraps a backend; the first call raises RetryableError (a transient outage)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities  # type: ignore[attr-defined]
        self.failed = False

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[object]:
        if not self.failed:
            self.failed = True
            raise RetryableError("upstream busy")
        return await self.inner.generate(requests)  # type: ignore[attr-defined]


def test_transient_backend_failure_retries_the_shard(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        from overnight.backends.fake import FakeBackend

        runtime = await services(tmp_path, database_url)
        flaky = FlakyOnce(FakeBackend("echo"))
        runtime.pool.add("echo", flaky)  # type: ignore[arg-type]
        src = write_jsonl(tmp_path / "in.jsonl", [{"key": "a", "request": request("x")}])
        batch = await drive(runtime, (await submit(runtime, src)).id)
        assert flaky.failed and batch.state is BatchState.SUCCEEDED and batch.succeeded_count == 1
        await runtime.close()

    asyncio.run(go())


def test_embedding_batch(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url)
        src = write_jsonl(
            tmp_path / "in.jsonl",
            [
                {"key": "e1", "request": {"content": {"parts": [{"text": "a b c"}]}}},
                {
                    "key": "e2",
                    "request": {
                        "content": {"parts": [{"text": "a"}]},
                        "output_dimensionality": 4,
                        "task_type": "RETRIEVAL_DOCUMENT",
                    },
                },
                {
                    "key": "e3",
                    "request": {"content": {"parts": [{"text": "a"}]}, "taskType": "NOPE"},
                },
            ],
        )
        batch = await drive(runtime, (await submit(runtime, src, kind=BatchKind.EMBED)).id)
        lines = {line["key"]: line for line in await output_lines(runtime, batch)}
        assert len(lines["e1"]["response"]["embedding"]["values"]) == 8
        assert len(lines["e2"]["response"]["embedding"]["values"]) == 4
        assert "request.taskType" in lines["e3"]["error"]["message"]
        await runtime.close()

    asyncio.run(go())


def test_inline_batch_echoes_metadata(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url)
        created = await runtime.services.batches.create_inline(
            "t",
            model="echo",
            kind=BatchKind.GENERATE,
            requests=[
                {"request": request("one"), "metadata": {"key": "req-0"}},
                {"request": request("two")},
                {"request": {"contents": "not a list"}, "metadata": {"key": "bad"}},
            ],
        )
        batch = await drive(runtime, created.id)
        lines = await output_lines(runtime, batch)
        assert [line["key"] for line in lines] == ["0", "1", "2"]
        assert lines[0]["metadata"] == {"key": "req-0"} and "metadata" not in lines[1]
        assert "error" in lines[2] and lines[2]["metadata"] == {"key": "bad"}
        await runtime.close()

    asyncio.run(go())


def test_oversize_line_is_an_error_line_not_a_memory_spike(
    tmp_path: Path, database_url: str
) -> None:
    async def go() -> None:
        runtime = await services(tmp_path, database_url, shard_max_bytes=4096)
        big = {"key": "big", "request": request("x" * 10_000)}
        src = write_jsonl(
            tmp_path / "in.jsonl",
            [{"key": "a", "request": request("x")}, big, {"key": "b", "request": request("y")}],
        )
        batch = await drive(runtime, (await submit(runtime, src)).id)
        lines = {line["key"]: line for line in await output_lines(runtime, batch)}
        assert "response" in lines["a"] and "response" in lines["b"]
        assert "line 2" in lines["line:2"]["error"]["message"]
        assert "4096" in lines["line:2"]["error"]["message"]
        await runtime.close()

    asyncio.run(go())


@pytest.mark.parametrize("model", ["nope", "models/unknown-model"])
def test_unknown_model_is_refused_with_the_known_names(tmp_path: Path, model: str) -> None:
    async def go() -> None:
        runtime = await build_runtime(fake_settings(tmp_path))
        src = write_jsonl(tmp_path / "in.jsonl", [{"key": "a", "request": request("x")}])
        from overnight.errors import NotFound

        with pytest.raises(NotFound, match="smollm2-135m-instruct"):
            await submit(runtime, src, model=model)
        await runtime.close()

    asyncio.run(go())


class AlwaysBroken(FlakyOnce):
    """Every call fails with a non-transient backend error."""

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[object]:
        from overnight.errors import BackendError

        raise BackendError("CUDA kernel image not found")


def test_persistently_failing_backend_answers_lines_with_the_error(
    tmp_path: Path, database_url: str
) -> None:
    async def go() -> None:
        from overnight.backends.fake import FakeBackend

        runtime = await services(tmp_path, database_url, max_shard_attempts=2)
        runtime.pool.add("echo", AlwaysBroken(FakeBackend("echo")))  # type: ignore[arg-type]
        src = write_jsonl(
            tmp_path / "in.jsonl", [{"key": "a", "request": request("x")}, "{bad json"]
        )
        batch = await drive(runtime, (await submit(runtime, src)).id)
        assert batch.state is BatchState.SUCCEEDED
        assert (batch.succeeded_count, batch.failed_count) == (0, 2)
        lines = {line["key"]: line["error"] for line in await output_lines(runtime, batch)}
        assert "CUDA kernel image not found" in lines["a"]["message"]
        assert lines["a"]["status"] == "INTERNAL"
        assert "invalid JSON" in lines["line:2"]["message"]  # its own problem, not the backend's
        (shard,) = await runtime.store.queue.list_shards(batch.id)
        assert shard.attempts == 2
        await runtime.close()

    asyncio.run(go())


def test_heartbeats_keep_a_slow_shard_from_being_taken(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        # Ten heartbeats per lease: a busy CI machine may stall one or two of them.
        settings = fake_settings(tmp_path, database_url, shard_size=2, lease_seconds=1.0)
        settings.engine.heartbeat_seconds = 0.1
        settings.models["slow"] = settings.models["echo"].model_copy(
            update={"options": {"latency_s": 2.5, "max_batch_size": 2}}
        )
        runtime = await build_runtime(settings)
        src = write_jsonl(
            tmp_path / "in.jsonl",
            ({"key": f"k{i}", "request": request(f"n {i}")} for i in range(4)),
        )
        # Each call outlasts the lease 2.5 times over; only heartbeats keep it.
        batch = await drive(runtime, (await submit(runtime, src, model="slow")).id, workers=3)
        assert batch.state is BatchState.SUCCEEDED and batch.succeeded_count == 4
        # Each shard's one micro-batch ran once: no lease was lost and taken over.
        assert (await runtime.pool.get("slow")).calls == 2  # type: ignore[attr-defined]
        await runtime.close()

    asyncio.run(go())
