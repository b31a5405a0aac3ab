"""Gemini's structured-output fields, checked and turned into one ``OutputConstraint``.

Every backend that constrains its output reads the same three fields of
generationConfig (spec §11.1):

- ``responseMimeType: "application/json"`` alone: any JSON value (kind ``json``);
- ``responseSchema``: Gemini's OpenAPI-subset Schema, converted here to plain JSON
  Schema (kind ``schema``), with properties in ``propertyOrdering`` order;
- ``responseJsonSchema``: plain JSON Schema, passed on once its keywords are checked;
- ``responseMimeType: "text/x.enum"`` with a string-enum schema: the answer is exactly
  one of the values, bare (kind ``enum``).

A field this module cannot honour raises ``RequestRejected`` naming the field and the
keyword at fault, so a request is never silently run unconstrained. Nothing here
imports a grammar library: the ``transformers`` backend compiles the JSON Schema with
xgrammar, the ``openai`` backend passes it on as ``response_format``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from overnight.domain.requests import GenerationConfig
from overnight.errors import RequestRejected

JSON_MIME = "application/json"
ENUM_MIME = "text/x.enum"
STRUCTURED_MIME_TYPES = frozenset({JSON_MIME, ENUM_MIME})
# The generationConfig fields that carry a schema (a backend that enforces schemas honours both).
STRUCTURED_FIELDS = frozenset({"response_schema", "response_json_schema"})

_GEMINI_TYPES = {
    "STRING": "string",
    "NUMBER": "number",
    "INTEGER": "integer",
    "BOOLEAN": "boolean",
    "ARRAY": "array",
    "OBJECT": "object",
    "NULL": "null",
}
# Gemini's formats: "enum" marks a string enum and the numeric ones name a width; they
# say nothing a JSON Schema validator checks, so they are dropped.
_GEMINI_DROPPED_FORMATS = frozenset({"enum", "float", "double", "int32", "int64"})
# String formats the grammar library (xgrammar) enforces.
STRING_FORMATS = frozenset(
    {
        "date",
        "date-time",
        "duration",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "json-pointer",
        "relative-json-pointer",
        "time",
        "uri",
        "uri-reference",
        "uri-template",
        "uuid",
    }
)
_GEMINI_COUNTS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
)
_GEMINI_NUMBERS = ("minimum", "maximum")
_GEMINI_TEXTS = ("title", "description", "pattern")
_GEMINI_FIELDS = frozenset(
    {
        "type",
        "format",
        "nullable",
        "enum",
        "properties",
        "required",
        "items",
        "anyOf",
        "propertyOrdering",
        "example",
        "default",
        *_GEMINI_COUNTS,
        *_GEMINI_NUMBERS,
        *_GEMINI_TEXTS,
    }
)

# JSON Schema keywords the grammar enforces (or that only annotate), and the ones whose
# values are subschemas, lists of subschemas or maps of subschemas.
_SUBSCHEMA = frozenset({"items", "additionalProperties", "propertyNames"})
_SUBSCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SUBSCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_JSON_SCHEMA_KEYWORDS = frozenset(
    {
        *_SUBSCHEMA,
        *_SUBSCHEMA_LISTS,
        *_SUBSCHEMA_MAPS,
        "type",
        "enum",
        "const",
        "required",
        "minProperties",
        "maxProperties",
        "minItems",
        "maxItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "$ref",
        # annotations: nothing to enforce
        "$schema",
        "$id",
        "$anchor",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
    }
)
_JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """What a response must be: any JSON value, an instance of a JSON Schema, one of
    a few strings, or (kind ``grammar``, function calling's mode VALIDATED) the words of
    an xgrammar EBNF grammar. ``key`` is canonical text: equal constraints have equal
    keys, so a backend can cache one compiled grammar per key."""

    kind: Literal["json", "schema", "enum", "grammar"]
    json_schema: dict[str, Any] | None
    choices: tuple[str, ...] | None
    key: str
    ebnf: str | None = None


def output_constraint(config: GenerationConfig | None) -> OutputConstraint | None:
    """The constraint generationConfig asks for; None for free text.

    Raises ``RequestRejected`` naming the field and keyword at fault, e.g.
    ``generationConfig.responseSchema.properties.x.type: unknown type "FOO"``.
    """
    if config is None:
        return None
    mime = config.response_mime_type
    gemini, plain = config.response_schema, config.response_json_schema
    if gemini is not None and plain is not None:
        raise RequestRejected(
            "generationConfig: responseSchema and responseJsonSchema are both set; use one"
        )
    schema: Any = None
    if gemini is not None:
        schema = gemini_to_json_schema(gemini)
        field = "responseSchema"
    elif plain is not None:
        check_json_schema(plain)
        schema = {} if plain is True else plain
        field = "responseJsonSchema"
    if mime in (None, "", "text/plain"):
        if schema is None:
            return None
        raise RequestRejected(
            f"generationConfig.{field}: a schema needs responseMimeType "
            f'"{JSON_MIME}" (or "{ENUM_MIME}" for a string enum); '
            f"got {mime or 'none'}. Add responseMimeType: {JSON_MIME!r}"
        )
    if mime == JSON_MIME:
        if schema is None:
            return _make("json", None, None)
        return _make("schema", schema, None)
    if mime == ENUM_MIME:
        if schema is None:
            raise RequestRejected(
                f'generationConfig.responseMimeType: "{ENUM_MIME}" needs a responseSchema '
                'such as {"type": "STRING", "enum": ["a", "b"]}'
            )
        choices = _enum_choices(schema, field)
        return _make("enum", {"type": "string", "enum": list(choices)}, choices)
    return None  # another mime type: check_generate answers for it


def schema_constraint(schema: dict[str, Any]) -> OutputConstraint:
    """A constraint to one JSON Schema that is already checked (function calling builds
    its own, see ``backends.tools``)."""
    return _make("schema", schema, None)


def grammar_constraint(ebnf: str) -> OutputConstraint:
    """A constraint to an xgrammar EBNF grammar (``backends.tools`` builds one)."""
    return OutputConstraint("grammar", None, None, json.dumps(["grammar", ebnf]), ebnf)


def _make(
    kind: Literal["json", "schema", "enum"],
    schema: dict[str, Any] | None,
    choices: tuple[str, ...] | None,
) -> OutputConstraint:
    # No sort_keys: property order is part of the constraint (it is generation order).
    text = json.dumps([kind, schema, choices], separators=(",", ":"), ensure_ascii=False)
    return OutputConstraint(kind, schema, choices, text)


def _enum_choices(schema: dict[str, Any], field: str) -> tuple[str, ...]:
    path = f"generationConfig.{field}"
    values = schema.get("enum")
    kind = schema.get("type")
    if not isinstance(values, list) or kind not in (None, "string"):
        raise RequestRejected(
            f'{path}: responseMimeType "{ENUM_MIME}" needs a string enum schema, such as '
            '{"type": "STRING", "enum": ["positive", "negative"]}'
        )
    if not values or not all(isinstance(v, str) and v for v in values):
        raise RequestRejected(f"{path}.enum: needs one or more non-empty strings")
    return tuple(dict.fromkeys(values))


# ---- Gemini's Schema → JSON Schema -----------------------------------------------------


def gemini_to_json_schema(
    schema: Mapping[str, Any], path: str = "generationConfig.responseSchema"
) -> dict[str, Any]:
    """Convert Gemini's OpenAPI-subset Schema to JSON Schema. Raises RequestRejected."""
    if not isinstance(schema, Mapping):
        raise RequestRejected(f"{path}: must be a Schema object, got {type(schema).__name__}")
    fields = {_camel(name): value for name, value in schema.items()}
    unknown = sorted(set(fields) - _GEMINI_FIELDS)
    if unknown:
        raise RequestRejected(
            f"{path}.{unknown[0]}: unknown Schema field; "
            f"supported: {', '.join(sorted(_GEMINI_FIELDS))}"
        )
    out: dict[str, Any] = {}
    kind = _gemini_type(fields.get("type"), path)
    for name in _GEMINI_TEXTS:
        if fields.get(name) is not None:
            if not isinstance(fields[name], str):
                raise RequestRejected(f"{path}.{name}: must be a string")
            out[name] = fields[name]
    if fields.get("default") is not None:
        out["default"] = fields["default"]
    if fields.get("example") is not None:
        out["examples"] = [fields["example"]]
    for name in _GEMINI_COUNTS:
        if fields.get(name) is not None:
            out[name] = _count(fields[name], f"{path}.{name}")
    for name in _GEMINI_NUMBERS:
        if fields.get(name) is not None:
            out[name] = _number(fields[name], f"{path}.{name}")
    fmt = fields.get("format")
    if fmt not in (None, "") and fmt not in _GEMINI_DROPPED_FORMATS:
        if fmt not in STRING_FORMATS:
            raise RequestRejected(
                f'{path}.format: "{fmt}" is not supported; supported: '
                f"{', '.join(sorted(STRING_FORMATS | _GEMINI_DROPPED_FORMATS))}"
            )
        out["format"] = fmt
    enum = fields.get("enum")
    if enum is not None:
        if not isinstance(enum, list) or not enum:
            raise RequestRejected(f"{path}.enum: must be a non-empty list")
        if kind in (None, "string") and not all(isinstance(v, str) for v in enum):
            raise RequestRejected(f"{path}.enum: values of a STRING enum must be strings")
        kind = kind or "string"
        out["enum"] = list(enum)
    properties = fields.get("properties")
    if properties is not None:
        out.update(_gemini_object(fields, properties, path))
        kind = kind or "object"
    elif fields.get("required") or fields.get("propertyOrdering"):
        name = "required" if fields.get("required") else "propertyOrdering"
        raise RequestRejected(f"{path}.{name}: names properties, but the Schema has none")
    if fields.get("items") is not None:
        out["items"] = gemini_to_json_schema(fields["items"], f"{path}.items")
        kind = kind or "array"
    any_of = fields.get("anyOf")
    if any_of is not None:
        if not isinstance(any_of, list) or not any_of:
            raise RequestRejected(f"{path}.anyOf: must be a non-empty list of Schemas")
        out["anyOf"] = [
            gemini_to_json_schema(one, f"{path}.anyOf[{i}]") for i, one in enumerate(any_of)
        ]
    if kind is not None:
        out["type"] = kind
    if fields.get("nullable") is True:
        _make_nullable(out)
    return _ordered(out)


def _gemini_type(value: Any, path: str) -> str | None:
    if value is None or value == "TYPE_UNSPECIFIED":
        return None
    if not isinstance(value, str) or value.upper() not in _GEMINI_TYPES:
        raise RequestRejected(
            f'{path}.type: unknown type "{value}"; use one of {", ".join(_GEMINI_TYPES)}'
        )
    return _GEMINI_TYPES[value.upper()]


def _gemini_object(fields: dict[str, Any], properties: Any, path: str) -> dict[str, Any]:
    if not isinstance(properties, Mapping):
        raise RequestRejected(f"{path}.properties: must map property names to Schemas")
    converted = {
        name: gemini_to_json_schema(sub, f"{path}.properties.{name}")
        for name, sub in properties.items()
    }
    order = fields.get("propertyOrdering")
    if order is not None:
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
            raise RequestRejected(f"{path}.propertyOrdering: must be a list of property names")
        stray = [n for n in order if n not in converted]
        if stray:
            raise RequestRejected(
                f'{path}.propertyOrdering: "{stray[0]}" is not one of the properties'
            )
        ranked = list(dict.fromkeys(order))
        converted = {n: converted[n] for n in [*ranked, *(n for n in converted if n not in ranked)]}
    out: dict[str, Any] = {"properties": converted}
    required = fields.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
            raise RequestRejected(f"{path}.required: must be a list of property names")
        stray = [n for n in required if n not in converted]
        if stray:
            raise RequestRejected(f'{path}.required: "{stray[0]}" is not one of the properties')
        # In generation order, so the grammar and the schema read the same way.
        out["required"] = [n for n in converted if n in required]
    out["additionalProperties"] = False
    return out


def _make_nullable(out: dict[str, Any]) -> None:
    kind = out.get("type")
    if isinstance(kind, str) and kind != "null":
        out["type"] = [kind, "null"]
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    if "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]


_KEY_ORDER = ("type", "title", "description", "format", "enum", "properties", "required")


def _ordered(out: dict[str, Any]) -> dict[str, Any]:
    """Keywords in one fixed order, so equal Schemas give equal constraint keys."""
    first = {k: out[k] for k in _KEY_ORDER if k in out}
    return first | {k: out[k] for k in sorted(out) if k not in first}


def _count(value: Any, path: str) -> int:
    # proto3 JSON sends int64 as a string: "3" is as good as 3.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RequestRejected(f"{path}: must be a non-negative integer, got {value!r}")
    return value


def _number(value: Any, path: str) -> int | float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise RequestRejected(f"{path}: must be a number, got {value!r}")
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# ---- plain JSON Schema -----------------------------------------------------------------


def check_json_schema(
    schema: Any, path: str = "generationConfig.responseJsonSchema", *, root: bool = True
) -> None:
    """Raise RequestRejected naming the first keyword the grammar cannot enforce.

    ``false`` is a schema that matches nothing: fine inside (``"additionalProperties":
    false``, ``"items": false``), but a whole answer that can match nothing is an error.
    """
    if isinstance(schema, bool):
        if not schema and root:
            raise RequestRejected(f"{path}: false matches nothing; give a schema")
        return
    if not isinstance(schema, Mapping):
        raise RequestRejected(
            f"{path}: a JSON Schema is an object or a boolean, got {type(schema).__name__}"
        )
    for keyword, value in schema.items():
        here = f"{path}.{keyword}"
        if keyword not in _JSON_SCHEMA_KEYWORDS:
            hint = _HINTS.get(keyword, "")
            raise RequestRejected(
                f'{here}: the keyword "{keyword}" is not supported by constrained decoding'
                f"{hint}; remove it"
            )
        if keyword == "items" and isinstance(value, list):
            raise RequestRejected(
                f'{here}: a list of schemas here is old syntax; use "prefixItems"'
            )
        if keyword in _SUBSCHEMA:
            check_json_schema(value, here, root=False)
        elif keyword in _SUBSCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                raise RequestRejected(f"{here}: must be a non-empty list of schemas")
            if keyword == "allOf" and len(value) > 1:
                raise RequestRejected(
                    f'{here}: "allOf" with more than one schema is not supported; merge them'
                )
            for i, one in enumerate(value):
                check_json_schema(one, f"{here}[{i}]", root=False)
        elif keyword in _SUBSCHEMA_MAPS:
            if not isinstance(value, Mapping):
                raise RequestRejected(f"{here}: must map names to schemas")
            for name, one in value.items():
                check_json_schema(one, f"{here}.{name}", root=False)
        elif keyword in ("unevaluatedItems", "unevaluatedProperties") and value is not False:
            raise RequestRejected(f'{here}: only "{keyword}": false is supported')
        elif keyword == "type":
            kinds = value if isinstance(value, list) else [value]
            bad = [k for k in kinds if k not in _JSON_TYPES]
            if bad or not kinds:
                raise RequestRejected(f'{here}: unknown type "{bad[0] if bad else value}"')
        elif keyword == "format" and value not in STRING_FORMATS:
            raise RequestRejected(
                f'{here}: "{value}" is not supported; supported: {", ".join(sorted(STRING_FORMATS))}'
            )


_HINTS = {
    "nullable": ' (that is OpenAPI; use "type": ["string", "null"])',
    "propertyOrdering": " (that is responseSchema; here properties keep their written order)",
}
