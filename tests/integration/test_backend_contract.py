"""The ``Backend`` contract, run against every backend in ``backends.registry``.

Each registry entry is one parameter: ``fake``; ``openai`` and ``gemini`` against the
fake upstream over real HTTP on loopback; ``transformers`` and ``sentence-transformers``
on the bundled models (marked ``model``); ``vllm`` where it is installed (marked
``model`` and ``vllm``). A backend added to the registry without a setup here fails
``test_every_registered_backend_has_a_setup``.

The contract:
- one outcome per request, in order (for every kind the backend serves);
- a request the backend refuses is that request's own error, the others are served;
- capabilities are honoured: a kind the backend does not serve is refused request by
  request, and a request its capabilities admit (``check_generate``) is served;
- ``close()`` is idempotent, started or not.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from overnight.backends.base import Backend
from overnight.backends.registry import BACKENDS, BackendEntry
from overnight.config import ModelSettings, builtin_models
from overnight.domain.batches import BatchKind
from overnight.domain.capabilities import check_generate
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import EmbedResult, GenerateResult
from overnight.errors import RequestRejected
from overnight.testing.upstream import FakeUpstream

GENERATE, EMBED = BatchKind.GENERATE, BatchKind.EMBED


def gen(text: str, **config: Any) -> GenerateRequest:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    body["generationConfig"] = {"maxOutputTokens": 4, "temperature": 0, **config}
    return GenerateRequest.model_validate(body)


def emb(text: str, **extra: Any) -> EmbedRequest:
    return EmbedRequest.model_validate({"content": {"parts": [{"text": text}]}, **extra})


def unsupported_schema() -> GenerateRequest:
    """Refused by every backend that constrains decoding itself (``backends.schema``)."""
    schema = {"type": "object", "if": {"type": "string"}}
    return gen("x", responseMimeType="application/json", responseJsonSchema=schema)


# ---- one setup per registered backend ---------------------------------------------------


@dataclass(frozen=True)
class Env:
    """What a setup may use: the fake upstream (started on demand) and the weights cache."""

    upstream: Callable[[], FakeUpstream]
    cache_dir: Path


@dataclass(frozen=True)
class Setup:
    settings: Callable[[Env], ModelSettings]
    # A request this backend itself refuses, per kind; absent where it refuses none.
    bad: dict[BatchKind, Callable[[], GenerateRequest | EmbedRequest]] = field(default_factory=dict)


def _builtin(name: str, **update: Any) -> Callable[[Env], ModelSettings]:
    return lambda env: builtin_models()[name].model_copy(update=update)


SETUPS: dict[str, Setup] = {
    "fake": Setup(
        lambda env: ModelSettings(backend="fake", options={"fail_marker": "BOOM"}),
        bad={GENERATE: unsupported_schema, EMBED: lambda: emb("BOOM goes this one")},
    ),
    "openai": Setup(
        lambda env: ModelSettings(backend="openai", base_url=f"{env.upstream().url}/v1"),
        bad={GENERATE: unsupported_schema},
    ),
    # Requests pass through to the upstream as they are; the fake upstream refuses none.
    "gemini": Setup(lambda env: ModelSettings(backend="gemini", base_url=env.upstream().url)),
    "transformers": Setup(
        _builtin("smollm2-135m-instruct", max_batch_size=8, max_input_tokens=256),
        bad={GENERATE: unsupported_schema},
    ),
    # It truncates long inputs rather than refusing them.
    "sentence-transformers": Setup(_builtin("all-minilm-l6-v2")),
    "vllm": Setup(
        _builtin(
            "smollm2-135m-instruct-vllm",
            max_input_tokens=512,
            options={"max_model_len": 1024, "kv_cache_space": 1},
        ),
        bad={GENERATE: unsupported_schema},
    ),
}


def _marks(entry: BackendEntry) -> list[pytest.MarkDecorator]:
    if entry.extra == "vllm":
        return [pytest.mark.model, pytest.mark.vllm]
    return [pytest.mark.model] if entry.local else []


PARAMS = [pytest.param(entry, id=name, marks=_marks(entry)) for name, entry in BACKENDS.items()]


def _require(entry: BackendEntry) -> None:
    """Skip when the backend's extra is not installed (fail where CI requires vLLM)."""
    for module in entry.modules:
        if importlib.util.find_spec(module) is None:
            reason = f"backend {entry.name} needs {module}: pip install -e '.[{entry.extra}]'"
            if entry.extra == "vllm" and os.environ.get("OVERNIGHT_REQUIRE_VLLM") == "1":
                pytest.fail(f"OVERNIGHT_REQUIRE_VLLM=1 but {reason}")
            pytest.skip(reason)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module: an HTTP client is bound to the loop that opened it."""
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture(scope="module")
def env(model_cache_dir: Path) -> Iterator[Env]:
    started: list[FakeUpstream] = []

    def upstream() -> FakeUpstream:
        if not started:
            up = FakeUpstream(seed=3)
            up.__enter__()
            started.append(up)
        return started[0]

    yield Env(upstream, model_cache_dir)
    for up in started:
        up.__exit__(None, None, None)


@dataclass
class Subject:
    entry: BackendEntry
    setup: Setup
    backend: Backend
    settings: ModelSettings

    def serves(self, kind: BatchKind) -> bool:
        caps = self.backend.capabilities
        return caps.generate if kind is GENERATE else caps.embed


@pytest.fixture(scope="module", params=PARAMS)
def subject(request: pytest.FixtureRequest, runner: asyncio.Runner, env: Env) -> Iterator[Subject]:
    entry: BackendEntry = request.param
    _require(entry)
    setup = SETUPS[entry.name]
    settings = setup.settings(env)
    backend = entry.create("contract", settings, env.cache_dir)
    runner.run(backend.start())
    yield Subject(entry, setup, backend, settings)
    runner.run(backend.close())  # after test_close_is_idempotent: a third close


def call(runner: asyncio.Runner, subject: Subject, kind: BatchKind, requests: Sequence[Any]) -> Any:
    backend = subject.backend
    outcomes = runner.run(
        backend.generate(list(requests)) if kind is GENERATE else backend.embed(list(requests))
    )
    assert len(outcomes) == len(requests), "one outcome per request"
    return outcomes


def served_kind(subject: Subject, kind: BatchKind) -> None:
    if not subject.serves(kind):
        pytest.skip(f"{subject.entry.name} (as set up) does not serve {kind.value} batches")


# ---- the contract -----------------------------------------------------------------------


def test_every_registered_backend_has_a_setup() -> None:
    assert set(SETUPS) == set(BACKENDS), "add a Setup for each backend in the registry"


@pytest.mark.parametrize("kind", [GENERATE, EMBED], ids=["generate", "embed"])
def test_one_outcome_per_request_in_order(
    subject: Subject, runner: asyncio.Runner, kind: BatchKind
) -> None:
    served_kind(subject, kind)
    lengths = [24, 12, 6, 2]  # longest first: a backend that sorts by length must unsort
    texts = [" ".join(f"word{i}" for i in range(n)) for n in lengths]
    if kind is GENERATE:
        outcomes = call(runner, subject, kind, [gen(t) for t in texts])
        assert all(isinstance(o, GenerateResult) for o in outcomes), outcomes
        prompts = [o.prompt_tokens for o in outcomes]
        assert prompts == sorted(prompts, reverse=True) and len(set(prompts)) == len(prompts)
    else:
        outcomes = call(runner, subject, kind, [emb(t) for t in texts])
        assert all(isinstance(o, EmbedResult) for o in outcomes), outcomes
        for text, together in zip(texts, outcomes, strict=True):
            (alone,) = call(runner, subject, kind, [emb(text)])
            assert len(alone.values) == len(together.values)
            pairs = zip(alone.values, together.values, strict=True)
            assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in pairs)
    requests: list[Any] = [gen(t) for t in texts] if kind is GENERATE else [emb(t) for t in texts]
    counted = runner.run(subject.backend.count_tokens(requests))
    assert len(counted) == len(texts) and all(isinstance(c, int) for c in counted)
    assert counted == sorted(counted, reverse=True)
    assert call(runner, subject, kind, []) == []


@pytest.mark.parametrize("kind", [GENERATE, EMBED], ids=["generate", "embed"])
def test_a_bad_request_is_its_own_error(
    subject: Subject, runner: asyncio.Runner, kind: BatchKind
) -> None:
    served_kind(subject, kind)
    bad = subject.setup.bad.get(kind)
    if bad is None:
        pytest.skip(f"{subject.entry.name} refuses no {kind.value} request of its own")
    good = gen("Say hi.") if kind is GENERATE else emb("a good one")
    outcomes = call(runner, subject, kind, [good, bad(), good])
    assert isinstance(outcomes[1], RequestRejected), outcomes[1]
    assert outcomes[1].message
    result = GenerateResult if kind is GENERATE else EmbedResult
    assert isinstance(outcomes[0], result) and isinstance(outcomes[2], result), outcomes


def test_a_kind_it_does_not_serve_is_refused_request_by_request(
    subject: Subject, runner: asyncio.Runner
) -> None:
    caps = subject.backend.capabilities
    served = {k for k in (GENERATE, EMBED) if subject.serves(k)}
    assert served and served <= subject.entry.kinds, "capabilities within the registry's kinds"
    missing = [k for k in (GENERATE, EMBED) if k not in served]
    if not missing:
        pytest.skip(f"{subject.entry.name} serves both kinds")
    for kind in missing:
        requests = [gen("one"), gen("two")] if kind is GENERATE else [emb("one"), emb("two")]
        outcomes = call(runner, subject, kind, requests)
        assert all(isinstance(o, RequestRejected) for o in outcomes), outcomes
        assert caps.model_version in outcomes[0].message


PROBES: dict[str, Callable[[], GenerateRequest]] = {
    "stopSequences": lambda: gen("count one two three", stopSequences=["three"]),
    # sampled: vLLM refuses greedy decoding with n > 1 (that request's own error)
    "candidateCount": lambda: gen("Say hi.", candidateCount=2, temperature=0.7),
    "seed": lambda: gen("Say hi.", temperature=0.8, seed=7),
    "topK/topP": lambda: gen("Say hi.", temperature=0.5, topK=5, topP=0.9),
    "json mode": lambda: gen("Give JSON.", responseMimeType="application/json"),
    "enum": lambda: gen(
        "yes or no?",
        responseMimeType="text/x.enum",
        responseSchema={"type": "STRING", "enum": ["yes", "no"]},
    ),
    "presencePenalty": lambda: gen("Say hi.", presencePenalty=0.5),
    "responseLogprobs": lambda: gen("Say hi.", responseLogprobs=True),
    "image": lambda: GenerateRequest.model_validate(
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "what is this"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    ],
                }
            ],
            "generationConfig": {"maxOutputTokens": 4},
        }
    ),
    "tools": lambda: GenerateRequest.model_validate(
        {
            "contents": [{"role": "user", "parts": [{"text": "weather?"}]}],
            "tools": [{"functionDeclarations": [{"name": "weather"}]}],
            "generationConfig": {"maxOutputTokens": 4},
        }
    ),
}


def test_what_its_capabilities_admit_is_served_and_the_rest_refused(
    subject: Subject, runner: asyncio.Runner
) -> None:
    """The engine refuses, per request, what the capabilities do not admit; whatever they
    admit, the backend must serve, in one call with the rest."""
    served_kind(subject, GENERATE)
    caps = subject.backend.capabilities
    admitted: dict[str, GenerateRequest] = {}
    refused: list[str] = []
    for name, make in PROBES.items():
        probe = make()
        try:
            check_generate(probe, caps)
        except RequestRejected as exc:
            assert exc.message, name
            refused.append(name)
            continue
        admitted[name] = probe
    assert "stopSequences" in admitted, "every generative backend honours stopSequences"
    outcomes = call(runner, subject, GENERATE, list(admitted.values()))
    for (name, probe), outcome in zip(admitted.items(), outcomes, strict=True):
        assert isinstance(outcome, GenerateResult), f"{name}: {outcome}"
        assert len(outcome.candidates) == (probe.config.candidate_count or 1), name


def test_output_dimensionality_within_the_capabilities_is_honoured(
    subject: Subject, runner: asyncio.Runner
) -> None:
    served_kind(subject, EMBED)
    requests = [emb("dimensions"), emb("dimensions", outputDimensionality=4)]
    full, cut = call(runner, subject, EMBED, requests)
    assert isinstance(full, EmbedResult) and isinstance(cut, EmbedResult), (full, cut)
    assert len(cut.values) == 4
    dims = subject.backend.capabilities.embedding_dimensions
    assert dims is None or len(full.values) == dims


def test_closing_a_backend_that_never_started_is_idempotent(
    subject: Subject, runner: asyncio.Runner, env: Env
) -> None:
    fresh = subject.entry.create("contract-unstarted", subject.settings, env.cache_dir)
    runner.run(fresh.close())
    runner.run(fresh.close())


def test_close_is_idempotent(subject: Subject, runner: asyncio.Runner) -> None:
    """Last in the module: it closes the module's backend (the fixture closes it again)."""
    runner.run(subject.backend.close())
    runner.run(subject.backend.close())
