"""The fake backend: deterministic, honours the config fields engine tests rely on."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from overnight.backends.base import Backend, GenerateOutcome
from overnight.backends.fake import FakeBackend
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import EmbedResult, GenerateResult
from overnight.errors import RequestRejected


def gen(text: str, **config: Any) -> GenerateRequest:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return GenerateRequest.model_validate(body)


def emb(text: str, **fields: Any) -> EmbedRequest:
    return EmbedRequest.model_validate({"content": {"parts": [{"text": text}]}, **fields})


def generate_one(backend: FakeBackend, request: GenerateRequest) -> GenerateResult:
    (outcome,) = asyncio.run(backend.generate([request]))
    assert isinstance(outcome, GenerateResult), outcome
    return outcome


def embed_one(backend: FakeBackend, request: EmbedRequest) -> EmbedResult:
    (outcome,) = asyncio.run(backend.embed([request]))
    assert isinstance(outcome, EmbedResult), outcome
    return outcome


def test_is_a_backend() -> None:
    backend = FakeBackend("echo")
    assert isinstance(backend, Backend)
    assert backend.capabilities.generate
    assert backend.capabilities.embed
    assert backend.capabilities.model_version == "echo"


def test_echoes_the_last_user_turn() -> None:
    result = generate_one(FakeBackend("echo"), gen("hello there world"))
    assert [c.text for c in result.candidates] == ["echo: hello there world"]
    assert result.candidates[0].finish_reason == "STOP"
    assert result.candidates[0].token_count == 4
    assert result.prompt_tokens == 3
    assert result.model_version == "echo"


def test_deterministic() -> None:
    requests = [gen("a b c"), gen("d e", candidateCount=2), gen("f", temperature=1, seed=7)]
    first = asyncio.run(FakeBackend("echo").generate(requests))
    second = asyncio.run(FakeBackend("echo").generate(requests))
    assert first == second


def test_max_output_tokens_truncates() -> None:
    result = generate_one(FakeBackend("echo"), gen("one two three four", maxOutputTokens=2))
    candidate = result.candidates[0]
    assert candidate.text == "echo: one"
    assert candidate.finish_reason == "MAX_TOKENS"
    assert candidate.token_count == 2


def test_max_output_tokens_not_reached() -> None:
    result = generate_one(FakeBackend("echo"), gen("one two", maxOutputTokens=3))
    assert result.candidates[0].finish_reason == "STOP"


def test_stop_sequence_cuts_the_answer() -> None:
    result = generate_one(
        FakeBackend("echo"), gen("alpha beta STOPHERE gamma", stopSequences=["STOP"])
    )
    candidate = result.candidates[0]
    assert candidate.text == "echo: alpha beta "
    assert "gamma" not in candidate.text
    assert candidate.finish_reason == "STOP"


def test_candidate_count() -> None:
    result = generate_one(FakeBackend("echo"), gen("hi", candidateCount=3))
    assert [c.text for c in result.candidates] == ["echo: hi", "echo: hi #1", "echo: hi #2"]
    wire = result.to_wire()
    assert [c["index"] for c in wire["candidates"]] == [0, 1, 2]
    assert wire["usageMetadata"]["candidatesTokenCount"] == result.candidates_tokens


def test_seed_with_temperature_marks_candidates() -> None:
    result = generate_one(
        FakeBackend("echo"), gen("hi", temperature=0.7, seed=41, candidateCount=2)
    )
    assert [c.text for c in result.candidates] == ["echo: hi #41", "echo: hi #42"]


def test_fail_marker_returns_an_instance_for_that_request_only() -> None:
    backend = FakeBackend("flaky", {"fail_marker": "BOOM"})
    outcomes: list[GenerateOutcome] = asyncio.run(
        backend.generate([gen("fine"), gen("this will BOOM"), gen("also fine")])
    )
    assert isinstance(outcomes[0], GenerateResult)
    assert isinstance(outcomes[1], RequestRejected)
    assert "BOOM" in outcomes[1].message
    assert isinstance(outcomes[2], GenerateResult)


def test_fail_marker_in_embeddings() -> None:
    backend = FakeBackend("flaky", {"fail_marker": "BOOM"})
    outcomes = asyncio.run(backend.embed([emb("BOOM"), emb("ok")]))
    assert isinstance(outcomes[0], RequestRejected)
    assert isinstance(outcomes[1], EmbedResult)


def test_counts_calls() -> None:
    backend = FakeBackend("echo")
    asyncio.run(backend.generate([gen("a"), gen("b")]))
    asyncio.run(backend.embed([emb("a")]))
    assert backend.calls == 2


def norm(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def test_embeddings_are_unit_norm_and_deterministic() -> None:
    backend = FakeBackend("echo", {"dimensions": 16})
    first = embed_one(backend, emb("the quick brown fox"))
    again = embed_one(FakeBackend("echo", {"dimensions": 16}), emb("the quick brown fox"))
    other = embed_one(backend, emb("an entirely different sentence here"))
    assert len(first.values) == 16
    assert math.isclose(norm(first.values), 1.0)
    assert first.values == again.values
    assert first.values != other.values
    assert first.token_count == 4
    assert first.to_wire()["embedding"]["values"] == first.values


def test_output_dimensionality_truncates_and_renormalizes() -> None:
    backend = FakeBackend("echo", {"dimensions": 8})
    result = embed_one(backend, emb("a b c d e f g h i j", outputDimensionality=3))
    assert len(result.values) == 3
    assert math.isclose(norm(result.values), 1.0)


def test_default_dimensions() -> None:
    backend = FakeBackend("echo")
    assert backend.capabilities.embedding_dimensions == 8
    assert len(embed_one(backend, emb("x")).values) == 8
