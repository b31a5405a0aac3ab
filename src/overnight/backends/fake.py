"""A fast deterministic backend for engine tests and benchmarks.

It "generates" by echoing the last user turn, one token per word, and "embeds" by
hashing words into a small unit vector. It honours maxOutputTokens, stopSequences,
candidateCount and seed, so engine tests can check every path without a model.
With structured output (``backends.schema``) it answers a minimal instance of the
schema instead (the first enum value, the lower bounds, the required properties;
``pattern`` and ``format`` are not honoured), or the first ``text/x.enum`` choice.

Options (``[models.NAME] options = {...}``, ``FakeOptions`` in ``backends.options``):
- ``latency_s``: seconds each call sleeps (simulates a model), default 0.
- ``fail_marker``: a request whose text contains it is rejected (an error line).
- ``dimensions``: embedding size, default 8.
- ``max_batch_size``: most requests per call, default 64.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from overnight.backends.base import (
    BASIC_GENERATION_FIELDS,
    Capabilities,
    EmbedOutcome,
    GenerateOutcome,
    prompt_text,
)
from overnight.backends.options import FakeOptions
from overnight.backends.schema import STRUCTURED_FIELDS, STRUCTURED_MIME_TYPES, output_constraint
from overnight.config import ModelSettings
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import Candidate, EmbedResult, GenerateResult
from overnight.errors import RequestRejected


class FakeBackend:
    """Deterministic, instant (unless ``latency_s``), dependency-free.

    Built like every backend, from a model's settings (``FakeBackend(name, settings,
    cache_dir)``), or in tests from just its options (``FakeBackend(name, {...})``).
    Raises ``ConfigError`` for an unknown or bad option.
    """

    def __init__(
        self,
        model_name: str,
        settings: ModelSettings | Mapping[str, Any] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        raw = settings.options if isinstance(settings, ModelSettings) else settings or {}
        options = FakeOptions.parse(model_name, raw)
        self.latency_s = options.latency_s
        self.fail_marker = options.fail_marker
        self.dimensions = options.dimensions
        self.calls = 0
        self.capabilities = Capabilities(
            model_version=model_name,
            generate=True,
            embed=True,
            generation_fields=BASIC_GENERATION_FIELDS | STRUCTURED_FIELDS,
            response_mime_types=frozenset({"text/plain"}) | STRUCTURED_MIME_TYPES,
            max_batch_size=options.max_batch_size,
            max_candidates=4,
            embedding_dimensions=self.dimensions,
        )

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        """Nothing to release. Idempotent."""
        return None

    async def _pause(self) -> None:
        self.calls += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateOutcome]:
        await self._pause()
        return [self._generate_one(r) for r in requests]

    def _generate_one(self, request: GenerateRequest) -> GenerateOutcome:
        text = prompt_text(request)
        if self.fail_marker and self.fail_marker in text:
            return RequestRejected(f"request contains the fail marker {self.fail_marker!r}")
        config = request.config
        try:
            constraint = output_constraint(config)
        except RequestRejected as exc:
            return exc
        last = request.contents[-1].text
        words = ["echo:", *last.split()]
        if constraint is not None:
            answer = (
                constraint.choices[0]
                if constraint.choices
                else json.dumps(_minimal(constraint.json_schema or {}))
            )
            words = [answer]
        candidates = []
        for i in range(config.candidate_count or 1):
            out = list(words)
            if constraint is not None:
                pass  # every candidate is the same valid answer
            elif config.seed is not None and (config.temperature or 0) > 0:
                out.append(f"#{(config.seed + i) % 1000}")
            elif i:
                out.append(f"#{i}")
            reason = "STOP"
            limit = config.max_output_tokens
            if limit is not None and len(out) > limit:
                out, reason = out[:limit], "MAX_TOKENS"
            answer = " ".join(out)
            for stop in config.stop_sequences or ():
                cut = answer.find(stop)
                if cut >= 0:
                    answer, reason = answer[:cut], "STOP"
            candidates.append(Candidate(answer, reason, len(answer.split())))
        return GenerateResult(
            candidates=candidates,
            prompt_tokens=len(text.split()),
            model_version=self.capabilities.model_version,
        )

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        """One token per word, as ``generate`` and ``embed`` count them."""
        return [
            len((r.content.text if isinstance(r, EmbedRequest) else prompt_text(r)).split())
            for r in requests
        ]

    async def embed(self, requests: Sequence[EmbedRequest]) -> list[EmbedOutcome]:
        await self._pause()
        return [self._embed_one(r) for r in requests]

    def _embed_one(self, request: EmbedRequest) -> EmbedOutcome:
        text = request.content.text
        if self.fail_marker and self.fail_marker in text:
            return RequestRejected(f"request contains the fail marker {self.fail_marker!r}")
        vector = [0.0] * self.dimensions
        for word in text.split():
            digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
            vector[int.from_bytes(digest, "little") % self.dimensions] += 1.0
        dims = request.output_dimensionality or self.dimensions
        vector = vector[:dims]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return EmbedResult(
            values=[v / norm for v in vector],
            token_count=len(text.split()),
            model_version=self.capabilities.model_version,
        )


def _minimal(schema: Any) -> Any:
    """A small instance of a JSON Schema, for the keywords engine tests use."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("anyOf") or schema.get("oneOf"):
        return _minimal((schema.get("anyOf") or schema["oneOf"])[0])
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        return {name: _minimal(sub) for name, sub in properties.items() if name in required}
    if kind == "array":
        return [_minimal(schema.get("items", {}))] * int(schema.get("minItems", 0))
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return max(0, low) if schema.get("maximum", 0) >= 0 else schema["maximum"]
    if kind == "boolean":
        return False
    return None if kind == "null" else {}
