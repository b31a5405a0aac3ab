"""Function calling through the ``openai`` and ``gemini`` backends, against the fake
upstream over real HTTP: Gemini's tools and toolConfig out, function calls back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from overnight.backends.base import check_generate
from overnight.backends.gemini import GeminiBackend
from overnight.backends.openai import OpenAIBackend
from overnight.backends.openai_tools import reply_calls
from overnight.config import ModelSettings
from overnight.domain.requests import FunctionCall, GenerateRequest
from overnight.domain.results import GenerateResult
from overnight.errors import RequestRejected
from overnight.testing.upstream import FakeUpstream

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "OBJECT",
        "properties": {"city": {"type": "STRING", "minLength": 2}},
        "required": ["city"],
    },
}
ADD = {
    "name": "add",
    "parametersJsonSchema": {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 1}},
        "required": ["a"],
    },
}
CONVERSATION = [
    {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
    {
        "role": "model",
        "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "add", "args": {"a": 2}}},
        ],
    },
    {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "add", "response": {"sum": 2}}},
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
        ],
    },
]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(seed=3) as up:
        yield up


def gen(
    text: str = "Weather in Paris?",
    *,
    mode: str | None = None,
    allowed: list[str] | None = None,
    contents: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> GenerateRequest:
    body: dict[str, Any] = {
        "contents": contents or [{"role": "user", "parts": [{"text": text}]}],
        "tools": tools or [{"functionDeclarations": [WEATHER, ADD]}],
    }
    if mode is not None:
        config: dict[str, Any] = {"mode": mode}
        if allowed is not None:
            config["allowedFunctionNames"] = allowed
        body["toolConfig"] = {"functionCallingConfig": config}
    return GenerateRequest.model_validate(body)


def run(backend: Any, *requests: GenerateRequest) -> list[GenerateResult]:
    async def go() -> list[Any]:
        await backend.start()
        try:
            return await backend.generate(list(requests))
        finally:
            await backend.close()

    for request in requests:
        check_generate(request, backend.capabilities)
    outcomes = asyncio.run(go())
    assert all(isinstance(o, GenerateResult) for o in outcomes), outcomes
    return outcomes


def openai(upstream: FakeUpstream) -> OpenAIBackend:
    return OpenAIBackend("up", ModelSettings(backend="openai", base_url=f"{upstream.url}/v1"))


def test_openai_maps_declarations_and_modes_to_tools_and_tool_choice(
    upstream: FakeUpstream,
) -> None:
    called, text, named, narrowed, silent = run(
        openai(upstream),
        gen("Please get_weather for Paris"),
        gen("Hello there"),
        gen(mode="ANY", allowed=["add"]),
        gen(mode="ANY"),
        gen("Please get_weather for Paris", mode="NONE"),
    )
    bodies = [r.body for r in upstream.requests()]
    assert bodies[0]["tool_choice"] == "auto"
    assert bodies[0]["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "minLength": 2}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    assert bodies[0]["tools"][1]["function"]["parameters"] == ADD["parametersJsonSchema"]
    assert bodies[2]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert [t["function"]["name"] for t in bodies[2]["tools"]] == ["add"]
    assert bodies[3]["tool_choice"] == "required"
    assert bodies[4]["tool_choice"] == "none"

    (call,) = called.candidates[0].function_calls
    assert (call.name, call.args) == ("get_weather", {"city": "aa"})
    assert call.id and call.id.startswith("call_")
    wire = called.to_wire("r")["candidates"][0]
    assert wire["finishReason"] == "STOP"
    assert wire["content"]["parts"] == [{"functionCall": call.model_dump(exclude_none=True)}]
    assert text.candidates[0].function_calls == ()
    assert text.candidates[0].text == "echo: Hello there"
    assert named.candidates[0].function_calls[0].args == {"a": 1}
    assert narrowed.candidates[0].function_calls[0].name == "get_weather"
    assert silent.candidates[0].function_calls == ()


def test_openai_carries_calls_and_responses_into_the_conversation(
    upstream: FakeUpstream,
) -> None:
    (result,) = run(openai(upstream), gen(contents=CONVERSATION))
    messages = upstream.requests()[-1].body["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 2}'},
            },
        ],
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "call_2", "content": '{"sum": 2}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}
    assert len(messages) == 4
    assert result.candidates[0].function_calls == ()  # the last turn is a tool result


def test_openai_keeps_the_ids_it_was_given() -> None:
    from overnight.backends.openai_tools import chat_messages

    contents = GenerateRequest.model_validate(
        {
            "contents": [
                {"role": "model", "parts": [{"functionCall": {"id": "abc", "name": "f"}}]},
                {"role": "user", "parts": [{"functionResponse": {"id": "abc", "name": "f"}}]},
            ]
        }
    ).contents
    messages = chat_messages(contents, lambda c: c.text)
    assert messages[0]["tool_calls"][0]["id"] == "abc"
    assert messages[1]["tool_call_id"] == "abc"


def test_openai_reply_calls_read_arguments_and_flag_malformed_ones() -> None:
    good = {
        "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ]
    }
    assert reply_calls(good) == (FunctionCall(id="x", name="f", args={"a": 1}),)
    assert reply_calls({"content": "hi"}) == ()
    for arguments in ("{not json", "[1, 2]"):
        bad = {"tool_calls": [{"function": {"name": "f", "arguments": arguments}}]}
        assert reply_calls(bad) is None


def test_openai_refuses_builtin_tools_by_name(upstream: FakeUpstream) -> None:
    request = gen(tools=[{"googleSearch": {}}])
    with pytest.raises(RequestRejected, match=r"^tools\[0\].googleSearch: "):
        check_generate(request, openai(upstream).capabilities)


def test_gemini_passes_tools_through_and_reads_calls_back(upstream: FakeUpstream) -> None:
    backend = GeminiBackend(
        "up", ModelSettings(backend="gemini", base_url=upstream.url, model="gemini-test")
    )
    search = gen("x", tools=[{"functionDeclarations": [WEATHER]}, {"googleSearch": {}}])
    called, answered = run(backend, gen(mode="ANY", allowed=["add"]), gen(contents=CONVERSATION))
    check_generate(search, backend.capabilities)  # built-in tools pass through too
    sent = [r.body for r in upstream.requests()]
    assert sent[0]["tools"] == [{"functionDeclarations": [WEATHER, ADD]}]
    assert sent[0]["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["add"]}
    }
    assert sent[1]["contents"][1]["parts"][1] == {
        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}}
    }
    assert called.candidates[0].function_calls == (FunctionCall(name="add", args={"a": 1}),)
    wire = called.to_wire("r")
    assert wire["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "add", "args": {"a": 1}}}
    ]
    assert answered.candidates[0].function_calls == ()
