"""The transformers backend on the real bundled SmolLM2-135M-Instruct (GGUF).

The model is converted once for the module (~20 s on two cores); every request keeps
maxOutputTokens small so the whole file runs in about a minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overnight.backends.base import Backend
from overnight.backends.transformers import TransformersBackend
from overnight.config import builtin_models
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import GenerateResult
from overnight.errors import BackendUnavailable, RequestRejected

pytestmark = pytest.mark.model

NAME = "smollm2-135m-instruct"
MAX_INPUT_TOKENS = 200


def make_backend(cache_dir: Path) -> TransformersBackend:
    settings = builtin_models()[NAME].model_copy(
        update={"max_batch_size": 4, "max_input_tokens": MAX_INPUT_TOKENS}
    )
    return TransformersBackend(NAME, settings, cache_dir)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def backend(cache_dir: Path) -> Iterator[TransformersBackend]:
    backend = make_backend(cache_dir)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


def request(
    text: str,
    *,
    system: str | None = None,
    history: tuple[str, ...] = (),
    **config: Any,
) -> GenerateRequest:
    """A user turn after ``history`` (alternating user/model turns), with generationConfig."""
    turns = [*history, text]
    contents = [
        {"role": "user" if i % 2 == 0 else "model", "parts": [{"text": t}]}
        for i, t in enumerate(turns)
    ]
    body: dict[str, Any] = {"contents": contents, "generationConfig": config}
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    return GenerateRequest.model_validate(body)


def generate(backend: TransformersBackend, *requests: GenerateRequest) -> list[GenerateResult]:
    outcomes = asyncio.run(backend.generate(list(requests)))
    assert len(outcomes) == len(requests)
    results = []
    for outcome in outcomes:
        assert isinstance(outcome, GenerateResult), outcome
        results.append(outcome)
    return results


def test_capabilities_are_known_before_loading(tmp_path: Path) -> None:
    fresh = make_backend(tmp_path)
    assert isinstance(fresh, Backend)
    assert fresh.capabilities.generate and not fresh.capabilities.embed
    assert fresh.capabilities.model_version == "SmolLM2-135M-Instruct"
    assert fresh.capabilities.max_batch_size == 4
    assert not list(tmp_path.iterdir())


def test_mixed_batch_keeps_order_and_counts(backend: TransformersBackend) -> None:
    requests = [
        request("What is the capital of France?", maxOutputTokens=12),
        request(
            "Describe, in a long and detailed way, how the water cycle moves water between "
            "oceans, clouds, rivers and the ground, and why it matters for farming.",
            system="You are a patient geography teacher.",
            maxOutputTokens=8,
        ),
        request(
            "And what is its population?",
            history=("What is the largest city in Japan?", "The largest city in Japan is Tokyo."),
            maxOutputTokens=10,
        ),
        request("Hi", maxOutputTokens=6),
        request("Name a color.", system="Answer with one word.", maxOutputTokens=6),
        request("Write a list of five fruits.", maxOutputTokens=10),
    ]
    results = generate(backend, *requests)
    alone = [generate(backend, r)[0] for r in (requests[0], requests[3])]

    assert "Paris" in results[0].candidates[0].text
    # Each result belongs to its own request although the batch was sorted by length.
    assert results[0].prompt_tokens == alone[0].prompt_tokens
    assert results[3].prompt_tokens == alone[1].prompt_tokens
    assert results[1].prompt_tokens > results[0].prompt_tokens > results[3].prompt_tokens
    assert results[2].prompt_tokens > results[0].prompt_tokens  # the history counts
    for req, result in zip(requests, results, strict=True):
        [candidate] = result.candidates
        assert candidate.text.strip()
        assert 0 < candidate.token_count <= req.config.max_output_tokens
        assert candidate.finish_reason in ("STOP", "MAX_TOKENS")
        assert result.model_version == "SmolLM2-135M-Instruct"
        usage = result.to_wire()["usageMetadata"]
        assert usage["promptTokenCount"] == result.prompt_tokens > 0
        assert usage["candidatesTokenCount"] == candidate.token_count
        assert usage["totalTokenCount"] == result.prompt_tokens + candidate.token_count


def test_finish_reasons(backend: TransformersBackend) -> None:
    short, cut = generate(
        backend,
        request("What is the capital of France? Answer in one short sentence.", maxOutputTokens=40),
        request("Write a long story about a dragon.", maxOutputTokens=3),
    )
    assert short.candidates[0].finish_reason == "STOP"
    assert short.candidates[0].token_count < 40
    assert cut.candidates[0].finish_reason == "MAX_TOKENS"
    assert 0 < cut.candidates[0].token_count <= 3


def test_stop_sequences_cut_the_text(backend: TransformersBackend) -> None:
    prompt = "Count from 1 to 10, one number per line."
    [full] = generate(backend, request(prompt, maxOutputTokens=30))
    text = full.candidates[0].text
    assert "4" in text, text
    [stopped] = generate(backend, request(prompt, maxOutputTokens=30, stopSequences=["4"]))
    candidate = stopped.candidates[0]
    assert candidate.finish_reason == "STOP"
    assert candidate.text == text[: text.index("4")]
    assert candidate.token_count < full.candidates[0].token_count


def test_candidate_count(backend: TransformersBackend) -> None:
    [result] = generate(
        backend,
        request(
            "Invent a name for a cat.", candidateCount=2, temperature=1.0, seed=3, maxOutputTokens=8
        ),
    )
    assert len(result.candidates) == 2
    assert all(c.text.strip() and c.token_count > 0 for c in result.candidates)
    assert result.candidates_tokens == sum(c.token_count for c in result.candidates)


def test_seeded_sampling_is_reproducible(backend: TransformersBackend) -> None:
    def sample(seed: int) -> str:
        [result] = generate(
            backend,
            request(
                "Tell me something about the ocean.", temperature=1.0, seed=seed, maxOutputTokens=20
            ),
        )
        return result.candidates[0].text

    first = sample(42)
    assert sample(42) == first
    assert sample(43) != first


def test_sampling_filters_are_accepted(backend: TransformersBackend) -> None:
    greedy_like, nucleus = generate(
        backend,
        request("Name a fruit.", temperature=1.0, topK=1, seed=5, maxOutputTokens=8),
        request("Name a fruit.", temperature=0.7, topP=0.9, topK=40, seed=5, maxOutputTokens=8),
    )
    [greedy] = generate(backend, request("Name a fruit.", maxOutputTokens=8))
    # topK=1 leaves a single token to draw: the same text as greedy decoding.
    assert greedy_like.candidates[0].text == greedy.candidates[0].text
    assert nucleus.candidates[0].text.strip()


def test_a_prompt_too_long_is_rejected_alone(backend: TransformersBackend) -> None:
    long_text = "Please read this. " * 100
    outcomes = asyncio.run(
        backend.generate([request("Say hello.", maxOutputTokens=4), request(long_text)])
    )
    assert isinstance(outcomes[0], GenerateResult)
    assert isinstance(outcomes[1], RequestRejected)
    assert str(MAX_INPUT_TOKENS) in outcomes[1].message


def test_embed_is_rejected(backend: TransformersBackend) -> None:
    embed = EmbedRequest.model_validate({"content": {"parts": [{"text": "x"}]}})
    [outcome] = asyncio.run(backend.embed([embed]))
    assert isinstance(outcome, RequestRejected)


def test_second_start_reads_the_cache(backend: TransformersBackend, cache_dir: Path) -> None:
    [folder] = list(cache_dir.iterdir())
    assert folder.name.startswith(f"{NAME}-")
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()

    again = make_backend(cache_dir)
    asyncio.run(again.start())
    try:
        probe = request("What is the capital of France?", maxOutputTokens=10)
        [ours] = generate(again, probe)
        [theirs] = generate(backend, probe)
        assert ours.candidates[0].text == theirs.candidates[0].text
    finally:
        asyncio.run(again.close())
    assert list(cache_dir.iterdir()) == [folder]


def test_missing_weights_are_unavailable(tmp_path: Path) -> None:
    settings = builtin_models()[NAME].model_copy(update={"path": str(tmp_path / "nope.gguf")})
    missing = TransformersBackend("missing", settings, tmp_path)
    assert missing.capabilities.model_version == "nope"
    with pytest.raises(BackendUnavailable, match=r"nope\.gguf"):
        asyncio.run(missing.start())
