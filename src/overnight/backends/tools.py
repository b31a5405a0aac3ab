"""Function calling on local models (transformers, vLLM): prompt, grammar and answer.

The request's functions (``domain.tools.function_tools``) reach the model three ways:

- **The prompt** (``chat_messages``). A chat template that renders tools itself (its
  source mentions ``tools``: Qwen, Llama 3.1, Hermes, Mistral …) gets them as
  ``tools=[{"type": "function", "function": {...}}]``, earlier calls as assistant
  ``tool_calls`` and function responses as ``tool`` messages. Any other template
  (SmolLM2's) reads a plain-text form, documented in docs/function-calling.md: the
  functions as JSON lines in the system message, an earlier call as the JSON object
  the model is asked to write, ``{"name": ..., "args": {...}}``, and a function's
  response as ``Result of NAME: {...}`` in the user's turn.
- **The grammar** (``constraint_for``). In mode ``ANY`` the answer is constrained to
  ``{"name": <an allowed name>, "args": <that function's parameters>}``: one JSON
  Schema, an ``anyOf`` with one branch per function, through the same xgrammar path as
  ``responseSchema`` (``backends.schema``). Its ``args`` validate by construction. In
  ``VALIDATED`` the answer is that call *or* text that does not start with ``{`` (one
  EBNF grammar, the union of the two).
- **The answer** (``read_calls``). In ``ANY`` the JSON becomes a ``functionCall`` part,
  and in ``VALIDATED`` an answer that starts with ``{``. In ``AUTO`` the text is read for
  a call in the plain-text form, in ``<tool_call>…</tool_call>`` tags, or as a list of
  calls (``arguments`` or ``parameters`` for ``args`` too); a call to a function that is
  not offered, or anything else, stays text. In ``NONE`` the functions are not shown and
  nothing is read.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from overnight.backends.schema import (
    OutputConstraint,
    check_json_schema,
    gemini_to_json_schema,
    grammar_constraint,
    output_constraint,
    schema_constraint,
)
from overnight.domain.requests import Content, FunctionCall, GenerateRequest, Part
from overnight.domain.results import Candidate, GenerateResult
from overnight.domain.tools import (
    FunctionCallingMode,
    FunctionDeclaration,
    FunctionTools,
    function_tools,
)
from overnight.errors import RequestRejected

_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCED = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


# ---- the grammar -----------------------------------------------------------------------


def parameters_schema(declaration: FunctionDeclaration) -> dict[str, Any]:
    """The JSON Schema of a function's ``args``. Raises RequestRejected naming the field."""
    if declaration.parameters is not None:
        path = f"{declaration.path}.parameters"
        schema = gemini_to_json_schema(declaration.parameters, path)
    elif declaration.parameters_json_schema is not None:
        path = f"{declaration.path}.parametersJsonSchema"
        check_json_schema(declaration.parameters_json_schema, path)
        plain = declaration.parameters_json_schema
        schema = dict(_NO_ARGUMENTS) if plain is True else dict(plain)
    else:
        return dict(_NO_ARGUMENTS)
    kind = schema.get("type")
    if kind is None and not {"properties", "anyOf", "oneOf", "allOf", "$ref"} & set(schema):
        schema["type"] = kind = "object"  # {} says nothing: an object of any arguments
    if kind not in (None, "object"):
        raise RequestRejected(
            f"{path}: the parameters of a function are an object whose properties are "
            f"its arguments; got type {kind or 'none'}"
        )
    return schema


def call_schema(tools: FunctionTools) -> dict[str, Any]:
    """The JSON Schema of one call to any offered function: ``{"name", "args"}``."""
    branches = [
        {
            "type": "object",
            "properties": {"name": {"const": d.name}, "args": parameters_schema(d)},
            "required": ["name", "args"],
            "additionalProperties": False,
        }
        for d in tools.offered
    ]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def constraint_for(request: GenerateRequest) -> tuple[OutputConstraint | None, str]:
    """What the answer must be, and the field that asks for it (for error messages):
    a call in mode ``ANY``, else whatever generationConfig asks for (``responseSchema``
    …), else nothing. Raises RequestRejected naming the field at fault."""
    tools = function_tools(request)
    config = request.generation_config
    if tools is None or tools.mode not in _CONSTRAINED:
        return output_constraint(config), _schema_field(config)
    if output_constraint(config) is not None:
        raise RequestRejected(
            f"toolConfig.functionCallingConfig.mode: {tools.mode.value} constrains the "
            f"answer to a function call, so {_schema_field(config)} cannot apply too; use one"
        )
    schema = call_schema(tools)
    if tools.mode is FunctionCallingMode.ANY:
        return schema_constraint(schema), "tools"
    return grammar_constraint(_call_or_text(json.dumps(schema, ensure_ascii=False))), "tools"


_CONSTRAINED = (FunctionCallingMode.ANY, FunctionCallingMode.VALIDATED)
_TEXT = "root ::= [^{] [^]*"  # any text that does not start like a call


@functools.lru_cache(maxsize=256)
def _call_or_text(schema: str) -> str:
    """The EBNF of mode VALIDATED: a call valid against ``schema``, or text."""
    try:
        import xgrammar
    except ImportError:
        raise RequestRejected(
            "toolConfig.functionCallingConfig.mode: VALIDATED needs xgrammar; run: "
            "pip install xgrammar"
        ) from None
    try:
        call = xgrammar.Grammar.from_json_schema(schema, any_whitespace=False)
    except (RuntimeError, ValueError) as exc:
        why = str(exc).strip().splitlines()[-1] if str(exc) else ""
        raise RequestRejected(f"tools: the grammar library cannot compile it: {why}") from None
    return str(xgrammar.Grammar.union(call, xgrammar.Grammar.from_ebnf(_TEXT)))


