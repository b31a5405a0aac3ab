"""Structured output on the real bundled SmolLM2-135M-Instruct, through the engine.

A file batch of 500 requests mixes assorted Gemini Schemas (nested objects, arrays with
min/maxItems, enums, nullable fields, propertyOrdering, anyOf), plain JSON Schema,
``text/x.enum``, plain JSON mode and free-text rows, plus two schemas that cannot be
honoured. Every constrained answer must parse and validate against its schema, unless
it ran out of tokens (MAX_TOKENS), which is counted and reported. maxOutputTokens stays
small so the file runs in a few minutes on two cores.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tests.helpers import drive, output_lines, request, write_jsonl

from overnight.app import build_runtime
from overnight.backends.schema import OutputConstraint, output_constraint
from overnight.backends.transformers import TransformersBackend
from overnight.config import builtin_models, load_settings
from overnight.domain.batches import BatchKind, BatchState
from overnight.domain.requests import GenerateRequest, GenerationConfig
from overnight.domain.results import GenerateResult
from overnight.errors import RequestRejected

pytestmark = pytest.mark.model

MODEL = "smollm2-135m-instruct"
REQUESTS = 500

SENTIMENT = {
    "type": "OBJECT",
    "properties": {
        "confidence": {"type": "NUMBER", "minimum": 0, "maximum": 1},
        "label": {"type": "STRING", "enum": ["positive", "negative", "neutral"]},
    },
    "required": ["label", "confidence"],
    "propertyOrdering": ["label", "confidence"],
}
NAME = {"type": "STRING", "maxLength": 16}
PERSON = {
    "type": "OBJECT",
    "properties": {
        "person": {
            "type": "OBJECT",
            "properties": {"name": NAME, "age": {"type": "INTEGER", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"],
        },
        "city": NAME,
    },
    "required": ["person", "city"],
    "propertyOrdering": ["city", "person"],
}
TAGS = {
    "type": "OBJECT",
    "properties": {
        "tags": {
            "type": "ARRAY",
            "items": {"type": "STRING", "maxLength": 12},
            "minItems": 1,
            "maxItems": 3,
        }
    },
    "required": ["tags"],
}
NULLABLE = {
    "type": "OBJECT",
    "properties": {
        "answer": {"type": "STRING", "maxLength": 20, "nullable": True},
        "score": {"type": "INTEGER", "minimum": 0, "maximum": 10, "nullable": True},
    },
    "required": ["answer", "score"],
    "property_ordering": ["score", "answer"],
}
ANY_OF = {
    "type": "OBJECT",
    "properties": {"value": {"anyOf": [{"type": "INTEGER"}, {"type": "STRING", "maxLength": 10}]}},
    "required": ["value"],
}
NUMBERS = {
    "type": "ARRAY",
    "items": {"type": "INTEGER", "minimum": 0, "maximum": 99},
    "minItems": 2,
    "maxItems": 4,
}
FLAG = {
    "type": "OBJECT",
    "properties": {
        "is_question": {"type": "BOOLEAN"},
        "topic": {"type": "STRING", "enum": ["science", "food", "other"]},
    },
    "required": ["is_question", "topic"],
}
PLAIN = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 1, "maximum": 999},
        "unit": {"enum": ["kg", "lb"]},
    },
    "required": ["n", "unit"],
}
CHOICES = ["yes", "no", "maybe"]

TOPICS = [
    "I loved this movie, the acting was superb.",
    "The soup was cold and the waiter was rude.",
    "Why is the sky blue?",
    "My neighbour Anna is 34 and lives in Lyon.",
    "The parcel weighs 12 kg.",
    "Bananas are rich in potassium.",
    "Is it going to rain tomorrow?",
    "The concert was fine, nothing special.",
    "Tom, 8 years old, from Oslo, loves chess.",
    "Water boils at 100 degrees Celsius.",
]


def _config(schema_kind: str) -> dict[str, Any]:
    json_mime = {"responseMimeType": "application/json"}
    configs: dict[str, dict[str, Any]] = {
        "sentiment": {**json_mime, "responseSchema": SENTIMENT, "maxOutputTokens": 32},
        "person": {**json_mime, "responseSchema": PERSON, "maxOutputTokens": 64},
        "tags": {**json_mime, "responseSchema": TAGS, "maxOutputTokens": 48},
        "nullable": {**json_mime, "responseSchema": NULLABLE, "maxOutputTokens": 40},
        "any_of": {**json_mime, "responseSchema": ANY_OF, "maxOutputTokens": 24},
        "numbers": {**json_mime, "responseSchema": NUMBERS, "maxOutputTokens": 32},
        "flag": {
            **json_mime,
            "responseSchema": FLAG,
            "maxOutputTokens": 40,
            "temperature": 0.8,
            "seed": 7,
        },
        "plain": {**json_mime, "responseJsonSchema": PLAIN, "maxOutputTokens": 32},
        "enum": {
            "responseMimeType": "text/x.enum",
            "responseSchema": {"type": "STRING", "enum": CHOICES},
            "maxOutputTokens": 8,
        },
        "json": {**json_mime, "maxOutputTokens": 40},
        "free": {"maxOutputTokens": 12},
    }
    return configs[schema_kind]


KINDS = [
    "sentiment",
    "person",
    "tags",
    "nullable",
    "any_of",
    "numbers",
    "flag",
    "plain",
    "enum",
    "json",
    "free",
]
ORDERINGS = {
    "sentiment": ["label", "confidence"],
    "person": ["city", "person"],
    "nullable": ["score", "answer"],
}
INVALID = {
    # rejected by the schema check: xgrammar would silently ignore the keyword
    "bad-unique": (
        {
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "array", "uniqueItems": True},
        },
        'generationConfig.responseJsonSchema.uniqueItems: the keyword "uniqueItems"',
    ),
    # rejected by the grammar compiler itself
    "bad-pattern": (
        {
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "string", "pattern": "(?<=a)b"},
        },
        "generationConfig.responseJsonSchema: the grammar library cannot compile it: "
        "Regex parsing error at position 3: Lookbehind is not supported yet.",
    ),
}


def _lines() -> Iterator[dict[str, Any]]:
    for i in range(REQUESTS - len(INVALID)):
        kind = KINDS[i % len(KINDS)]
        topic = TOPICS[(i // len(KINDS)) % len(TOPICS)]
        yield {
            "key": f"{kind}-{i}",
            "request": request(f"{topic} Answer as {kind}.", **_config(kind)),
        }
    for key, (config, _) in INVALID.items():
        yield {"key": key, "request": request("Anything.", **config)}


def _constraint(kind: str) -> OutputConstraint | None:
    return output_constraint(GenerationConfig.model_validate(_config(kind)))


def test_a_file_batch_of_assorted_schemas(tmp_path: Path, model_cache_dir: Path) -> None:
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "model_cache_dir": str(model_cache_dir),
            "engine": {"poll_seconds": 0.05, "shard_size": 250},
            "models": {MODEL: {"backend": "transformers", "max_batch_size": 64}},
        },
    )

    async def go() -> list[dict[str, Any]]:
        svc = await build_runtime(settings)
        try:
            file = await svc.services.files.import_path(
                "t", write_jsonl(tmp_path / "in.jsonl", _lines())
            )
            created = await svc.services.batches.create_from_file(
                "t", model=MODEL, kind=BatchKind.GENERATE, file_id=file.id
            )
            batch = await drive(svc, created.id, timeout=600)
            assert batch.state is BatchState.SUCCEEDED, batch
            assert (batch.request_count, batch.failed_count) == (REQUESTS, len(INVALID))
            return await output_lines(svc, batch)
        finally:
            await svc.close()

    lines = {line["key"]: line for line in asyncio.run(go())}
    assert len(lines) == REQUESTS

    for key, (_, message) in INVALID.items():
        error = lines.pop(key)["error"]
        assert error["status"] == "INVALID_ARGUMENT" and message in error["message"], error

    truncated: Counter[str] = Counter()
    checked: Counter[str] = Counter()
    validators = {}
    for kind in KINDS:
        found = _constraint(kind)
        if found is not None and found.json_schema is not None:
            validators[kind] = jsonschema.Draft202012Validator(found.json_schema)
    for key, line in lines.items():
        assert "response" in line, line
        kind = key.rsplit("-", 1)[0]
        candidate = line["response"]["candidates"][0]
        text = candidate["content"]["parts"][0]["text"] if candidate.get("content") else ""
        if candidate["finishReason"] == "MAX_TOKENS":
            truncated[kind] += 1
            continue
        assert candidate["finishReason"] == "STOP", line
        checked[kind] += 1
        if kind == "free":
            continue
        if kind == "enum":
            assert text in CHOICES, f"{key}: {text!r} is not one of {CHOICES}"
            continue
        value = json.loads(text)  # every constrained answer parses
        if kind in validators:
            errors = list(validators[kind].iter_errors(value))
            assert not errors, f"{key}: {text!r} does not match its schema: {errors[0].message}"
        if kind in ORDERINGS:
            assert list(value) == ORDERINGS[kind], f"{key}: properties out of order: {text}"

    constrained = sum(checked.values()) + sum(truncated.values())
    print(
        f"\nstructured batch: {sum(checked.values())} checked, MAX_TOKENS by kind: {dict(truncated)}"
    )
    assert checked["enum"] == sum(1 for i in range(REQUESTS - 2) if KINDS[i % len(KINDS)] == "enum")
    # The budgets are sized for these schemas: most answers close well within them.
    # Plain JSON mode (any value) and free text may ramble; the schemas are sized.
    assert sum(n for k, n in truncated.items() if k not in ("free", "json")) < constrained // 10


# ---- one generate call: mixed rows, per-row grammars, the compile cache ---------------


@pytest.fixture(scope="module")
def backend(model_cache_dir: Path) -> Iterator[TransformersBackend]:
    settings = builtin_models()[MODEL].model_copy(update={"max_batch_size": 16})
    backend = TransformersBackend(MODEL, settings, model_cache_dir)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


def _request(text: str, **config: Any) -> GenerateRequest:
    return GenerateRequest.model_validate(request(text, **config))


def test_one_call_mixes_free_rows_and_different_schemas(backend: TransformersBackend) -> None:
    kinds = ["sentiment", "free", "person", "enum", "free", "numbers", "sentiment", "plain"]
    requests = [_request(f"{TOPICS[i]} Reply.", **_config(kind)) for i, kind in enumerate(kinds)]
    before = len(backend._grammars)
    outcomes = asyncio.run(backend.generate(requests))
    for kind, outcome in zip(kinds, outcomes, strict=True):
        assert isinstance(outcome, GenerateResult), outcome
        candidate = outcome.candidates[0]
        if kind == "free" or candidate.finish_reason == "MAX_TOKENS":
            continue
        found = _constraint(kind)
        assert found is not None
        if kind == "enum":
            assert candidate.text in CHOICES
        else:
            jsonschema.validate(json.loads(candidate.text), found.json_schema or {})
    # Five distinct constraints, each compiled once, however many rows share one.
    assert len(backend._grammars) - before <= 5
    assert {_c.key for _c in map(_constraint, set(kinds) - {"free"}) if _c} <= set(
        backend._grammars
    )
    again = asyncio.run(backend.generate(requests))
    assert [o.candidates[0].text for o in again if isinstance(o, GenerateResult)][:1] == [
        outcomes[0].candidates[0].text  # type: ignore[union-attr]
    ]


def test_running_out_of_tokens_returns_the_text_as_it_stands(backend: TransformersBackend) -> None:
    config = {**_config("person"), "maxOutputTokens": 4}
    outcome = asyncio.run(backend.generate([_request("Describe someone.", **config)]))[0]
    assert isinstance(outcome, GenerateResult)
    candidate = outcome.candidates[0]
    assert candidate.finish_reason == "MAX_TOKENS" and candidate.token_count == 4
    opening = '{"city": "'  # propertyOrdering puts city first
    assert opening.startswith(candidate.text) or candidate.text.startswith(opening), candidate.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(candidate.text)


def test_an_invalid_schema_is_rejected_and_the_rest_run(backend: TransformersBackend) -> None:
    bad = {"responseMimeType": "application/json", "responseSchema": {"type": "FOO"}}
    outcomes = asyncio.run(
        backend.generate([_request("a", **bad), _request("b", **_config("enum"))])
    )
    assert isinstance(outcomes[0], RequestRejected)
    assert 'generationConfig.responseSchema.type: unknown type "FOO"' in outcomes[0].message
    assert isinstance(outcomes[1], GenerateResult) and outcomes[1].candidates[0].text in CHOICES
    config, message = INVALID["bad-pattern"]
    for _ in range(2):  # the second answer comes from the cache of compile failures
        outcome = asyncio.run(backend.generate([_request("a", **config)]))[0]
        assert isinstance(outcome, RequestRejected) and message in outcome.message
