"""Function calling through an OpenAI-compatible server: Gemini's tools both ways.

Out (``tool_fields``, ``chat_messages``):

- ``functionDeclarations`` → ``tools: [{"type": "function", "function": {name,
  description, parameters}}]``, the parameters as JSON Schema (Gemini's Schema
  converted by ``backends.schema``, ``parametersJsonSchema`` as it came);
- ``functionCallingConfig.mode`` → ``tool_choice``: ``AUTO`` and ``VALIDATED`` →
  ``"auto"``, ``NONE`` → ``"none"``, ``ANY`` → ``"required"``, or
  ``{"type": "function", "function": {"name": ...}}`` when one name is allowed. With
  ``allowedFunctionNames`` only the allowed functions are sent;
- a ``model`` turn's ``functionCall`` parts → one assistant message with
  ``tool_calls`` (arguments as JSON text), and each ``functionResponse`` part → a
  ``tool`` message. A call without an ``id`` gets ``call_N``, and a response without
  one answers the oldest unanswered call of its name.

Back (``reply_calls``): a choice's ``tool_calls`` → ``functionCall`` parts (with the
upstream's ids, arguments parsed); arguments that are not a JSON object make the
candidate ``MALFORMED_FUNCTION_CALL``, as Gemini says of a call it could not read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from overnight.backends.tools import parameters_schema
from overnight.domain.requests import Content, FunctionCall, GenerateRequest
from overnight.domain.tools import FunctionCallingMode, function_tools

ContentOf = Callable[[Content], Any]


def tool_fields(request: GenerateRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` for the chat body; empty when no function is declared.

    Raises RequestRejected naming a field at fault (a parameters schema, a mode …).
    """
    tools = function_tools(request)
    if tools is None:
        return {}
    mode = tools.mode
    sent = (
        tools.offered
        if mode in (FunctionCallingMode.ANY, FunctionCallingMode.VALIDATED)
        else tools.declarations
    )
    specs = []
    for declaration in sent:
        function: dict[str, Any] = {"name": declaration.name}
        if declaration.description:
            function["description"] = declaration.description
        function["parameters"] = parameters_schema(declaration)
        specs.append({"type": "function", "function": function})
    choice: Any = {
        FunctionCallingMode.AUTO: "auto",
        FunctionCallingMode.VALIDATED: "auto",
        FunctionCallingMode.NONE: "none",
        FunctionCallingMode.ANY: "required",
    }[mode]
    if mode is FunctionCallingMode.ANY and len(sent) == 1:
        choice = {"type": "function", "function": {"name": sent[0].name}}
    return {"tools": specs, "tool_choice": choice}


def chat_messages(contents: Sequence[Content], content_of: ContentOf) -> list[dict[str, Any]]:
    """The chat messages for ``contents``; ``content_of`` renders a turn's other parts
    (text, images) as a message's ``content``."""
    ids = _CallIds()
    messages: list[dict[str, Any]] = []
    for content in contents:
        role = "assistant" if content.role == "model" else "user"
        calls = [p.function_call for p in content.parts if p.function_call is not None]
        responses = [p.function_response for p in content.parts if p.function_response is not None]
        rest = Content(
            role=content.role,
            parts=[
                p for p in content.parts if p.function_call is None and p.function_response is None
            ],
        )
        if not calls and not responses:
            messages.append({"role": role, "content": content_of(content)})
            continue
        if calls:
            tool_calls = [
                {
                    "id": ids.call(call.name, call.id),
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.args or {})},
                }
                for call in calls
            ]
            text = content_of(rest) if rest.parts else None
            messages.append({"role": "assistant", "content": text, "tool_calls": tool_calls})
        for response in responses:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": ids.response(response.name, response.id),
                    "content": json.dumps(response.response or {}),
                }
            )
        if responses and rest.parts:
            messages.append({"role": role, "content": content_of(rest)})
    return messages


def reply_calls(message: Any) -> tuple[FunctionCall, ...] | None:
    """The calls in a reply's ``message``; None when one cannot be read."""
    raw = message.get("tool_calls") if isinstance(message, dict) else None
    if not raw:
        return ()
    calls = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return None
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                return None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return None
        call_id = item.get("id")
        calls.append(
            FunctionCall(
                id=call_id if isinstance(call_id, str) else None,
                name=function["name"],
                args=arguments,
            )
        )
    return tuple(calls)


class _CallIds:
    """Ids for calls that came without one, and which call each response answers."""

    def __init__(self) -> None:
        self.count = 0
        self.open: dict[str, list[str]] = {}

    def call(self, name: str, given: str | None) -> str:
        made = given or self._new()
        self.open.setdefault(name, []).append(made)
        return made

    def response(self, name: str, given: str | None) -> str:
        waiting = self.open.get(name) or []
        if given is not None:
            if given in waiting:
                waiting.remove(given)
            return given
        return waiting.pop(0) if waiting else self._new()

    def _new(self) -> str:
        self.count += 1
        return f"call_{self.count}"