def _schema_field(config: Any) -> str:
    if config is not None and config.response_json_schema is not None:
        return "generationConfig.responseJsonSchema"
    if config is not None and config.response_schema is not None:
        return "generationConfig.responseSchema"
    return "generationConfig.responseMimeType"


# ---- the answer ------------------------------------------------------------------------


def read_calls(request: GenerateRequest, result: GenerateResult) -> GenerateResult:
    """``result`` with each candidate's call(s) as ``functionCall`` parts, where the
    request offers functions and the candidate's text is a call to one of them."""
    tools = function_tools(request)
    if tools is None or not tools.offered:
        return result
    if tools.mode is not FunctionCallingMode.ANY and request.config.response_mime_type not in (
        None,
        "",
        "text/plain",
    ):
        return result  # a structured answer (responseSchema …) is the answer, as text
    candidates = [_read(candidate, tools) for candidate in result.candidates]
    return replace(result, candidates=candidates)


def _read(candidate: Candidate, tools: FunctionTools) -> Candidate:
    if tools.mode is FunctionCallingMode.VALIDATED and not candidate.text.startswith("{"):
        return candidate  # the grammar's text branch: only its call branch starts so
    text = candidate.text.strip()
    tagged = _TAGGED.findall(text)
    before = text[: text.find("<tool_call>")].strip() if tagged else ""
    values = [_json(t) for t in tagged] if tagged else [_json(_unfence(text))]
    found: list[FunctionCall] = []
    for value in values:
        for one in value if isinstance(value, list) else [value]:
            call = _call(one, tools)
            if call is None:
                return candidate
            found.append(call)
    if not found:
        return candidate
    return replace(candidate, text=before, function_calls=tuple(found))


def _unfence(text: str) -> str:
    match = _FENCED.match(text)
    return match.group(1) if match else text


def _json(text: str) -> Any:
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call(value: Any, tools: FunctionTools) -> FunctionCall | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI's {"type": "function", "function": …}
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or tools.declared(name) is None:
        return None
    keys = [k for k in ("args", "arguments", "parameters") if k in value]
    if set(value) - {"name", "type", *keys} or len(keys) > 1:
        return None
    args = value[keys[0]] if keys else {}
    if isinstance(args, str):
        args = _json(args.strip() or "{}")
    if not isinstance(args, dict):
        return None
    return FunctionCall(name=name, args=args)


# ---- the prompt ------------------------------------------------------------------------


def native_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tools itself."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default, or a "tool_use" one
        return "tool_use" in template or "tools" in str(template.get("default", ""))
    return isinstance(template, str) and "tools" in template


def chat_messages(
    request: GenerateRequest, *, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The chat messages for ``request``, and the ``tools`` to give a template that
    renders them (``native``); see the module docstring for the two forms.

    Raises RequestRejected when a declared function's parameters are not a valid schema.
    """
    tools = function_tools(request)
    offered = tools.offered if tools is not None else ()
    system = request.system_instruction.text if request.system_instruction is not None else None
    if offered and not native:
        listing = _tool_listing(offered, tools.mode if tools is not None else None)
        system = f"{system}\n\n{listing}" if system else listing
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    for content in request.contents:
        messages.extend(_native_turn(content) if native else [_plain_turn(content)])
    specs = [_spec(d) for d in offered] if native and offered else None
    return messages, specs


def _spec(declaration: FunctionDeclaration) -> dict[str, Any]:
    function: dict[str, Any] = {"name": declaration.name}
    if declaration.description:
        function["description"] = declaration.description
    function["parameters"] = parameters_schema(declaration)
    return {"type": "function", "function": function}


def _tool_listing(offered: Iterable[FunctionDeclaration], mode: FunctionCallingMode | None) -> str:
    lines = ["You can call these functions (each with the JSON Schema of its arguments):"]
    lines += [_dumps(_spec(d)["function"]) for d in offered]
    lines.append(
        "To call a function, answer with only a JSON object of this form and nothing else: "
        '{"name": "<function name>", "args": {<arguments>}}'
    )
    if mode is FunctionCallingMode.ANY:
        lines.append("Answer now with a call to one of the functions.")
    else:
        lines.append("If no function is needed, answer in plain text.")
    return "\n".join(lines)


def _role(content: Content) -> str:
    return "assistant" if content.role == "model" else "user"


def _plain_turn(content: Content) -> dict[str, Any]:
    if not any(p.function_call or p.function_response for p in content.parts):
        return {"role": _role(content), "content": content.text}
    pieces = [_plain_part(part) for part in content.parts if not part.thought]
    return {"role": _role(content), "content": "\n".join(p for p in pieces if p)}


def _plain_part(part: Part) -> str:
    if part.function_call is not None:
        call = part.function_call
        return _dumps({"name": call.name, "args": call.args or {}})
    if part.function_response is not None:
        response = part.function_response
        return f"Result of {response.name}: {_dumps(response.response or {})}"
    return part.text or ""


def _native_turn(content: Content) -> list[dict[str, Any]]:
    text = content.text
    calls = [p.function_call for p in content.parts if p.function_call is not None]
    responses = [p.function_response for p in content.parts if p.function_response is not None]
    messages: list[dict[str, Any]] = []
    if calls:
        tool_calls = [
            {"type": "function", "function": {"name": c.name, "arguments": c.args or {}}}
            for c in calls
        ]
        return [{"role": "assistant", "content": text, "tool_calls": tool_calls}]
    for response in responses:
        messages.append(
            {"role": "tool", "name": response.name, "content": _dumps(response.response or {})}
        )
    if text or not responses:
        messages.append({"role": _role(content), "content": text})
    return messages


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
