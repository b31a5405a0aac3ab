"""The fake upstream's function calls: which function a request makes it call.

Deterministic, so tests can assert them. A request that declares functions gets a call
to one (arguments: a minimal valid instance of its parameters, see
:func:`overnight.testing.replies.minimal_instance`) when

- OpenAI: ``tool_choice`` is ``"required"`` (the first function) or names one; with
  ``"auto"`` (or none), when the last message is the user's and its text names a
  declared function (the first one named);
- Gemini: ``toolConfig.functionCallingConfig.mode`` is ``ANY`` (the first of
  ``allowedFunctionNames``, else the first declared); with ``AUTO`` (or none), when the
  last turn is the user's, holds no ``functionResponse``, and its text names a function.

``tool_choice: "none"`` and mode ``NONE`` never call. Otherwise the reply is text, as
without tools (an echo of the last user text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _named(text: str, names: list[str]) -> str | None:
    return next((n for n in names if n and n in text), None)


def openai_call(body: Mapping[str, Any], last_text: str) -> dict[str, Any] | None:
    """The ``function`` spec (name, parameters) an OpenAI request makes the fake call."""
    specs = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if not specs:
        return None
    by_name = {str(s.get("name")): s for s in specs}
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return None
    if choice == "required":
        return specs[0]
    if isinstance(choice, dict):
        return by_name.get(str((choice.get("function") or {}).get("name")))
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if not messages or messages[-1].get("role") != "user":
        return None
    name = _named(last_text, list(by_name))
    return by_name[name] if name else None


def gemini_call(body: Mapping[str, Any], last_text: str) -> dict[str, Any] | None:
    """The declaration (name, parameters) a Gemini request makes the fake call."""
    declarations = [
        d
        for tool in body.get("tools") or []
        if isinstance(tool, dict)
        for d in tool.get("functionDeclarations") or tool.get("function_declarations") or []
        if isinstance(d, dict)
    ]
    if not declarations:
        return None
    by_name = {str(d.get("name")): d for d in declarations}
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = str(config.get("mode") or "AUTO").upper()
    if mode == "NONE":
        return None
    if mode == "ANY":
        allowed = [n for n in config.get("allowedFunctionNames") or [] if n in by_name]
        return by_name[allowed[0]] if allowed else declarations[0]
    contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
    last = contents[-1] if contents else {}
    if last.get("role", "user") != "user" or any(
        isinstance(p, dict) and "functionResponse" in p for p in last.get("parts") or []
    ):
        return None
    name = _named(last_text, list(by_name))
    return by_name[name] if name else None


def parameters_of(spec: Mapping[str, Any]) -> Any:
    """A function's parameters schema, in whichever field it came."""
    return spec.get("parameters") or spec.get("parametersJsonSchema") or {"type": "object"}
