"""Function calling without a model: reading tools and toolConfig, the capability check,
the grammar for mode ANY/VALIDATED, the prompt, reading answers back, the wire form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from overnight.backends.chat import chat_prompt
from overnight.backends.tools import (
    call_schema,
    chat_messages,
    constraint_for,
    native_tools,
    read_calls,
)
from overnight.domain.capabilities import Capabilities, check_generate
from overnight.domain.requests import FunctionCall, GenerateRequest
from overnight.domain.results import Candidate, GenerateResult
from overnight.domain.tools import FunctionCallingMode, function_tools
from overnight.errors import RequestRejected

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "OBJECT",
        "properties": {
            "city": {"type": "STRING"},
            "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
}
ADD = {
    "name": "add",
    "parametersJsonSchema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
PING = {"name": "ping"}
LOCAL = Capabilities(model_version="local-lm", generate=True, function_calling=True)
CALLING = "toolConfig.functionCallingConfig"


def gen(
    *declarations: dict[str, Any],
    mode: str | None = None,
    allowed: list[str] | None = None,
    contents: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> GenerateRequest:
    body: dict[str, Any] = {
        "contents": contents or [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
        **fields,
    }
    if declarations:
        body["tools"] = [{"functionDeclarations": list(declarations)}]
    if mode is not None or allowed is not None:
        config: dict[str, Any] = {"mode": mode} if mode else {}
        if allowed is not None:
            config["allowedFunctionNames"] = allowed
        body["toolConfig"] = {"functionCallingConfig": config}
    return GenerateRequest.model_validate(body)


def rejected(request: GenerateRequest, caps: Capabilities = LOCAL) -> str:
    with pytest.raises(RequestRejected) as info:
        check_generate(request, caps)
    return info.value.message


# ---- reading tools and toolConfig ---------------------------------------------------


def test_declarations_and_modes_are_read() -> None:
    tools = function_tools(gen(WEATHER, ADD))
    assert tools is not None
    assert tools.mode is FunctionCallingMode.AUTO
    assert [d.name for d in tools.offered] == ["get_weather", "add"]
    assert tools.declarations[1].path == "tools[0].functionDeclarations[1]"
    narrowed = function_tools(gen(WEATHER, ADD, mode="any", allowed=["add"]))
    assert narrowed is not None and narrowed.mode is FunctionCallingMode.ANY
    assert [d.name for d in narrowed.offered] == ["add"]
    silent = function_tools(gen(WEATHER, mode="NONE"))
    assert silent is not None and silent.offered == ()
    assert function_tools(gen()) is None
    assert function_tools(gen(mode="AUTO")) is None


def test_snake_case_tools_are_read() -> None:
    request = GenerateRequest.model_validate(
        {
            "contents": [{"parts": [{"text": "x"}]}],
            "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {}}]}],
            "tool_config": {"function_calling_config": {"mode": "ANY"}},
        }
    )
    tools = function_tools(request)
    assert tools is not None and tools.mode is FunctionCallingMode.ANY
    assert tools.declarations[0].parameters_json_schema == {}


@pytest.mark.parametrize(
    ("request_", "where"),
    [
        (gen({"name": "9lives"}), "tools[0].functionDeclarations[0].name:"),
        (gen(PING, PING), "tools[0].functionDeclarations[1].name:"),
        (gen({"name": "f", "color": "red"}), "tools[0].functionDeclarations[0].color:"),
        (gen(PING, mode="SOMETIMES"), "toolConfig.functionCallingConfig.mode:"),
        (gen(PING, mode="ANY", allowed=["pong"]), f"{CALLING}.allowedFunctionNames[0]:"),
        (gen(PING, mode="AUTO", allowed=["ping"]), f"{CALLING}.allowedFunctionNames:"),
        (gen(mode="ANY"), "toolConfig.functionCallingConfig.mode:"),
        (
            gen({**ADD, "parameters": WEATHER["parameters"]}),
            "tools[0].functionDeclarations[0]:",
        ),
    ],
)
def test_bad_tools_name_the_field(request_: GenerateRequest, where: str) -> None:
    assert rejected(request_).startswith(where)


# ---- the capability check -------------------------------------------------------------


@pytest.mark.parametrize("tool", ["googleSearch", "codeExecution", "urlContext", "retrieval"])
def test_builtin_tools_are_refused_by_name_on_a_local_model(tool: str) -> None:
    request = GenerateRequest.model_validate(
        {
            "contents": [{"parts": [{"text": "x"}]}],
            "tools": [{"functionDeclarations": [PING]}, {tool: {}}],
        }
    )
    message = rejected(request)
    assert message.startswith(f"tools[1].{tool}: ")
    assert "supports only functionDeclarations" in message


def test_function_turns_pass_where_function_calling_is_supported() -> None:
    request = gen(WEATHER, contents=_conversation())
    check_generate(request, LOCAL)
    plain = Capabilities(model_version="text-lm", generate=True)
    assert rejected(request, plain).startswith("contents[1].parts[0].functionCall:")


def test_no_tools_and_a_tool_config_alone_pass() -> None:
    check_generate(gen(), LOCAL)
    check_generate(gen(mode="NONE"), LOCAL)


# ---- the grammar ---------------------------------------------------------------------


def test_any_builds_one_call_schema_over_the_allowed_functions() -> None:
    constraint, where = constraint_for(gen(WEATHER, ADD, PING, mode="ANY"))
    assert constraint is not None and constraint.kind == "schema" and where == "tools"
    schema = constraint.json_schema
    assert schema is not None and len(schema["anyOf"]) == 3
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate({"name": "get_weather", "args": {"city": "Paris"}})
    validator.validate({"name": "ping", "args": {}})
    for bad in (
        {"name": "get_weather", "args": {"unit": "kelvin"}},
        {"name": "add", "args": {"a": 1}},
        {"name": "ping", "args": {"x": 1}},
        {"name": "nope", "args": {}},
    ):
        assert not validator.is_valid(bad), bad
    only, _ = constraint_for(gen(WEATHER, ADD, mode="ANY", allowed=["add"]))
    assert only is not None and only.json_schema is not None
    assert only.json_schema["properties"]["name"] == {"const": "add"}


def test_auto_and_none_leave_decoding_to_generation_config() -> None:
    assert constraint_for(gen(WEATHER)) == (None, "generationConfig.responseMimeType")
    json_mode = gen(WEATHER, mode="NONE", generationConfig={"responseMimeType": "application/json"})
    constraint, _ = constraint_for(json_mode)
    assert constraint is not None and constraint.kind == "json"


def test_any_with_a_response_schema_is_refused() -> None:
    request = gen(
        WEATHER,
        mode="ANY",
        generationConfig={
            "responseMimeType": "application/json",
            "responseSchema": {"type": "STRING"},
        },
    )
    with pytest.raises(RequestRejected, match=r"^toolConfig.functionCallingConfig.mode: ANY"):
        constraint_for(request)


def test_parameters_that_are_not_an_object_are_refused() -> None:
    request = gen({"name": "f", "parameters": {"type": "STRING"}}, mode="ANY")
    with pytest.raises(RequestRejected, match=r"^tools\[0\].functionDeclarations\[0\].parameters:"):
        constraint_for(request)
    bad = gen({"name": "f", "parameters": {"type": "OBJECT", "properties": {"x": {"type": "FOO"}}}})
    with pytest.raises(RequestRejected, match=r"parameters.properties.x.type: unknown type"):
        call_schema(function_tools(bad))  # type: ignore[arg-type]


def test_validated_is_a_call_or_text_grammar_that_compiles() -> None:
    xgrammar = pytest.importorskip("xgrammar")
    constraint, _ = constraint_for(gen(WEATHER, PING, mode="VALIDATED"))
    assert constraint is not None and constraint.kind == "grammar" and constraint.ebnf
    grammar = xgrammar.Grammar.from_ebnf(constraint.ebnf)
    assert "root" in str(grammar)


# ---- reading the answer ---------------------------------------------------------------


def answer(request: GenerateRequest, *texts: str, reason: str = "STOP") -> list[Candidate]:
    result = GenerateResult([Candidate(t, reason, 5) for t in texts], 10, "m")
    return read_calls(request, result).candidates


def test_any_answers_become_function_calls() -> None:
    (call,) = answer(gen(WEATHER, mode="ANY"), '{"name": "get_weather", "args": {"city": "Oslo"}}')
    assert call.text == "" and call.function_calls == (
        FunctionCall(name="get_weather", args={"city": "Oslo"}),
    )


def test_a_cut_off_call_stays_text() -> None:
    (cut,) = answer(gen(WEATHER, mode="ANY"), '{"name": "get_weather", "ar', reason="MAX_TOKENS")
    assert cut.function_calls == () and cut.finish_reason == "MAX_TOKENS"


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "args": {"city": "Oslo"}}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
        '[{"name": "get_weather", "parameters": {"city": "Oslo"}}]',
        '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}',
    ],
)
def test_auto_reads_the_common_call_forms(text: str) -> None:
    (call,) = answer(gen(WEATHER), text)
    assert call.function_calls == (FunctionCall(name="get_weather", args={"city": "Oslo"}),)


def test_auto_keeps_text_before_tagged_calls_and_reads_several() -> None:
    text = 'Let me check.\n<tool_call>{"name": "ping"}</tool_call><tool_call>{"name": "ping", "args": {}}</tool_call>'
    (call,) = answer(gen(PING), text)
    assert call.text == "Let me check."
    assert [c.name for c in call.function_calls] == ["ping", "ping"]


@pytest.mark.parametrize(
    "text",
    [
        "It is sunny in Oslo.",
        '{"name": "launch_rockets", "args": {}}',  # not declared
        '{"name": "get_weather", "args": "Oslo"}',  # args not an object
        '{"name": "get_weather", "args": {}, "confidence": 1}',  # not a call's shape
        '{"city": "Oslo"}',
    ],
)
def test_auto_leaves_other_answers_as_text(text: str) -> None:
    (kept,) = answer(gen(WEATHER), text)
    assert kept.function_calls == () and kept.text == text


def test_none_and_disallowed_names_are_never_calls() -> None:
    text = '{"name": "get_weather", "args": {"city": "Oslo"}}'
    assert answer(gen(WEATHER, mode="NONE"), text)[0].function_calls == ()
    narrowed = gen(WEATHER, PING, mode="VALIDATED", allowed=["ping"])
    assert answer(narrowed, text)[0].function_calls == ()


def test_validated_reads_only_the_grammar_call_branch() -> None:
    request = gen(WEATHER, mode="VALIDATED")
    text = '{"name": "get_weather", "args": {"city": "Oslo"}}'
    assert answer(request, text)[0].function_calls
    assert answer(request, " " + text)[0].function_calls == ()


# ---- the prompt ----------------------------------------------------------------------


def _conversation() -> list[dict[str, Any]]:
    return [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}],
        },
    ]


def test_plain_prompt_lists_functions_and_renders_earlier_turns() -> None:
    request = gen(
        WEATHER, contents=_conversation(), systemInstruction={"parts": [{"text": "Be terse."}]}
    )
    messages, specs = chat_messages(request, native=False)
    assert specs is None
    system = messages[0]["content"]
    assert system.startswith("Be terse.\n\nYou can call these functions")
    assert '"name": "get_weather"' in system and "plain text" in system
    assert messages[2] == {
        "role": "assistant",
        "content": '{"name": "get_weather", "args": {"city": "Paris"}}',
    }
    assert messages[3] == {"role": "user", "content": 'Result of get_weather: {"temp": 21}'}
    any_messages, _ = chat_messages(gen(WEATHER, mode="ANY"), native=False)
    assert "Answer now with a call" in any_messages[0]["content"]
    none_messages, _ = chat_messages(gen(WEATHER, mode="NONE"), native=False)
    assert none_messages == [{"role": "user", "content": "Weather in Paris?"}]


def test_native_prompt_passes_tools_and_tool_messages() -> None:
    messages, specs = chat_messages(gen(WEATHER, contents=_conversation()), native=True)
    assert specs is not None and specs[0]["function"]["name"] == "get_weather"
    assert specs[0]["function"]["parameters"]["properties"]["city"] == {"type": "string"}
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert messages[2] == {"role": "tool", "name": "get_weather", "content": '{"temp": 21}'}


class TemplateTokenizer:
    """Just enough of a Hugging Face tokenizer for ``chat_prompt``."""

    def __init__(self, chat_template: str) -> None:
        self.chat_template = chat_template
        self.calls: list[dict[str, Any]] = []

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> str:
        self.calls.append({"messages": messages, **kwargs})
        return json.dumps(messages)


def test_chat_prompt_picks_the_form_from_the_template() -> None:
    native = TemplateTokenizer("{% if tools %}{{ tools }}{% endif %}")
    plain = TemplateTokenizer("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert native_tools(native) and not native_tools(plain)
    chat_prompt(native, gen(WEATHER))
    chat_prompt(plain, gen(WEATHER))
    assert native.calls[0]["tools"][0]["function"]["name"] == "get_weather"
    assert plain.calls[0]["tools"] is None
    assert "You can call these functions" in plain.calls[0]["messages"][0]["content"]


def test_requests_without_tools_read_as_before() -> None:
    request = gen(
        contents=[
            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
            {"role": "model", "parts": [{"text": "c"}]},
            {"role": "user", "parts": [{"text": "d"}]},
        ],
        systemInstruction={"parts": [{"text": ""}]},
    )
    messages, specs = chat_messages(request, native=False)
    assert specs is None
    assert messages == [
        {"role": "system", "content": ""},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]


# ---- the wire ------------------------------------------------------------------------


def test_function_call_candidates_on_the_wire() -> None:
    call = FunctionCall(name="get_weather", args={"city": "Oslo"})
    result = GenerateResult(
        [
            Candidate("", "STOP", 9, (call,)),
            Candidate("Hm.", "STOP", 2, (call,)),
            Candidate("t", "STOP", 1),
        ],
        10,
        "m",
    )
    parts = [c["content"]["parts"] for c in result.to_wire("r")["candidates"]]
    assert parts[0] == [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]
    assert parts[1][0] == {"text": "Hm."} and "functionCall" in parts[1][1]
    assert parts[2] == [{"text": "t"}]


def test_the_results_table_shows_calls(tmp_path: Path) -> None:
    from rich.console import Console

    from overnight.cli.show import render_results

    call = FunctionCall(name="add", args={"a": 1})
    line = {
        "key": "k",
        "response": GenerateResult([Candidate("", "STOP", 3, (call,))], 5, "m").to_wire(),
    }
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(line) + "\n")
    console = Console(record=True, width=200)
    console.print(render_results(path))
    assert 'add({"a":1})' in console.export_text()


def test_empty_parameters_are_an_object_of_any_arguments() -> None:
    constraint, _ = constraint_for(gen({"name": "f", "parametersJsonSchema": {}}, mode="ANY"))
    assert constraint is not None and constraint.json_schema is not None
    assert constraint.json_schema["properties"]["args"] == {"type": "object"}
