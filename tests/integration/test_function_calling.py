"""Function calling on the real bundled SmolLM2-135M-Instruct (transformers backend).

The acceptance check of docs/function-calling.md: 100 requests in mode ``ANY``, in one
``generate`` call, over four sets of functions (Gemini Schemas and plain JSON Schema;
nested objects, arrays, enums, integer ranges, a function without parameters), some
narrowed by ``allowedFunctionNames``. Every answer must be a ``functionCall`` to an
allowed function whose ``args`` validate against its schema. Then AUTO, NONE,
VALIDATED and a conversation that carries a call and its response.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from overnight.backends.base import check_generate
from overnight.backends.schema import gemini_to_json_schema
from overnight.backends.transformers import TransformersBackend
from overnight.config import builtin_models
from overnight.domain.requests import GenerateRequest
from overnight.domain.results import Candidate, GenerateResult

pytestmark = pytest.mark.model

NAME = "smollm2-135m-instruct"
REQUESTS = 100
CITY = {"type": "STRING", "maxLength": 20}
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "OBJECT",
        "properties": {
            "city": CITY,
            "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
ADD = {
    "name": "add",
    "description": "Add two integers.",
    "parametersJsonSchema": {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
            "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
        },
        "required": ["a", "b"],
    },
}
BOOK = {
    "name": "book_table",
    "description": "Book a table at a restaurant.",
    "parameters": {
        "type": "OBJECT",
        "properties": {
            "restaurant": CITY,
            "guests": {"type": "INTEGER", "minimum": 1, "maximum": 12},
            "time": {"type": "STRING", "enum": ["18:00", "19:00", "20:00", "21:00"]},
            "requests": {
                "type": "ARRAY",
                "items": {"type": "STRING", "enum": ["window", "quiet", "vegan", "kids"]},
                "maxItems": 2,
            },
            "contact": {
                "type": "OBJECT",
                "properties": {"name": CITY, "phone": {"type": "STRING", "maxLength": 15}},
                "required": ["name"],
            },
        },
        "required": ["restaurant", "guests", "time", "contact"],
        "propertyOrdering": ["restaurant", "guests", "time", "contact", "requests"],
    },
}
LIGHTS = {"name": "lights_off", "description": "Switch off every light in the house."}
TRANSLATE = {
    "name": "translate",
    "parametersJsonSchema": {
        "type": "object",
        "properties": {
            "text": {"type": "string", "maxLength": 40},
            "target": {"type": "string", "enum": ["fr", "de", "es", "it"]},
        },
        "required": ["text", "target"],
    },
}
# (declared functions, allowedFunctionNames or None, prompts)
TOOL_SETS: list[tuple[list[dict[str, Any]], list[str] | None, list[str]]] = [
    (
        [WEATHER, ADD],
        None,
        ["What is the weather in {c}?", "How much is {n} plus {m}?", "Is it cold in {c}?"],
    ),
    ([BOOK, WEATHER], ["book_table"], ["Book a table for {n} at {c} Grill.", "Dinner for {n}?"]),
    ([LIGHTS, TRANSLATE, ADD], None, ["Turn off the lights.", "Say 'good night' in French."]),
    ([TRANSLATE, WEATHER, ADD], ["translate", "add"], ["Translate '{c} is lovely'.", "{n}+{m}?"]),
]
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Rome", "Perth"]


def schema_of(declaration: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema a call's ``args`` must validate against."""
    if "parametersJsonSchema" in declaration:
        return declaration["parametersJsonSchema"]
    if "parameters" in declaration:
        return gemini_to_json_schema(declaration["parameters"])
    return {"type": "object", "maxProperties": 0}


def request(
    text: str,
    declarations: list[dict[str, Any]],
    mode: str,
    allowed: list[str] | None = None,
    contents: list[dict[str, Any]] | None = None,
    max_tokens: int = 96,
) -> GenerateRequest:
    config: dict[str, Any] = {"mode": mode}
    if allowed is not None:
        config["allowedFunctionNames"] = allowed
    return GenerateRequest.model_validate(
        {
            "contents": contents or [{"role": "user", "parts": [{"text": text}]}],
            "tools": [{"functionDeclarations": declarations}],
            "toolConfig": {"functionCallingConfig": config},
            "generationConfig": {"maxOutputTokens": max_tokens},
        }
    )


@pytest.fixture(scope="module")
def backend(model_cache_dir: Path) -> Iterator[TransformersBackend]:
    settings = builtin_models()[NAME].model_copy(update={"max_batch_size": 50})
    backend = TransformersBackend(NAME, settings, model_cache_dir)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


