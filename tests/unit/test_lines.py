"""Input lines: proto3-JSON leniency (both spellings, both base64s), strict on the rest."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from overnight.domain.batches import BatchKind
from overnight.domain.lines import LineError, RequestLine, line_key, parse_line
from overnight.domain.requests import EmbedRequest, GenerateRequest

PNG = "iVBORw0KGgo="  # the PNG signature, standard base64


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def generate(request: dict[str, Any], line_no: int = 1, **extra: Any) -> RequestLine:
    return parse_line(line({"key": "k", "request": request, **extra}), line_no, BatchKind.GENERATE)


def gen_request(parsed: RequestLine) -> GenerateRequest:
    assert isinstance(parsed.request, GenerateRequest)
    return parsed.request


def embed_request(parsed: RequestLine) -> EmbedRequest:
    assert isinstance(parsed.request, EmbedRequest)
    return parsed.request


def problem(raw: bytes, line_no: int = 1, kind: BatchKind = BatchKind.GENERATE) -> LineError:
    with pytest.raises(LineError) as info:
        parse_line(raw, line_no, kind)
    return info.value


def full_request(camel: bool) -> dict[str, Any]:
    def k(camel_name: str, snake_name: str) -> str:
        return camel_name if camel else snake_name

    return {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "describe"},
                    {
                        k("inlineData", "inline_data"): {
                            k("mimeType", "mime_type"): "image/png",
                            "data": PNG,
                        }
                    },
                ],
            }
        ],
        k("systemInstruction", "system_instruction"): {"parts": [{"text": "be brief"}]},
        k("generationConfig", "generation_config"): {
            k("maxOutputTokens", "max_output_tokens"): 12,
            k("topK", "top_k"): 3,
            k("topP", "top_p"): 0.5,
            k("stopSequences", "stop_sequences"): ["END"],
            k("responseMimeType", "response_mime_type"): "application/json",
            k("responseSchema", "response_schema"): {
                "type": "OBJECT",
                "properties": {"a": {"type": "STRING"}, "b": {"type": "STRING"}},
                "property_ordering": ["b", "a"],
            },
            k("thinkingConfig", "thinking_config"): {k("thinkingBudget", "thinking_budget"): 0},
        },
        k("safetySettings", "safety_settings"): [
            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}
        ],
    }


@pytest.mark.parametrize("camel", [True, False], ids=["camelCase", "snake_case"])
def test_both_spellings_parse_to_the_same_request(camel: bool) -> None:
    parsed = generate(full_request(camel))
    req = gen_request(parsed)
    assert parsed.key == "k"
    assert req.system_instruction is not None
    assert req.system_instruction.text == "be brief"
    blob = req.contents[0].parts[1].inline_data
    assert blob is not None
    assert blob.mime_type == "image/png"
    assert blob.data == b"\x89PNG\r\n\x1a\n"
    config = req.config
    assert config.max_output_tokens == 12
    assert config.top_k == 3
    assert config.top_p == 0.5
    assert config.stop_sequences == ["END"]
    assert config.response_mime_type == "application/json"
    assert config.thinking_config is not None
    assert config.thinking_config.thinking_budget == 0
    assert req.safety_settings is not None
    assert req.safety_settings[0].threshold == "BLOCK_NONE"
    # The schema is data: its keys are kept as written, not re-spelled.
    assert config.response_schema is not None
    assert config.response_schema["property_ordering"] == ["b", "a"]
    assert "propertyOrdering" not in config.response_schema


def test_camel_and_snake_requests_are_equal() -> None:
    assert gen_request(generate(full_request(True))) == gen_request(generate(full_request(False)))


def test_url_safe_and_standard_base64() -> None:
    url_safe = "__79Pz4="
    expected = base64.urlsafe_b64decode(url_safe)
    standard = base64.b64encode(expected).decode()
    assert standard != url_safe
    for data in (url_safe, standard, url_safe.rstrip("=")):
        req = gen_request(
            generate({"contents": [{"parts": [{"inlineData": {"mimeType": "x/y", "data": data}}]}]})
        )
        blob = req.contents[0].parts[0].inline_data
        assert blob is not None
        assert blob.data == expected


def test_invalid_base64_is_rejected_with_its_path() -> None:
    err = problem(
        line(
            {
                "request": {
                    "contents": [{"parts": [{"inlineData": {"mimeType": "x/y", "data": "*!*"}}]}]
                }
            }
        )
    )
    assert "request.contents[0].parts[0].inlineData.data" in err.message
    assert "base64" in err.message


def test_integer_given_as_float_becomes_int() -> None:
    req = gen_request(
        generate({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"topK": 40.0}})
    )
    assert req.config.top_k == 40
    assert isinstance(req.config.top_k, int)


def test_fractional_integer_is_rejected() -> None:
    err = problem(
        line(
            {
                "request": {
                    "contents": [{"parts": [{"text": "x"}]}],
                    "generationConfig": {"topK": 40.5},
                }
            }
        )
    )
    assert "request.generationConfig.topK" in err.message


def test_unknown_fields_are_named() -> None:
    err = problem(
        line(
            {
                "key": "a",
                "request": {
                    "contents": [{"parts": [{"text": "x"}]}],
                    "generationConfig": {"temprature": 1},
                    "extra": True,
                },
            }
        )
    )
    # Gemini's own words for an unknown name, one sentence each.
    assert err.message == (
        'line 1: Invalid JSON payload received. Unknown name "temprature" at '
        "'request.generationConfig': Cannot find field. Invalid JSON payload received. "
        "Unknown name \"extra\" at 'request': Cannot find field."
    )
    assert err.key == "a"


def test_unknown_line_field_is_named() -> None:
    err = problem(line({"key": "a", "request": {}, "metdata": {"m": 1}}), 3)
    assert err.message.startswith(
        'line 3: Invalid JSON payload received. Unknown name "metdata": Cannot find field.'
    )
    assert "A line holds 'key', 'request' and 'metadata'." in err.message
    assert err.key == "a"


def test_unknown_name_beside_other_problems() -> None:
    err = problem(line({"request": {"contents": [{"parts": [{"text": 5, "txt": "x"}]}]}}), 2)
    assert err.message == (
        "line 2: request.contents[0].parts[0].text: Input should be a valid string (got 5); "
        'Invalid JSON payload received. Unknown name "txt" at '
        "'request.contents[0].parts[0]': Cannot find field."
    )


def test_inline_items_are_named_by_position() -> None:
    with pytest.raises(LineError) as info:
        parse_line(
            line({"key": "2", "request": {"contents": []}}), 3, BatchKind.GENERATE, inline=True
        )
    assert info.value.message.startswith("inlinedRequests[2]: request.contents")
    assert info.value.key == "2"


def test_sdk_3_part_and_config_fields_are_known() -> None:
    # Fields google-genai 3.x can send; refusing them as unknown would refuse the SDK.
    parsed = generate(
        {
            "contents": [
                {
                    "parts": [
                        {
                            "text": "x",
                            "mediaResolution": {"level": "MEDIA_RESOLUTION_LOW"},
                            "partMetadata": {"a": 1},
                        },
                        {"toolCall": {"id": "t"}},
                    ]
                }
            ],
            "generationConfig": {"audioTranscriptionConfig": {}},
            "continuationToken": "c",
        }
    )
    request = gen_request(parsed)
    assert request.contents[0].parts[1].kind == "toolCall"
    assert request.continuation_token == "c"


def test_metadata_is_echoed() -> None:
    parsed = generate({"contents": [{"parts": [{"text": "x"}]}]}, metadata={"m": 1})
    assert parsed.metadata == {"m": 1}


def test_wrong_type_names_the_path() -> None:
    err = problem(line({"key": "a", "request": {"contents": [{"parts": [{"text": 5}]}]}}), 8)
    assert err.message.startswith("line 8:")
    assert "request.contents[0].parts[0].text" in err.message
    assert "(got 5)" in err.message


def test_key_must_be_a_string() -> None:
    err = problem(line({"key": 5, "request": {"contents": [{"parts": [{"text": "x"}]}]}}), 2)
    assert "'key' must be a string" in err.message
    assert err.key == "line:2"


def test_missing_request() -> None:
    err = problem(line({"key": "only-key"}), 4)
    assert "missing 'request'" in err.message
    assert err.key == "only-key"
    assert err.line_no == 4


def test_request_must_be_an_object() -> None:
    err = problem(line({"key": "a", "request": [1, 2]}))
    assert "request must be a JSON object" in err.message


def test_empty_contents_rejected() -> None:
    err = problem(line({"request": {"contents": []}}))
    assert "request.contents" in err.message


def test_invalid_json_names_the_line() -> None:
    err = problem(b'{"key": "a", ', 17)
    assert err.message.startswith("line 17: invalid JSON")
    assert err.line_no == 17
    assert err.key == "line:17"


def test_line_must_be_an_object() -> None:
    err = problem(b"[1, 2]", 5)
    assert "expected a JSON object, got list" in err.message


def test_missing_key_falls_back_to_line_number() -> None:
    parsed = parse_line(
        line({"request": {"contents": [{"parts": [{"text": "x"}]}]}}), 42, BatchKind.GENERATE
    )
    assert parsed.key == "line:42" == line_key(42)
    assert parsed.line_no == 42


def test_embed_request_parses_both_spellings() -> None:
    for task, dims in (
        ("taskType", "outputDimensionality"),
        ("task_type", "output_dimensionality"),
    ):
        parsed = parse_line(
            line(
                {
                    "key": "e",
                    "request": {
                        "content": {"parts": [{"text": "hello world"}]},
                        task: "RETRIEVAL_QUERY",
                        dims: 16,
                    },
                }
            ),
            1,
            BatchKind.EMBED,
        )
        req = embed_request(parsed)
        assert req.content.text == "hello world"
        assert req.task_type == "RETRIEVAL_QUERY"
        assert req.output_dimensionality == 16


def test_embed_unknown_task_type_is_rejected() -> None:
    err = problem(
        line({"request": {"content": {"parts": [{"text": "x"}]}, "taskType": "BOGUS"}}),
        kind=BatchKind.EMBED,
    )
    assert "request.taskType" in err.message
    assert "BOGUS" in err.message
    assert "RETRIEVAL_QUERY" in err.message


def test_embed_output_dimensionality_must_be_positive() -> None:
    err = problem(
        line({"request": {"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 0}}),
        kind=BatchKind.EMBED,
    )
    assert "request.outputDimensionality" in err.message


def test_embed_needs_content() -> None:
    err = problem(
        line({"request": {"contents": [{"parts": [{"text": "x"}]}]}}), kind=BatchKind.EMBED
    )
    assert "request.content: required field is missing" in err.message


def test_generate_line_is_not_an_embed_line() -> None:
    err = problem(line({"request": {"content": {"parts": [{"text": "x"}]}}}))
    assert "request.contents: required field is missing" in err.message
