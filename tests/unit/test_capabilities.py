"""Capabilities are data; check_generate/check_embed name the field a model cannot honour."""

from __future__ import annotations

from typing import Any

import pytest

from overnight.domain.capabilities import Capabilities, check_embed, check_generate, prompt_text
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.errors import RequestRejected

TEXT_MODEL = Capabilities(model_version="text-lm", generate=True)
EMBED_MODEL = Capabilities(model_version="embedder", embed=True, embedding_dimensions=384)
PNG = "iVBORw0KGgo="


def gen(**fields: Any) -> GenerateRequest:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **fields}
    return GenerateRequest.model_validate(body)


def rejected(request: GenerateRequest, caps: Capabilities = TEXT_MODEL) -> str:
    with pytest.raises(RequestRejected) as info:
        check_generate(request, caps)
    assert info.value.status == "INVALID_ARGUMENT"
    return info.value.message


def test_plain_text_request_passes() -> None:
    check_generate(gen(generationConfig={"temperature": 0.2, "maxOutputTokens": 5}), TEXT_MODEL)


def test_safety_settings_accepted() -> None:
    request = gen(
        safetySettings=[
            {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_LOW_AND_ABOVE"}
        ]
    )
    check_generate(request, TEXT_MODEL)


def test_inline_data_rejected_with_its_path() -> None:
    request = GenerateRequest.model_validate(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "a"}]},
                {"role": "model", "parts": [{"text": "b"}]},
                {
                    "role": "user",
                    "parts": [
                        {"text": "c"},
                        {"inlineData": {"mimeType": "image/png", "data": PNG}},
                    ],
                },
            ]
        }
    )
    message = rejected(request)
    assert message.startswith("contents[2].parts[1].inlineData:")
    assert "text parts only" in message


def test_file_data_rejected_with_its_path() -> None:
    request = GenerateRequest.model_validate(
        {"contents": [{"parts": [{"fileData": {"fileUri": "gs://b/o.png"}}]}]}
    )
    assert rejected(request).startswith("contents[0].parts[0].fileData:")


def test_image_model_accepts_inline_data() -> None:
    caps = Capabilities(
        model_version="vlm", generate=True, input_modalities=frozenset({"text", "image"})
    )
    request = GenerateRequest.model_validate(
        {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}]}]}
    )
    check_generate(request, caps)


def test_system_instruction_parts_are_checked() -> None:
    request = gen(systemInstruction={"parts": [{"fileData": {"fileUri": "gs://x"}}]})
    assert rejected(request).startswith("systemInstruction.parts[0].fileData:")


def test_empty_part_rejected() -> None:
    request = GenerateRequest.model_validate({"contents": [{"parts": [{}]}]})
    assert rejected(request).startswith("contents[0].parts[0]:")


def test_unsupported_role_rejected() -> None:
    request = GenerateRequest.model_validate(
        {"contents": [{"role": "function", "parts": [{"text": "x"}]}]}
    )
    assert rejected(request).startswith("contents[0].role:")


def test_tools_rejected() -> None:
    message = rejected(gen(tools=[{"functionDeclarations": [{"name": "f"}]}]))
    assert message.startswith("tools:")


def test_tool_config_rejected() -> None:
    message = rejected(gen(toolConfig={"functionCallingConfig": {"mode": "AUTO"}}))
    assert message.startswith("toolConfig:")


def test_tools_allowed_when_capable() -> None:
    caps = Capabilities(model_version="agent", generate=True, tools=True)
    check_generate(gen(tools=[{"functionDeclarations": [{"name": "f"}]}]), caps)


def test_cached_content_rejected() -> None:
    assert rejected(gen(cachedContent="cachedContents/abc")).startswith("cachedContent:")


@pytest.mark.parametrize(
    ("field", "value", "camel"),
    [
        ("presencePenalty", 0.5, "presencePenalty"),
        ("frequency_penalty", 0.5, "frequencyPenalty"),
        ("responseLogprobs", True, "responseLogprobs"),
        ("responseSchema", {"type": "STRING"}, "responseSchema"),
        ("audioTranscriptionConfig", {}, "audioTranscriptionConfig"),
    ],
)
def test_unsupported_generation_field_named(field: str, value: Any, camel: str) -> None:
    message = rejected(gen(generationConfig={field: value}))
    assert message.startswith(f"generationConfig.{camel}:")
    assert "text-lm" in message


