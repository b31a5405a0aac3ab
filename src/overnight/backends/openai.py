"""The ``openai`` backend: any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI, …).

A GenerateContentRequest becomes one ``POST {base_url}/chat/completions``:

- ``systemInstruction`` → a system message; ``user``/``model`` turns → user/assistant
  messages; text parts join into the message text, image parts (``inlineData``)
  become ``image_url`` parts with a data URL.
- generationConfig → ``temperature``, ``top_p``, ``top_k`` (vLLM, Ollama and llama.cpp
  read it; set ``options.send_top_k = false`` for servers that refuse it), ``max_tokens``
  (default: the model's ``max_output_tokens``), ``stop``, ``seed``, ``n``,
  ``presence_penalty``, ``frequency_penalty``; ``responseMimeType: application/json``
  → ``response_format: json_object``; ``responseSchema``/``responseJsonSchema`` →
  ``response_format: json_schema``; ``text/x.enum`` → a JSON Schema string enum, whose
  answer is unquoted back into the bare value.
- ``tools`` (``functionDeclarations``) and ``toolConfig`` → ``tools`` and
  ``tool_choice``; ``functionCall``/``functionResponse`` parts → assistant
  ``tool_calls`` and ``tool`` messages; the reply's ``tool_calls`` → ``functionCall``
  parts (``backends.openai_tools``, docs/function-calling.md).
- The reply → candidates (``finish_reason`` stop/length/content_filter → STOP/
  MAX_TOKENS/SAFETY), ``usageMetadata`` from ``usage``, ``modelVersion`` from ``model``.

EmbedContentRequests go to ``POST {base_url}/embeddings``, up to
``options.embed_batch_size`` (default 64) inputs per call, ``outputDimensionality`` as
``dimensions``.

Options (``[models.NAME] options = {...}``): ``OpenAIOptions`` in ``backends.options``:
``embed_batch_size``, ``send_top_k``, ``extra_body`` (a table merged into every chat
call, for server-specific fields). Client, limits and retries: ``UpstreamBackend``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from overnight.backends.base import (
    BASIC_GENERATION_FIELDS,
    Capabilities,
    prompt_text,
)
from overnight.backends.openai_tools import chat_messages, reply_calls, tool_fields
from overnight.backends.options import OpenAIOptions
from overnight.backends.schema import STRUCTURED_FIELDS, OutputConstraint, output_constraint
from overnight.backends.traffic import estimate_tokens
from overnight.backends.upstream import (
    UpstreamBackend,
    malformed,
    micro_batch_size,
    require_base_url,
)
from overnight.config import ModelSettings
from overnight.domain.requests import Content, EmbedRequest, GenerateRequest
from overnight.domain.results import Candidate, EmbedResult, GenerateResult
from overnight.errors import RequestRejected

FINISH_REASONS = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",
    "function_call": "STOP",
}
GENERATION_FIELDS = (
    BASIC_GENERATION_FIELDS | STRUCTURED_FIELDS | {"presence_penalty", "frequency_penalty"}
)


class OpenAIBackend(UpstreamBackend):
    """Generation and embeddings through an OpenAI-compatible HTTP server."""

    def __init__(self, name: str, settings: ModelSettings, cache_dir: Path | None = None) -> None:
        self.options = OpenAIOptions.parse(name, settings.options)
        super().__init__(name, settings, embed_batch_size=self.options.embed_batch_size)
        self.base_url = require_base_url(name, settings)
        self.upstream_model = settings.model or name
        self.capabilities = Capabilities(
            model_version=self.upstream_model,
            generate=True,
            embed=True,
            input_modalities=frozenset({"text", "image"}),
            generation_fields=GENERATION_FIELDS,
            response_mime_types=frozenset({"text/plain", "application/json", "text/x.enum"}),
            max_batch_size=micro_batch_size(settings),
            max_candidates=settings.max_candidates,
            function_calling=True,
        )

    @staticmethod
    def auth_headers(key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    # ----------------------------------------------------------------- generate

    async def generate_one(self, request: GenerateRequest) -> GenerateResult:
        constraint = output_constraint(request.generation_config)
        body = self.chat_body(request, constraint)
        reply = await self.post(
            f"{self.base_url}/chat/completions",
            body,
            tokens=self.session.generate_tokens(request),
            what="chat completion",
        )
        return self._result(reply, constraint)

    def chat_body(
        self, request: GenerateRequest, constraint: OutputConstraint | None
    ) -> dict[str, Any]:
        """The ``/chat/completions`` body for ``request``."""
        messages: list[dict[str, Any]] = []
        if request.system_instruction is not None:
            messages.append({"role": "system", "content": request.system_instruction.text})
        messages.extend(chat_messages(request.contents, _message_content))
        config = request.config
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": messages,
            "max_tokens": config.max_output_tokens or self.settings.max_output_tokens,
        }
        optional = {
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k if self.options.send_top_k else None,
            "stop": config.stop_sequences or None,
            "seed": config.seed,
            "n": config.candidate_count,
            "presence_penalty": config.presence_penalty,
            "frequency_penalty": config.frequency_penalty,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if constraint is not None:
            body["response_format"] = response_format(constraint)
        body.update(tool_fields(request))
        body.update(self.options.extra_body)
        return body

    def _result(self, reply: Any, constraint: OutputConstraint | None) -> GenerateResult:
        try:
            choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
            usage = reply.get("usage") or {}
            texts = [(c.get("message") or {}).get("content") or "" for c in choices]
            calls = [reply_calls(c.get("message")) for c in choices]
            reasons = [
                FINISH_REASONS.get(c.get("finish_reason") or "stop", "OTHER") for c in choices
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise malformed(
                f"the upstream's chat completion has an unexpected shape ({exc!r})"
            ) from None
        if constraint is not None and constraint.kind == "enum":
            texts = [_unquote(t) for t in texts]
        completion = int(usage.get("completion_tokens") or 0)
        counts = _split(completion, len(choices))
        return GenerateResult(
            candidates=[
                Candidate(text, reason, count, called)
                if called is not None
                else Candidate(text, "MALFORMED_FUNCTION_CALL", count)
                for text, reason, count, called in zip(texts, reasons, counts, calls, strict=True)
            ],
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            model_version=str(reply.get("model") or self.upstream_model),
        )

    # -------------------------------------------------------------------- embed

    def embed_group_key(self, request: EmbedRequest) -> int:
        return request.output_dimensionality or 0  # one ``dimensions`` per call

    async def embed_group(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        texts = [r.content.text for r in requests]
        body: dict[str, Any] = {"model": self.upstream_model, "input": texts}
        if requests[0].output_dimensionality is not None:
            body["dimensions"] = requests[0].output_dimensionality
        reply = await self.post(
            f"{self.base_url}/embeddings",
            body,
            tokens=estimate_tokens(sum(len(t) for t in texts), 0),
            what="embedding call",
        )
        try:
            data = sorted(reply["data"], key=lambda d: d.get("index", 0))
            vectors = [[float(v) for v in d["embedding"]] for d in data]
        except (KeyError, TypeError, ValueError) as exc:
            raise malformed(
                f"the upstream's embedding answer has an unexpected shape ({exc!r})"
            ) from None
        if len(vectors) != len(texts):
            raise malformed(
                f"the upstream returned {len(vectors)} embeddings for {len(texts)} inputs"
            )
        total = int((reply.get("usage") or {}).get("prompt_tokens") or 0)
        counts = _share(total, [len(t) for t in texts])
        model = str(reply.get("model") or self.upstream_model)
        return [
            EmbedResult(values=v, token_count=c, model_version=model)
            for v, c in zip(vectors, counts, strict=True)
        ]

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        """An estimate (about four characters a token): the OpenAI API has no count call."""
        return [
            estimate_tokens(
                len(r.content.text if isinstance(r, EmbedRequest) else prompt_text(r)), 0
            )
            - 1
            for r in requests
        ]


def response_format(constraint: OutputConstraint) -> dict[str, Any]:
    """The OpenAI ``response_format`` for a structured-output constraint."""
    if constraint.kind == "json" or constraint.json_schema is None:
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": constraint.json_schema, "strict": True},
    }


def _message_content(content: Content) -> str | list[dict[str, Any]]:
    if all(p.text is not None for p in content.parts):
        return content.text
    parts: list[dict[str, Any]] = []
    for part in content.parts:
        if part.text is not None:
            parts.append({"type": "text", "text": part.text})
        elif part.inline_data is not None:
            if not part.inline_data.mime_type.startswith("image/"):
                raise RequestRejected(
                    f"inlineData of type {part.inline_data.mime_type} cannot be sent to an "
                    "OpenAI-compatible server; only images are"
                )
            data = base64.b64encode(part.inline_data.data).decode("ascii")
            url = f"data:{part.inline_data.mime_type};base64,{data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise RequestRejected(
                f"{part.kind} parts cannot be sent to an OpenAI-compatible server; "
                "send text, or images as inlineData"
            )
    return parts


def _unquote(text: str) -> str:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()
    return value if isinstance(value, str) else text


def _split(total: int, parts: int) -> list[int]:
    if parts == 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _share(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``, summing exactly to ``total``."""
    whole = sum(weights) or 1
    counts = [total * w // whole for w in weights]
    for i in range(total - sum(counts)):
        counts[i % len(counts)] += 1
    return counts
