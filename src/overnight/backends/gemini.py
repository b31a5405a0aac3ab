"""The ``gemini`` backend: pass requests through to a Gemini-compatible server.

That is the Gemini API itself, or another Overnight. Requests go out as they came
(``POST {base_url}/{version}/models/{model}:generateContent``), and the answer comes
back as it came, safety ratings and all; only ``responseId`` is added where the
upstream gave none. Embedding requests are packed, up to ``options.embed_batch_size``
(default 100, Gemini's limit) at a time, into ``:batchEmbedContents`` calls;
``countTokens`` asks the upstream.

``base_url`` defaults to https://generativelanguage.googleapis.com and the API version
to ``v1beta``; a ``base_url`` ending in ``/v1``, ``/v1beta`` or ``/v1alpha`` keeps its
own. The key (``api_key`` or the variable named by ``api_key_env``) is sent as
``x-goog-api-key`` and never logged or echoed. Options: ``GeminiOptions`` in
``backends.options``. Client, limits and retries: ``UpstreamBackend``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overnight.backends.base import Capabilities
from overnight.backends.options import GeminiOptions
from overnight.backends.traffic import estimate_tokens
from overnight.backends.upstream import (
    UpstreamBackend,
    fan_out,
    malformed,
    micro_batch_size,
    require_base_url,
)
from overnight.config import ModelSettings
from overnight.domain.requests import (
    EmbedRequest,
    FunctionCall,
    GenerateRequest,
    GenerationConfig,
)
from overnight.domain.results import Candidate, EmbedResult, GenerateResult
from overnight.errors import RequestRejected

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_VERSIONED = re.compile(r"/v1(alpha|beta)?$")


class GeminiBackend(UpstreamBackend):
    """Generation and embeddings through a Gemini-compatible HTTP server."""

    def __init__(self, name: str, settings: ModelSettings, cache_dir: Path | None = None) -> None:
        self.options = GeminiOptions.parse(name, settings.options)
        super().__init__(name, settings, embed_batch_size=self.options.embed_batch_size)
        base = require_base_url(name, settings, DEFAULT_BASE_URL)
        self.base_url = base if _VERSIONED.search(base) else f"{base}/v1beta"
        self.upstream_model = (settings.model or name).removeprefix("models/")
        self.capabilities = Capabilities(
            model_version=self.upstream_model,
            generate=True,
            embed=True,
            input_modalities=frozenset(
                {
                    "text",
                    "image",
                    "functionCall",
                    "functionResponse",
                    "executableCode",
                    "codeExecutionResult",
                }
            ),
            generation_fields=frozenset(GenerationConfig.model_fields),
            response_mime_types=frozenset(
                {"text/plain", "application/json", "text/x.enum", "text/x-python"}
            ),
            max_batch_size=micro_batch_size(settings),
            max_candidates=settings.max_candidates,
            tools=True,
        )

    @staticmethod
    def auth_headers(key: str | None) -> dict[str, str]:
        return {"x-goog-api-key": key} if key else {}

    def _url(self, method: str) -> str:
        return f"{self.base_url}/models/{self.upstream_model}:{method}"

    async def generate_one(self, request: GenerateRequest) -> GenerateResult:
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        body.pop("model", None)
        reply = await self.post(
            self._url("generateContent"),
            body,
            tokens=self.session.generate_tokens(request),
            what="generateContent call",
        )
        if not isinstance(reply, dict):
            raise malformed("the upstream's generateContent answer is not a JSON object")
        return _result(reply, self.upstream_model)

    async def embed_group(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        items = []
        for request in requests:
            item = request.model_dump(mode="json", by_alias=True, exclude_none=True)
            item["model"] = f"models/{self.upstream_model}"
            items.append(item)
        reply = await self.post(
            self._url("batchEmbedContents"),
            {"requests": items},
            tokens=estimate_tokens(sum(len(r.content.text) for r in requests), 0),
            what="batchEmbedContents call",
        )
        try:
            embeddings = reply["embeddings"]
            vectors = [[float(v) for v in e["values"]] for e in embeddings]
        except (KeyError, TypeError, ValueError) as exc:
            raise malformed(
                f"the upstream's batchEmbedContents answer has an unexpected shape ({exc!r})"
            ) from None
        if len(vectors) != len(requests):
            raise malformed(
                f"the upstream returned {len(vectors)} embeddings for {len(requests)} requests"
            )
        counts = [int(e.get("tokenCount") or 0) for e in embeddings]
        return [
            EmbedResult(values=v, token_count=c, model_version=self.upstream_model)
            for v, c in zip(vectors, counts, strict=True)
        ]

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        async def one(request: GenerateRequest | EmbedRequest) -> int:
            if isinstance(request, EmbedRequest):
                body: dict[str, Any] = {
                    "contents": [
                        request.content.model_dump(mode="json", by_alias=True, exclude_none=True)
                    ]
                }
            else:
                inner = request.model_dump(mode="json", by_alias=True, exclude_none=True)
                inner["model"] = f"models/{self.upstream_model}"
                body = {"generateContentRequest": inner}
            reply = await self.post(self._url("countTokens"), body, what="countTokens call")
            return int(reply.get("totalTokens") or 0)

        outcomes = await fan_out(requests, one)
        for outcome in outcomes:
            if isinstance(outcome, RequestRejected):
                raise outcome
        return [int(o) for o in outcomes]  # type: ignore[arg-type]


def _result(reply: dict[str, Any], model: str) -> GenerateResult:
    usage = reply.get("usageMetadata") or {}
    candidates = []
    raw_candidates = reply.get("candidates") or []
    counts = [0] * len(raw_candidates)
    if raw_candidates:
        counts[0] = int(usage.get("candidatesTokenCount") or 0)
    for raw, count in zip(raw_candidates, counts, strict=True):
        parts = (raw.get("content") or {}).get("parts") or []
        text = "".join(p.get("text", "") for p in parts if not p.get("thought"))
        calls = tuple(_call(p["functionCall"]) for p in parts if p.get("functionCall"))
        reason = str(raw.get("finishReason") or "STOP")
        candidates.append(Candidate(text, reason, count, calls))
    return GenerateResult(
        candidates=candidates,
        prompt_tokens=int(usage.get("promptTokenCount") or 0),
        model_version=str(reply.get("modelVersion") or model),
        raw=reply,
    )


def _call(raw: Any) -> FunctionCall:
    """A ``functionCall`` part as the upstream sent it (tools pass through as they came)."""
    raw = raw if isinstance(raw, dict) else {}
    call_id, args = raw.get("id"), raw.get("args")
    return FunctionCall(
        id=call_id if isinstance(call_id, str) else None,
        name=str(raw.get("name") or ""),
        args=args if isinstance(args, dict) else None,
    )
