"""Gemini's structured-output fields → OutputConstraint (backends.schema)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from overnight.backends.schema import OutputConstraint, output_constraint
from overnight.domain.requests import GenerationConfig
from overnight.errors import RequestRejected


def constraint(**config: Any) -> OutputConstraint | None:
    return output_constraint(GenerationConfig.model_validate(config))


def schema_of(gemini: dict[str, Any]) -> dict[str, Any]:
    found = constraint(responseMimeType="application/json", responseSchema=gemini)
    assert found is not None and found.kind == "schema" and found.json_schema is not None
    return found.json_schema


def rejected(**config: Any) -> str:
    with pytest.raises(RequestRejected) as caught:
        constraint(**config)
    assert caught.value.status == "INVALID_ARGUMENT"
    return caught.value.message


def test_free_text_has_no_constraint() -> None:
    assert output_constraint(None) is None
    assert constraint() is None
    assert constraint(temperature=0.5, responseMimeType="text/plain") is None


def test_json_mode_alone_is_any_json_value() -> None:
    found = constraint(responseMimeType="application/json")
    assert found == OutputConstraint("json", None, None, found.key if found else "")


def test_gemini_schema_converts_types_nested_objects_and_arrays() -> None:
    converted = schema_of(
        {
            "type": "OBJECT",
            "description": "a review",
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": "40"},
                "score": {"type": "INTEGER", "minimum": 1, "maximum": 5.0, "format": "int32"},
                "ratio": {"type": "NUMBER", "format": "float"},
                "ok": {"type": "BOOLEAN"},
                "when": {
                    "type": "STRING",
                    "format": "date-time",
                    "example": "2024-01-01T00:00:00Z",
                },
                "tags": {
                    "type": "ARRAY",
                    "items": {"type": "STRING", "enum": ["a", "b"], "format": "enum"},
                    "min_items": 1,
                    "maxItems": 3,
                },
                "author": {
                    "type": "OBJECT",
                    "properties": {"name": {"type": "STRING", "title": "Name"}},
                    "required": ["name"],
                },
            },
            "required": ["score", "title"],
        }
    )
    assert converted == {
        "type": "object",
        "description": "a review",
        "properties": {
            "title": {"type": "string", "maxLength": 40, "minLength": 1},
            "score": {"type": "integer", "maximum": 5, "minimum": 1},
            "ratio": {"type": "number"},
            "ok": {"type": "boolean"},
            "when": {
                "type": "string",
                "format": "date-time",
                "examples": ["2024-01-01T00:00:00Z"],
            },
            "tags": {
                "type": "array",
                "items": {"type": "string", "enum": ["a", "b"]},
                "maxItems": 3,
                "minItems": 1,
            },
            "author": {
                "type": "object",
                "properties": {"name": {"type": "string", "title": "Name"}},
                "required": ["name"],
                "additionalProperties": False,
            },
        },
        "required": ["title", "score"],
        "additionalProperties": False,
    }
    jsonschema.Draft202012Validator.check_schema(converted)


def test_property_ordering_sets_the_order_of_properties_and_required() -> None:
    gemini = {
        "type": "OBJECT",
        "properties": {"b": {"type": "STRING"}, "c": {"type": "STRING"}, "a": {"type": "STRING"}},
        "required": ["a", "b", "c"],
    }
    assert list(schema_of({**gemini, "propertyOrdering": ["c", "a", "b"]})["properties"]) == [
        "c",
        "a",
        "b",
    ]
    snake = schema_of({**gemini, "property_ordering": ["a"]})
    assert list(snake["properties"]) == ["a", "b", "c"]  # unlisted ones follow, as written
    assert snake["required"] == ["a", "b", "c"]
    assert list(schema_of(gemini)["properties"]) == ["b", "c", "a"]


def test_nullable_and_any_of() -> None:
    assert schema_of({"type": "STRING", "nullable": True}) == {"type": ["string", "null"]}
    assert schema_of({"type": "STRING", "enum": ["x"], "nullable": True}) == {
        "type": ["string", "null"],
        "enum": ["x", None],
    }
    converted = schema_of({"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}], "nullable": True})
    assert converted == {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}
    validator = jsonschema.Draft202012Validator(converted)
    assert all(validator.is_valid(v) for v in (1, "a", None)) and not validator.is_valid(1.5)


def test_equal_constraints_have_equal_keys_and_order_matters() -> None:
    one = {"type": "OBJECT", "properties": {"a": {"type": "STRING"}, "b": {"type": "NUMBER"}}}
    again = {"properties": {"a": {"type": "string"}, "b": {"type": "number"}}, "type": "object"}
    first = constraint(responseMimeType="application/json", responseSchema=one)
    second = constraint(responseMimeType="application/json", response_schema=again)
    assert first is not None and second is not None and first.key == second.key
    reordered = constraint(
        responseMimeType="application/json", responseSchema={**one, "propertyOrdering": ["b"]}
    )
    assert reordered is not None and reordered.key != first.key
    json_mode = constraint(responseMimeType="application/json")
    assert json_mode is not None and json_mode.key != first.key


def test_text_enum_gives_the_bare_choices() -> None:
    found = constraint(
        responseMimeType="text/x.enum",
        responseSchema={"type": "STRING", "enum": ["positive", "negative", "positive"]},
    )
    assert found is not None and found.kind == "enum"
    assert found.choices == ("positive", "negative")
    assert found.json_schema == {"type": "string", "enum": ["positive", "negative"]}
    plain = constraint(
        responseMimeType="text/x.enum", responseJsonSchema={"type": "string", "enum": ["x"]}
    )
    assert plain is not None and plain.choices == ("x",)


def test_response_json_schema_is_passed_on() -> None:
    schema = {
        "type": "object",
        "properties": {"xs": {"type": "array", "items": {"$ref": "#/$defs/x"}, "maxItems": 2}},
        "$defs": {"x": {"type": ["integer", "null"], "exclusiveMinimum": 0}},
        "required": ["xs"],
    }
    found = constraint(responseMimeType="application/json", responseJsonSchema=schema)
    assert found is not None and found.kind == "schema" and found.json_schema == schema
    anything = constraint(responseMimeType="application/json", responseJsonSchema=True)
    assert anything is not None and anything.json_schema == {}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"responseSchema": {"type": "OBJECT", "properties": {"x": {"type": "FOO"}}}},
            'generationConfig.responseSchema.properties.x.type: unknown type "FOO"',
        ),
        (
            {"responseSchema": {"type": "STRING", "maxLenght": 3}},
            "generationConfig.responseSchema.maxLenght: unknown Schema field",
        ),
        (
            {"responseSchema": {"type": "STRING", "format": "phone"}},
            'generationConfig.responseSchema.format: "phone" is not supported',
        ),
        (
            {"responseSchema": {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": -1}},
            "generationConfig.responseSchema.minItems: must be a non-negative integer",
        ),
        (
            {
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {"a": {"type": "STRING"}},
                    "propertyOrdering": ["a", "z"],
                }
            },
            'generationConfig.responseSchema.propertyOrdering: "z" is not one of the properties',
        ),
        (
            {
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {"a": {"type": "STRING"}},
                    "required": ["b"],
                }
            },
            'generationConfig.responseSchema.required: "b" is not one of the properties',
        ),
        (
            {"responseSchema": {"type": "STRING", "enum": [1, 2]}},
            "generationConfig.responseSchema.enum: values of a STRING enum must be strings",
        ),
        (
            {"responseJsonSchema": {"type": "array", "uniqueItems": True}},
            'generationConfig.responseJsonSchema.uniqueItems: the keyword "uniqueItems" is not '
            "supported by constrained decoding; remove it",
        ),
        (
            {"responseJsonSchema": {"properties": {"a": {"not": {"type": "string"}}}}},
            'generationConfig.responseJsonSchema.properties.a.not: the keyword "not"',
        ),
        (
            {"responseJsonSchema": {"type": "string", "nullable": True}},
            'use "type": ["string", "null"]',
        ),
        (
            {"responseJsonSchema": {"allOf": [{"type": "object"}, {"required": ["a"]}]}},
            'generationConfig.responseJsonSchema.allOf: "allOf" with more than one schema',
        ),
        (
            {"responseJsonSchema": {"type": "strin"}},
            'generationConfig.responseJsonSchema.type: unknown type "strin"',
        ),
        (
            {"responseJsonSchema": ["not", "a", "schema"]},
            "generationConfig.responseJsonSchema: a JSON Schema is an object or a boolean, got list",
        ),
        (
            {"responseJsonSchema": False},
            "generationConfig.responseJsonSchema: false matches nothing",
        ),
    ],
)
def test_unsupported_schemas_are_rejected_naming_the_keyword(
    config: dict[str, Any], expected: str
) -> None:
    assert expected in rejected(responseMimeType="application/json", **config)


def test_mime_type_and_schema_must_agree() -> None:
    schema = {"type": "STRING", "enum": ["a"]}
    both = rejected(
        responseMimeType="application/json", responseSchema=schema, responseJsonSchema={}
    )
    assert "responseSchema and responseJsonSchema are both set" in both
    missing = rejected(responseSchema=schema)
    assert missing.startswith("generationConfig.responseSchema: a schema needs responseMimeType")
    assert "Add responseMimeType: 'application/json'" in missing
    assert "text/x.enum" in rejected(responseMimeType="text/x.enum")
    not_enum = rejected(responseMimeType="text/x.enum", responseSchema={"type": "INTEGER"})
    assert "needs a string enum schema" in not_enum
    empty = rejected(responseMimeType="text/x.enum", responseSchema={"type": "STRING", "enum": []})
    assert "enum: must be a non-empty list" in empty


def test_the_fake_backend_answers_a_valid_instance() -> None:
    import asyncio
    import json

    from overnight.backends.fake import FakeBackend
    from overnight.domain.requests import GenerateRequest

    schemas = [
        {
            "type": "OBJECT",
            "properties": {"a": {"type": "INTEGER", "minimum": 3}},
            "required": ["a"],
        },
        {"type": "ARRAY", "items": {"type": "STRING", "minLength": 2}, "minItems": 2},
        {"anyOf": [{"type": "NUMBER", "maximum": -1}, {"type": "STRING"}], "nullable": True},
        {"type": "STRING", "enum": ["x", "y"], "nullable": True},
    ]
    requests = [
        GenerateRequest.model_validate(
            {
                "contents": [{"parts": [{"text": "hi"}]}],
                "generationConfig": {"responseMimeType": "application/json", "responseSchema": s},
            }
        )
        for s in schemas
    ]
    outcomes = asyncio.run(FakeBackend("echo").generate(requests))
    for schema, outcome in zip(schemas, outcomes, strict=True):
        text = outcome.candidates[0].text  # type: ignore[union-attr]
        jsonschema.validate(json.loads(text), schema_of(schema))


def test_false_is_a_fine_subschema() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
        "additionalProperties": False,
    }
    found = output_constraint(
        GenerationConfig.model_validate(
            {"responseMimeType": "application/json", "responseJsonSchema": schema}
        )
    )
    assert found is not None and found.json_schema is not None
    assert found.json_schema["additionalProperties"] is False
