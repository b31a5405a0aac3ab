"""Canonical request types: GenerateContentRequest and EmbedContentRequest.

Parsed like proto3 JSON: every field is accepted in camelCase and in snake_case,
bytes in standard or URL-safe base64, and integers that arrive as floats (``40.0``).
Unknown fields are rejected with a message naming them, as Gemini does, so that a
typo is never silently ignored. Whether a *backend* can honour a known field is a
separate question, answered by its capabilities (see ``backends.base``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """A Gemini wire object: camelCase or snake_case in, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        ser_json_bytes="base64",
    )


def decode_base64(value: object) -> bytes:
    """Accept standard and URL-safe base64, with or without padding."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 (standard or URL-safe)") from None


class Blob(WireModel):
    mime_type: str
    data: bytes

    @field_validator("data", mode="before")
    @classmethod
    def _b64(cls, value: object) -> bytes:
        return decode_base64(value)


class FileData(WireModel):
    file_uri: str
    mime_type: str | None = None


class FunctionCall(WireModel):
    id: str | None = None
    name: str
    args: dict[str, Any] | None = None


class FunctionResponse(WireModel):
    id: str | None = None
    name: str
    response: dict[str, Any] | None = None


class Part(WireModel):
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    executable_code: dict[str, Any] | None = None
    code_execution_result: dict[str, Any] | None = None
    tool_call: dict[str, Any] | None = None
    tool_response: dict[str, Any] | None = None
    thought: bool | None = None
    thought_signature: bytes | None = None
    video_metadata: dict[str, Any] | None = None
    # Hints and annotations SDK 3.x may send beside the datum; local models ignore them.
    media_resolution: Any | None = None
    part_metadata: dict[str, Any] | None = None
    media_processing: Any | None = None
    audio_metadata: Any | None = None
    audio_transcription: Any | None = None
    document_metadata: Any | None = None
    speech_metadata: Any | None = None
    spreadsheet_metadata: Any | None = None

    @field_validator("thought_signature", mode="before")
    @classmethod
    def _b64(cls, value: object) -> bytes | None:
        return None if value is None else decode_base64(value)

    @property
    def kind(self) -> str:
        """The wire name of the datum this part carries (``text``, ``inlineData`` …)."""
        for name in _PART_DATA:
            if getattr(self, name) is not None:
                return to_camel(name)
        return "empty"


_PART_DATA = (
    "text",
    "inline_data",
    "file_data",
    "function_call",
    "function_response",
    "executable_code",
    "code_execution_result",
    "tool_call",
    "tool_response",
)


class Content(WireModel):
    role: str | None = None
    parts: list[Part] = Field(default_factory=list)

    @field_validator("role")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value not in (None, "user", "model", "function", "tool", "system"):
            raise ValueError(f"role must be 'user' or 'model', got {value!r}")
        return value

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if p.text is not None and not p.thought)


class SafetySetting(WireModel):
    category: str
    threshold: str
    method: str | None = None


class ThinkingConfig(WireModel):
    thinking_budget: int | None = None
    include_thoughts: bool | None = None
    thinking_level: str | None = None


class GenerationConfig(WireModel):
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    candidate_count: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    stop_sequences: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None
    response_json_schema: Any | None = None
    response_modalities: list[str] | None = None
    response_logprobs: bool | None = None
    logprobs: int | None = None
    thinking_config: ThinkingConfig | None = None
    media_resolution: str | None = None
    speech_config: dict[str, Any] | None = None
    image_config: dict[str, Any] | None = None
    audio_transcription_config: dict[str, Any] | None = None
    enable_enhanced_civic_answers: bool | None = None


class GenerateRequest(WireModel):
    """A GenerateContentRequest (spec §11.1)."""

    model: str | None = None
    contents: list[Content] = Field(min_length=1)
    system_instruction: Content | None = None
    tools: list[dict[str, Any]] | None = None
    tool_config: dict[str, Any] | None = None
    safety_settings: list[SafetySetting] | None = None
    generation_config: GenerationConfig | None = None
    cached_content: str | None = None
    labels: dict[str, str] | None = None
    service_tier: str | None = None
    store: bool | None = None
    continuation_token: str | None = None

    @property
    def config(self) -> GenerationConfig:
        return self.generation_config or _EMPTY_CONFIG


_EMPTY_CONFIG = GenerationConfig()


class EmbedRequest(WireModel):
    """An EmbedContentRequest (spec §9, §11.3)."""

    model: str | None = None
    content: Content
    task_type: str | None = None
    title: str | None = None
    output_dimensionality: int | None = Field(None, ge=1)

    @field_validator("task_type")
    @classmethod
    def _task(cls, value: str | None) -> str | None:
        if value is not None and value not in TASK_TYPES:
            raise ValueError(f"unknown taskType {value!r}; one of {', '.join(sorted(TASK_TYPES))}")
        return value


TASK_TYPES = frozenset(
    {
        "TASK_TYPE_UNSPECIFIED",
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    }
)