@pytest.mark.parametrize("modalities", [["TEXT"], ["text"], ["Text"], []])
def test_text_model_honours_text_response_modality(modalities: list[str]) -> None:
    # The SDK README's batch examples set response_modalities=["text"].
    check_generate(gen(generationConfig={"responseModalities": modalities}), TEXT_MODEL)


@pytest.mark.parametrize("modality", ["IMAGE", "audio"])
def test_text_model_refuses_other_response_modalities(modality: str) -> None:
    message = rejected(gen(generationConfig={"responseModalities": ["TEXT", modality]}))
    assert message.startswith("generationConfig.responseModalities[1]:")
    assert f"{modality!r} is not supported by model text-lm" in message
    assert 'ask for ["TEXT"]' in message
    assert f"configure a model that produces {modality.lower()} output" in message


def test_image_model_may_answer_images() -> None:
    caps = Capabilities(
        model_version="painter", generate=True, output_modalities=frozenset({"text", "image"})
    )
    check_generate(gen(generationConfig={"responseModalities": ["TEXT", "IMAGE"]}), caps)


def test_relaying_model_passes_response_modalities_on() -> None:
    caps = Capabilities(
        model_version="relay",
        generate=True,
        generation_fields=frozenset({"response_modalities"}),
    )
    check_generate(gen(generationConfig={"responseModalities": ["IMAGE"]}), caps)


def test_continuation_token_is_known_but_refused() -> None:
    assert rejected(gen(continuationToken="abc")).startswith("continuationToken:")


def test_explicit_null_generation_field_is_ignored() -> None:
    check_generate(gen(generationConfig={"presencePenalty": None}), TEXT_MODEL)


def test_response_mime_type_not_supported() -> None:
    message = rejected(gen(generationConfig={"responseMimeType": "application/json"}))
    assert message.startswith("generationConfig.responseMimeType:")
    assert "text/plain" in message


def test_response_mime_type_supported() -> None:
    check_generate(gen(generationConfig={"responseMimeType": "text/plain"}), TEXT_MODEL)


def test_candidate_count_above_max() -> None:
    caps = Capabilities(model_version="m", generate=True, max_candidates=2)
    check_generate(gen(generationConfig={"candidateCount": 2}), caps)
    message = rejected(gen(generationConfig={"candidateCount": 3}), caps)
    assert message.startswith("generationConfig.candidateCount:")
    assert "3 exceeds the 2" in message


def test_generate_on_embedding_model() -> None:
    assert "does not generate content" in rejected(gen(), EMBED_MODEL)


def embed(**fields: Any) -> EmbedRequest:
    return EmbedRequest.model_validate({"content": {"parts": [{"text": "hi"}]}, **fields})


def test_embed_passes() -> None:
    check_embed(embed(outputDimensionality=384, taskType="CLUSTERING"), EMBED_MODEL)


def test_embed_on_generate_only_model() -> None:
    with pytest.raises(RequestRejected, match="does not produce embeddings"):
        check_embed(embed(), TEXT_MODEL)


def test_output_dimensionality_above_model() -> None:
    with pytest.raises(RequestRejected) as info:
        check_embed(embed(outputDimensionality=385), EMBED_MODEL)
    assert info.value.message.startswith("outputDimensionality:")
    assert "384" in info.value.message


def test_embed_inline_data_rejected() -> None:
    request = EmbedRequest.model_validate(
        {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}]}}
    )
    with pytest.raises(RequestRejected, match=r"^content\.parts\[0\]\.inlineData:"):
        check_embed(request, EMBED_MODEL)


def test_prompt_text_includes_system_instruction() -> None:
    request = gen(systemInstruction={"parts": [{"text": "sys"}]})
    assert prompt_text(request) == "sys\nhi"
