"""The bundled SmolLM2 with its default generation settings, and the penalties, for real.

Greedy decoding made the seed articles' joke prompt loop ("…wife's wife's wife's…") to
the token limit. With the model's defaults (``config.generation``) the demo file and
the seed prompts must not; ``bench/bench_loops.py`` measures the same at full length.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overnight.backends.transformers import TransformersBackend
from overnight.catalog import ModelCatalog
from overnight.config import load_settings
from overnight.domain.generation import apply_defaults
from overnight.domain.requests import GenerateRequest
from overnight.domain.results import GenerateResult
from overnight.testing.loops import repetition_loop

pytestmark = pytest.mark.model

DEMO = Path(__file__).resolve().parents[2] / "src" / "overnight" / "samples" / "demo.jsonl"
JOKE = "Tell me a one-sentence joke."


@pytest.fixture(scope="module")
def backend(model_cache_dir: Path) -> Iterator[TransformersBackend]:
    entry = ModelCatalog(load_settings(environ={})).resolve("smollm2-135m-instruct")
    backend = TransformersBackend(entry.name, entry.settings, model_cache_dir)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


def ask(text: str, **config: Any) -> GenerateRequest:
    return GenerateRequest.model_validate(
        {"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": config}
    )


def run(backend: TransformersBackend, requests: list[GenerateRequest]) -> list[GenerateResult]:
    outcomes = asyncio.run(backend.generate(requests))
    assert all(isinstance(o, GenerateResult) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, GenerateResult)]


def test_the_demo_and_seed_prompts_do_not_loop_with_the_defaults(
    backend: TransformersBackend,
) -> None:
    defaults = ModelCatalog(load_settings(environ={})).resolve("gemini-2.5-flash")
    keyed = [
        (line["key"], GenerateRequest.model_validate(line["request"]))
        for line in map(json.loads, DEMO.read_text(encoding="utf-8").splitlines())
    ]
    # The seed articles' inline requests set nothing; 160 tokens is room enough to loop.
    keyed += [("inline-joke", ask(JOKE, maxOutputTokens=160))]
    keyed += [("inline-sky", ask("Why is the sky blue?", maxOutputTokens=160))]
    merged = [apply_defaults(r, defaults.generation_defaults, seed_source=k) for k, r in keyed]
    greedy_joke = ask(JOKE, maxOutputTokens=160, temperature=0)  # the old behaviour
    *results, control = run(backend, [*merged, greedy_joke])
    old = control.candidates[0]
    assert repetition_loop(old.text, old.finish_reason), "the control no longer loops"
    loops = {
        key: candidate.text[-80:]
        for (key, _), result in zip(keyed, results, strict=True)
        if repetition_loop((candidate := result.candidates[0]).text, candidate.finish_reason)
    }
    assert loops == {}


def _variety(text: str) -> float:
    """Compressed size per character: a loop compresses to almost nothing."""
    return len(zlib.compress(text.encode())) / max(len(text), 1)


def test_presence_and_frequency_penalties_are_honoured_per_row(
    backend: TransformersBackend,
) -> None:
    plain = ask(JOKE, maxOutputTokens=64)
    results = run(
        backend,
        [
            plain,
            ask(JOKE, maxOutputTokens=64, frequencyPenalty=1.0),
            ask(JOKE, maxOutputTokens=64, presencePenalty=2.0),
            ask(JOKE, maxOutputTokens=64, presencePenalty=0.0, frequencyPenalty=0.0),
        ],
    )
    looping, frequency, presence, zero = (r.candidates[0].text for r in results)
    # Greedy, the joke loops; the same prompt in the same batch with penalties of 0 is
    # the same row: the penalized rows beside it change nothing for it.
    assert repetition_loop(looping, results[0].candidates[0].finish_reason), looping
    assert zero == looping
    for penalized in (frequency, presence):
        assert penalized != looping
        assert _variety(penalized) > _variety(looping), penalized
