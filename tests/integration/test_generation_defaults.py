"""A batch's lines get their model's generation defaults, and reproducible seeds, on SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.conftest import fake_settings
from tests.helpers import drive, output_lines, request, write_jsonl

from overnight.app import build_runtime
from overnight.config import load_settings
from overnight.domain.batches import BatchKind, BatchState


def tuned_settings(tmp_path: Path) -> Any:
    """The fake echo, which shows a seed when it samples, with a default temperature."""
    base = fake_settings(tmp_path)
    models = {k: v.model_dump() for k, v in base.models.items()}
    models["tuned-echo"] = {
        "backend": "fake",
        "max_output_tokens": 4,
        "generation": {"temperature": 0.5},
    }
    return load_settings(
        environ={},
        overrides={
            **base.model_dump(mode="json", include={"data_dir", "engine"}),
            "models": models,
        },
    )


def texts(lines: list[dict[str, Any]]) -> dict[str, str]:
    return {
        line["key"]: line["response"]["candidates"][0]["content"]["parts"][0]["text"]
        for line in lines
    }


def test_batch_lines_get_the_defaults_and_a_seed_from_their_key(tmp_path: Path) -> None:
    lines = [
        {"key": "a", "request": request("same prompt")},
        {"key": "b", "request": request("same prompt")},
        {"key": "greedy", "request": request("same prompt", temperature=0)},
        {"key": "seeded", "request": request("same prompt", seed=12)},
        {"key": "long", "request": request("one two three four five")},
        {"request": request("same prompt")},  # no key: seeded from "line:6"
    ]
    src = write_jsonl(tmp_path / "in.jsonl", lines)

    async def run_once(data: Path) -> dict[str, str]:
        settings = tuned_settings(data)
        runtime = await build_runtime(settings)
        try:
            file = await runtime.services.files.import_path("t", src)
            created = await runtime.services.batches.create_from_file(
                "t", model="tuned-echo", kind=BatchKind.GENERATE, file_id=file.id
            )
            batch = await drive(runtime, created.id)
            assert batch.state is BatchState.SUCCEEDED
            return texts(await output_lines(runtime, batch))
        finally:
            await runtime.close()

    first = asyncio.run(run_once(tmp_path / "one"))
    again = asyncio.run(run_once(tmp_path / "two"))  # a fresh store: the same answers
    assert first == again
    seeded_a, seeded_b = first["a"], first["b"]
    assert seeded_a.startswith("echo: same prompt #") and seeded_b.startswith("echo: same prompt #")
    assert seeded_a != seeded_b  # two keys, two draws
    assert first["greedy"] == "echo: same prompt"  # temperature 0 set: no seed, no sampling
    assert first["seeded"] == "echo: same prompt #12"  # its own seed
    assert first["long"] == "echo: one two three"  # max_output_tokens = 4
    assert first["line:6"].startswith("echo: same prompt #")