def generate(backend: TransformersBackend, requests: list[GenerateRequest]) -> list[GenerateResult]:
    for one in requests:
        check_generate(one, backend.capabilities)
    outcomes = asyncio.run(backend.generate(requests))
    assert all(isinstance(o, GenerateResult) for o in outcomes), outcomes
    return outcomes  # type: ignore[return-value]


def valid_call(candidate: Candidate, declarations: list[dict[str, Any]], allowed: list[str]) -> str:
    """'' when the candidate is one call to an allowed function with valid args, else why not."""
    if len(candidate.function_calls) != 1 or candidate.text:
        return f"not one functionCall: {candidate}"
    call = candidate.function_calls[0]
    if call.name not in allowed:
        return f"{call.name} is not one of {allowed}"
    declared = next(d for d in declarations if d["name"] == call.name)
    errors = list(jsonschema.Draft202012Validator(schema_of(declared)).iter_errors(call.args))
    return f"{call.name} args {call.args}: {errors[0].message}" if errors else ""


def test_100_any_requests_are_each_a_valid_call(backend: TransformersBackend) -> None:
    numbers = itertools.cycle(range(2, 40, 3))
    cities = itertools.cycle(CITIES)
    cases = []
    for i in range(REQUESTS):
        declarations, allowed, prompts = TOOL_SETS[i % len(TOOL_SETS)]
        prompt = prompts[(i // len(TOOL_SETS)) % len(prompts)]
        text = prompt.format(c=next(cities), n=next(numbers), m=next(numbers))
        cases.append((request(text, declarations, "ANY", allowed), declarations, allowed))
    results = generate(backend, [case[0] for case in cases])
    problems = []
    called = set()
    for (_, declarations, allowed), result in zip(cases, results, strict=True):
        names = allowed or [d["name"] for d in declarations]
        (candidate,) = result.candidates
        why = valid_call(candidate, declarations, names)
        if why:
            problems.append(why)
        else:
            called.add(candidate.function_calls[0].name)
            wire = result.to_wire("r")["candidates"][0]
            assert wire["finishReason"] == "STOP"
            assert list(wire["content"]["parts"][0]) == ["functionCall"]
    print(
        f"\n{REQUESTS - len(problems)}/{REQUESTS} mode ANY answers are valid calls; called {sorted(called)}"
    )
    assert not problems, problems[:5]
    assert len(called) >= 3  # the grammar picks among the functions, not one every time


def test_auto_none_and_validated(backend: TransformersBackend) -> None:
    declarations = [WEATHER, ADD]
    names = ["get_weather", "add"]
    auto, none, validated, plain = generate(
        backend,
        [
            request("What is the weather in Paris?", declarations, "AUTO", max_tokens=48),
            request("What is the weather in Paris?", declarations, "NONE", max_tokens=16),
            request("What is 2 plus 3?", declarations, "VALIDATED", ["add"], max_tokens=48),
            request("Tell me a short story.", declarations, "VALIDATED", max_tokens=16),
        ],
    )
    for result in (auto, validated, plain):  # text, or a valid call
        (candidate,) = result.candidates
        if candidate.function_calls:
            assert valid_call(candidate, declarations, names) == ""
        else:
            assert candidate.text
    for result in (validated, plain):  # VALIDATED's text never starts like a call
        (candidate,) = result.candidates  # (unless the call itself ran out of tokens)
        cut = candidate.finish_reason == "MAX_TOKENS"
        assert candidate.function_calls or cut or not candidate.text.startswith("{")
    (silent,) = none.candidates
    assert silent.function_calls == () and silent.text
    assert none.prompt_tokens < auto.prompt_tokens  # NONE does not list the functions


def test_a_call_and_its_response_are_carried_into_the_prompt(
    backend: TransformersBackend,
) -> None:
    conversation = [
        {"role": "user", "parts": [{"text": "What is the weather in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {
                        "name": "get_weather",
                        "args": {"city": "Paris", "unit": "celsius"},
                    }
                }
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temperature": 21}}}
            ],
        },
    ]
    follow_up = request("", [WEATHER], "AUTO", contents=conversation, max_tokens=24)
    prompt = backend._template(follow_up)
    assert '{"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}}' in prompt
    assert 'Result of get_weather: {"temperature": 21}' in prompt
    (result,) = generate(backend, [follow_up])
    assert result.candidates[0].text or result.candidates[0].function_calls
