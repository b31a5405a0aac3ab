"""Known fields: finding the names in a request body that its wire type does not have.

Gemini parses every body as proto3 JSON and refuses a name it does not know with
400 INVALID_ARGUMENT, ``Invalid JSON payload received. Unknown name "dispalyName" at
'batch': Cannot find field.``, so a typo is never silently ignored. Overnight does the
same for every body it reads. A ``Shape`` lists the names an object may hold, in both
spellings proto3 JSON accepts (camelCase and snake_case), and the shape of each
value; ``check_known`` raises naming every unknown one, in Gemini's words.

Shapes of the request types come from their pydantic models (``model_shape``), so a
field added there is known everywhere at once.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from overnight.errors import InvalidArgument

MAX_REPORTED = 10  # unknown names named in one message; the rest are counted


@dataclass(frozen=True, slots=True)
class Shape:
    """The names an object may hold (every accepted spelling), each with the shape of
    its value: a ``Shape`` for an object (or a list of objects), None for a value that
    is not checked (a scalar, or a free-form map such as ``metadata``)."""

    fields: Mapping[str, Shape | None]

    @classmethod
    def of(cls, **fields: Shape | None) -> Shape:
        """Fields named in snake_case; each is accepted in camelCase too."""
        return cls({spelling: shape for name, shape in fields.items() for spelling in _both(name)})


def _both(name: str) -> tuple[str, ...]:
    camel = to_camel(name)
    return (name,) if camel == name else (name, camel)


@functools.cache
def model_shape(model: type[BaseModel]) -> Shape:
    """The shape of a wire model: its fields, by name and by alias. Nested models that
    refuse extra fields are walked too; any other value is left to the model."""
    fields: dict[str, Shape | None] = {}
    for name, info in model.model_fields.items():
        shape = _annotation_shape(info.annotation)
        for spelling in {*_both(name), info.alias or name}:
            fields[spelling] = shape
    return Shape(fields)


def _annotation_shape(annotation: Any) -> Shape | None:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType, list):
        for arg in get_args(annotation):
            shape = _annotation_shape(arg)
            if shape is not None:
                return shape
        return None
    if (
        isinstance(annotation, type)
        and issubclass(annotation, BaseModel)
        and annotation.model_config.get("extra") == "forbid"
    ):
        return model_shape(annotation)
    return None


def unknown_fields(
    value: Any, shape: Shape, at: str = "", *, limit: int | None = None
) -> list[tuple[str, str]]:
    """``(name, path of its object)`` for each name ``shape`` does not know, depth first,
    at most ``limit`` of them. A list of objects is walked item by item (``at[0]``,
    ``at[1]``); anything else is left to the parser (it reports the wrong type). Paths are spelled out only for what is found, so that a clean 20 MB inline
    batch is walked quickly."""
    found: list[tuple[str, str]] = []
    _walk(value, shape, [at] if at else [], found, limit)
    return found


def _walk(
    value: Any, shape: Shape, path: list[str], found: list[tuple[str, str]], limit: int | None
) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):  # a list in a list is the parser's to refuse
                path.append(f"[{i}]")
                _walk(item, shape, path, found, limit)
                path.pop()
        return
    if not isinstance(value, dict):
        return
    fields = shape.fields
    for name, item in value.items():
        if limit is not None and len(found) >= limit:
            return
        if name not in fields:
            found.append((name, _spell(path)))
            continue
        inner = fields[name]
        if inner is not None and isinstance(item, dict | list):
            path.append(name)
            _walk(item, inner, path, found, limit)
            path.pop()


def _spell(path: list[str]) -> str:
    return "".join(p if p.startswith("[") or i == 0 else f".{p}" for i, p in enumerate(path))


def unknown_name(name: str, at: str = "") -> str:
    """Gemini's sentence for one unknown name in the object at path ``at`` ('' = the body)."""
    where = f" at '{at}'" if at else ""
    return f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'


def check_known(value: Any, shape: Shape, at: str = "") -> None:
    """Raise ``InvalidArgument`` naming each name in ``value`` that ``shape`` lacks
    (the first ``MAX_REPORTED``), one sentence each."""
    found = unknown_fields(value, shape, at, limit=MAX_REPORTED + 1)
    if not found:
        return
    shown = [unknown_name(name, where) for name, where in found[:MAX_REPORTED]]
    if len(found) > MAX_REPORTED:
        shown.append("There are more unknown names.")
    raise InvalidArgument(" ".join(shown))
