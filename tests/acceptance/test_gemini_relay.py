"""One Overnight runs a batch through a second Overnight with the ``gemini`` backend.

The second one is a real ``overnight serve`` subprocess on the bundled SmolLM2. The
first sends each request on as a ``generateContent`` call; the answers must match the
second one's own batch run of the same requests (greedy decoding in float32, so
batching does not move the argmax).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers import drive, output_lines, request, write_jsonl
from tests.serving import running_server

from overnight.app import build_runtime
from overnight.config import load_settings
from overnight.domain.batches import BatchKind, BatchState

pytestmark = pytest.mark.model

SERVED = """
[models.smol32]
backend = "transformers"
dtype = "float32"
max_batch_size = 8
"""

PROMPTS = [
    "Name a colour.",
    "What is 2 + 2?",
    "Say hello in French.",
    "Give one word that rhymes with cat.",
    "What is the capital of Japan?",
    "Name a fruit that is yellow.",
]


def direct_run(base: str, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The second Overnight runs the batch itself (inline requests, batched)."""
    created = httpx.post(
        f"{base}/v1beta/models/smol32:batchGenerateContent",
        json={
            "batch": {
                "displayName": "direct",
                "inputConfig": {
                    "requests": {
                        "requests": [
                            {"request": line["request"], "metadata": {"key": line["key"]}}
                            for line in lines
                        ]
                    }
                },
            }
        },
        timeout=30,
    )
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    deadline = time.monotonic() + 300
    while True:
        op = httpx.get(f"{base}/v1beta/{name}", timeout=30).json()
        if op.get("done"):
            break
        assert time.monotonic() < deadline, op
        time.sleep(0.5)
    responses = op["response"]["inlinedResponses"]["inlinedResponses"]
    return [r["response"] for r in responses]


def test_a_batch_relayed_to_another_overnight_matches_a_direct_run(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    lines = [
        # temperature 0 asks for greedy decoding over the model's sampling defaults: a
        # relayed call is a synchronous call, which draws afresh without a seed
        {"key": f"k{i}", "request": request(text, maxOutputTokens=12, temperature=0)}
        for i, text in enumerate(PROMPTS)
    ]
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir)}
    with running_server(tmp_path / "second", config=SERVED, env=env, timeout=120) as base:
        direct = direct_run(base, lines)

        async def relay() -> list[dict[str, Any]]:
            settings = load_settings(
                environ={},
                overrides={
                    "data_dir": str(tmp_path / "first"),
                    "engine": {"poll_seconds": 0.05},
                    "models": {
                        "relay": {
                            "backend": "gemini",
                            "base_url": base,
                            "model": "smol32",
                            "max_concurrency": 4,
                        }
                    },
                },
            )
            runtime = await build_runtime(settings)
            src = write_jsonl(tmp_path / "in.jsonl", lines)
            file = await runtime.services.files.import_path("t", src)
            batch = await runtime.services.batches.create_from_file(
                "t", model="relay", kind=BatchKind.GENERATE, file_id=file.id
            )
            batch = await drive(runtime, batch.id, timeout=300)
            assert batch.state is BatchState.SUCCEEDED, batch
            out = await output_lines(runtime, batch)
            await runtime.close()
            return out

        relayed = asyncio.run(relay())

    assert [line["key"] for line in relayed] == [line["key"] for line in lines]
    for line, expected in zip(relayed, direct, strict=True):
        got = line["response"]
        assert got["candidates"][0]["content"] == expected["candidates"][0]["content"], (
            json.dumps(got),
            json.dumps(expected),
        )
        assert got["candidates"][0]["finishReason"] == expected["candidates"][0]["finishReason"]
        assert got["usageMetadata"] == expected["usageMetadata"]
        assert got["modelVersion"] == expected["modelVersion"]
        assert got["candidates"][0]["content"]["parts"][0]["text"].strip()
