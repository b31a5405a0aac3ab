"""Canonical results, and their Gemini wire form (camelCase, spec §8.5, §11.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from overnight.domain.requests import FunctionCall


@dataclass(frozen=True, slots=True)
class Candidate:
    text: str
    finish_reason: str  # STOP | MAX_TOKENS | …
    token_count: int
    # Calls the model made (function calling): each is a ``functionCall`` part after
    # the text part, which is left out when the text is empty.
    function_calls: tuple[FunctionCall, ...] = ()

    def parts(self) -> list[dict[str, Any]]:
        """The candidate's ``content.parts`` on the wire."""
        calls = [
            {"functionCall": call.model_dump(mode="json", exclude_none=True)}
            for call in self.function_calls
        ]
        if calls and not self.text:
            return calls
        return [{"text": self.text}, *calls]


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """A GenerateContentResponse."""

    candidates: list[Candidate]
    prompt_tokens: int
    model_version: str
    # The upstream's own GenerateContentResponse, passed through as it came (the
    # ``gemini`` backend): safety ratings, citations and the like survive.
    raw: dict[str, Any] | None = None

    @property
    def candidates_tokens(self) -> int:
        return sum(c.token_count for c in self.candidates)

    def to_wire(self, response_id: str | None = None) -> dict[str, Any]:
        if self.raw is not None:
            passed = dict(self.raw)
            if response_id and "responseId" not in passed:
                passed["responseId"] = response_id
            return passed
        body: dict[str, Any] = {
            "candidates": [
                {
                    "content": {"parts": c.parts(), "role": "model"},
                    "finishReason": c.finish_reason,
                    "index": i,
                }
                for i, c in enumerate(self.candidates)
            ],
            "usageMetadata": {
                "promptTokenCount": self.prompt_tokens,
                "candidatesTokenCount": self.candidates_tokens,
                "totalTokenCount": self.prompt_tokens + self.candidates_tokens,
            },
            "modelVersion": self.model_version,
        }
        if response_id:
            body["responseId"] = response_id
        return body


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """An EmbedContentResponse."""

    values: list[float]
    token_count: int = 0
    model_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return self.token_count

    @property
    def candidates_tokens(self) -> int:
        return 0

    def to_wire(self, response_id: str | None = None) -> dict[str, Any]:
        return {"embedding": {"values": self.values}, "tokenCount": str(self.token_count)}
