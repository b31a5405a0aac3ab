"""The sentence-transformers backend on the real bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overnight.backends.base import Backend
from overnight.backends.sentence_transformers import SentenceTransformersBackend
from overnight.config import builtin_models
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import EmbedResult
from overnight.errors import BackendUnavailable, RequestRejected

pytestmark = pytest.mark.model

NAME = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentenceTransformersBackend]:
    settings = builtin_models()[NAME].model_copy(update={"max_batch_size": 2})
    backend = SentenceTransformersBackend(NAME, settings, tmp_path_factory.mktemp("cache"))
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


def request(text: str, **fields: Any) -> EmbedRequest:
    return EmbedRequest.model_validate({"content": {"parts": [{"text": text}]}, **fields})


def embed(backend: SentenceTransformersBackend, *requests: EmbedRequest) -> list[EmbedResult]:
    outcomes = asyncio.run(backend.embed(list(requests)))
    assert len(outcomes) == len(requests)
    results = []
    for outcome in outcomes:
        assert isinstance(outcome, EmbedResult), outcome
        results.append(outcome)
    return results


def norm(values: list[float]) -> float:
    return math.sqrt(math.fsum(v * v for v in values))


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def test_capabilities_are_known_before_loading(tmp_path: Path) -> None:
    fresh = SentenceTransformersBackend(NAME, builtin_models()[NAME], tmp_path)
    assert isinstance(fresh, Backend)
    caps = fresh.capabilities
    assert caps.embed and not caps.generate
    assert caps.embedding_dimensions == 384
    assert caps.model_version == "all-MiniLM-L6-v2"


def test_unit_vectors_of_384_dimensions(backend: SentenceTransformersBackend) -> None:
    results = embed(backend, request("The cat sits on the mat."), request("Hello"), request(""))
    for result in results:
        assert len(result.values) == 384
        assert norm(result.values) == pytest.approx(1.0, abs=1e-5)
        assert result.model_version == "all-MiniLM-L6-v2"
    assert backend.capabilities.embedding_dimensions == 384


def test_output_dimensionality_truncates_and_renormalizes(
    backend: SentenceTransformersBackend,
) -> None:
    full, short = embed(
        backend,
        request("Quarterly revenue grew by eight percent."),
        request("Quarterly revenue grew by eight percent.", outputDimensionality=64),
    )
    assert len(short.values) == 64
    assert norm(short.values) == pytest.approx(1.0, abs=1e-5)
    scale = norm(full.values[:64])
    assert short.values == pytest.approx([v / scale for v in full.values[:64]], abs=1e-5)


def test_similar_sentences_are_closer(backend: SentenceTransformersBackend) -> None:
    cat, kitten, finance = embed(
        backend,
        request("A cat is sleeping on the sofa."),
        request("A kitten naps on the couch."),
        request("The central bank raised interest rates again."),
    )
    assert cosine(cat.values, kitten.values) > cosine(cat.values, finance.values) + 0.2


def test_task_type_and_title_are_accepted(backend: SentenceTransformersBackend) -> None:
    text = "How do I reset my password?"
    plain, query, document, titled = embed(
        backend,
        request(text),
        request(text, taskType="RETRIEVAL_QUERY"),
        request(text, taskType="RETRIEVAL_DOCUMENT"),
        request(text, title="Account help"),
    )
    # all-MiniLM-L6-v2 has no task prompts: taskType leaves its output unchanged.
    assert query.values == pytest.approx(plain.values, abs=1e-5)
    assert document.values == pytest.approx(plain.values, abs=1e-5)
    assert titled.values != pytest.approx(plain.values, abs=1e-3)
    assert titled.token_count > plain.token_count


def test_token_counts(backend: SentenceTransformersBackend) -> None:
    short, longer, huge = embed(
        backend,
        request("one two"),
        request("one two three four five six seven"),
        request("word " * 600),
    )
    assert 0 < short.token_count < longer.token_count
    assert huge.token_count == 600  # counted in full, embedded truncated
    assert len(huge.values) == 384
    assert huge.to_wire()["tokenCount"] == "600"


def test_generate_is_rejected(backend: SentenceTransformersBackend) -> None:
    generate = GenerateRequest.model_validate({"contents": [{"parts": [{"text": "x"}]}]})
    [outcome] = asyncio.run(backend.generate([generate]))
    assert isinstance(outcome, RequestRejected)


def test_missing_model_is_unavailable(tmp_path: Path) -> None:
    settings = builtin_models()[NAME].model_copy(update={"path": str(tmp_path / "no-model")})
    missing = SentenceTransformersBackend("missing", settings, tmp_path)
    assert missing.capabilities.embedding_dimensions is None  # known once loaded
    with pytest.raises(BackendUnavailable, match="no-model"):
        asyncio.run(missing.start())
