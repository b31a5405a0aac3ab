"""Function calling in a request: ``tools[].functionDeclarations`` and ``toolConfig``.

``function_tools`` reads a GenerateContentRequest's declarations and its
``toolConfig.functionCallingConfig`` (spec §11.1) into one ``FunctionTools``: the
declared functions, the mode (``AUTO``, ``ANY``, ``NONE``, ``VALIDATED``; default
``AUTO``) and the names the model may call (``allowedFunctionNames``, else every
declared one). It checks what Gemini checks (names, duplicates, allowed names that
name a declared function, a mode that needs declarations) and raises
``RequestRejected`` naming the field at fault.

``check_local_tools`` is for models that run here: only ``functionDeclarations`` can be
served; ``googleSearch``, ``codeExecution``, ``urlContext`` and the other built-in tools
need Google's servers, so each is refused by name.

Pure: the parameter schemas are carried as they came; turning them into a grammar is
the backends' work (``backends.tools``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from overnight.domain.requests import GenerateRequest
from overnight.errors import RequestRejected

# Gemini's rule for FunctionDeclaration.name.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
_DECLARATION_FIELDS = frozenset(
    {
        "name",
        "description",
        "parameters",
        "parametersJsonSchema",
        "response",
        "responseJsonSchema",
        "behavior",
    }
)
_CONFIG_FIELDS = frozenset({"mode", "allowedFunctionNames", "streamFunctionCallArguments"})


class FunctionCallingMode(StrEnum):
    """``toolConfig.functionCallingConfig.mode``."""

    AUTO = "AUTO"  # text or a call, as the model decides
    ANY = "ANY"  # always a call, to one of the allowed functions
    NONE = "NONE"  # never a call: as if no functions were declared
    VALIDATED = "VALIDATED"  # text or a call; a call is always valid


@dataclass(frozen=True, slots=True)
class FunctionDeclaration:
    """One declared function. ``parameters`` is Gemini's OpenAPI-subset Schema,
    ``parameters_json_schema`` plain JSON Schema (at most one is set); ``path`` names
    it in error messages (``tools[0].functionDeclarations[1]``)."""

    name: str
    description: str | None
    parameters: Mapping[str, Any] | None
    parameters_json_schema: Any
    path: str


@dataclass(frozen=True, slots=True)
class FunctionTools:
    """The functions a request declares and how the model may call them."""

    declarations: tuple[FunctionDeclaration, ...]
    mode: FunctionCallingMode
    allowed_names: tuple[str, ...]  # allowedFunctionNames, else every declared name

    @property
    def offered(self) -> tuple[FunctionDeclaration, ...]:
        """The functions the model is told about and may call: none in mode NONE."""
        if self.mode is FunctionCallingMode.NONE:
            return ()
        return tuple(d for d in self.declarations if d.name in self.allowed_names)

    def declared(self, name: str) -> FunctionDeclaration | None:
        """The offered function called ``name``, if there is one."""
        return next((d for d in self.offered if d.name == name), None)


def function_tools(request: GenerateRequest) -> FunctionTools | None:
    """The request's function declarations and calling mode; None when it declares none
    and its toolConfig asks for nothing.

    Raises ``RequestRejected`` naming the field, e.g.
    ``toolConfig.functionCallingConfig.allowedFunctionNames[0]: "lookup" is not a declared function``.
    """
    declarations: list[FunctionDeclaration] = []
    for i, tool in enumerate(request.tools or ()):
        fields = _fields(tool, f"tools[{i}]")
        raw = fields.get("functionDeclarations")
        if raw is None:
            continue
        if not isinstance(raw, list):
            raise RequestRejected(f"tools[{i}].functionDeclarations: must be a list")
        for j, one in enumerate(raw):
            declarations.append(_declaration(one, f"tools[{i}].functionDeclarations[{j}]"))
    seen: set[str] = set()
    for declaration in declarations:
        if declaration.name in seen:
            raise RequestRejected(
                f'{declaration.path}.name: "{declaration.name}" is declared twice; '
                "function names must be unique"
            )
        seen.add(declaration.name)
    mode, allowed = _calling_config(request.tool_config)
    if not declarations:
        if mode in (FunctionCallingMode.ANY, FunctionCallingMode.VALIDATED):
            raise RequestRejected(
                f"toolConfig.functionCallingConfig.mode: {mode.value} needs functions to "
                'call; declare them in tools: [{"functionDeclarations": [...]}]'
            )
        return None
    where = "toolConfig.functionCallingConfig.allowedFunctionNames"
    if allowed is not None:
        if mode not in (FunctionCallingMode.ANY, FunctionCallingMode.VALIDATED):
            raise RequestRejected(
                f"{where}: only allowed with mode ANY or VALIDATED (the mode is {mode.value})"
            )
        for k, name in enumerate(allowed):
            if name not in seen:
                raise RequestRejected(
                    f'{where}[{k}]: "{name}" is not a declared function; declared: '
                    f"{', '.join(d.name for d in declarations)}"
                )
    names = tuple(dict.fromkeys(allowed)) if allowed else tuple(d.name for d in declarations)
    return FunctionTools(tuple(declarations), mode, names)


def check_local_tools(request: GenerateRequest, model_version: str) -> None:
    """Refuse, by name, a built-in tool (``googleSearch``, ``codeExecution``, …) that a
    model running here cannot use; only ``functionDeclarations`` can be served."""
    for i, tool in enumerate(request.tools or ()):
        for name in _fields(tool, f"tools[{i}]"):
            if name != "functionDeclarations":
                raise RequestRejected(
                    f"tools[{i}].{name}: the {name} tool runs on Google's servers; model "
                    f"{model_version} supports only functionDeclarations (function calling). "
                    f'Remove it, or send the request to a model with backend = "gemini"'
                )
    config = _fields(request.tool_config, "toolConfig") if request.tool_config else {}
    for name in config:
        if name != "functionCallingConfig":
            raise RequestRejected(
                f"toolConfig.{name}: not supported by model {model_version}; "
                "only functionCallingConfig is"
            )


def _calling_config(tool_config: Any) -> tuple[FunctionCallingMode, list[str] | None]:
    if tool_config is None:
        return FunctionCallingMode.AUTO, None
    config = _fields(tool_config, "toolConfig").get("functionCallingConfig")
    if config is None:
        return FunctionCallingMode.AUTO, None
    path = "toolConfig.functionCallingConfig"
    fields = _fields(config, path)
    unknown = sorted(set(fields) - _CONFIG_FIELDS)
    if unknown:
        raise RequestRejected(f"{path}.{unknown[0]}: unknown field")
    raw_mode = fields.get("mode")
    if raw_mode in (None, "MODE_UNSPECIFIED"):
        mode = FunctionCallingMode.AUTO
    else:
        try:
            mode = FunctionCallingMode(str(raw_mode).upper())
        except ValueError:
            raise RequestRejected(
                f"{path}.mode: unknown mode {raw_mode!r}; use one of "
                f"{', '.join(m.value for m in FunctionCallingMode)}"
            ) from None
    allowed = fields.get("allowedFunctionNames")
    if allowed is not None and (
        not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed)
    ):
        raise RequestRejected(f"{path}.allowedFunctionNames: must be a list of function names")
    return mode, allowed or None


def _declaration(value: Any, path: str) -> FunctionDeclaration:
    fields = _fields(value, path)
    unknown = sorted(set(fields) - _DECLARATION_FIELDS)
    if unknown:
        raise RequestRejected(
            f"{path}.{unknown[0]}: unknown field; a FunctionDeclaration has "
            f"{', '.join(sorted(_DECLARATION_FIELDS))}"
        )
    name = fields.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RequestRejected(
            f"{path}.name: {name!r} is not a valid function name: start with a letter or "
            "an underscore, then letters, digits, underscores, dots, colons or dashes, "
            "at most 128 characters"
        )
    description = fields.get("description")
    if description is not None and not isinstance(description, str):
        raise RequestRejected(f"{path}.description: must be a string")
    parameters = fields.get("parameters")
    plain = fields.get("parametersJsonSchema")
    if parameters is not None and plain is not None:
        raise RequestRejected(f"{path}: parameters and parametersJsonSchema are both set; use one")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise RequestRejected(f"{path}.parameters: must be a Schema object")
    return FunctionDeclaration(name, description, parameters, plain, path)


def _fields(value: Any, path: str) -> dict[str, Any]:
    """An object's fields by their camelCase names (proto3 JSON accepts both spellings)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True, exclude_none=True)
    if not isinstance(value, Mapping):
        raise RequestRejected(f"{path}: must be an object, got {type(value).__name__}")
    return {_camel(str(name)): item for name, item in value.items() if item is not None}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)
