"""The backend seam.

A backend turns canonical requests into canonical results. It returns one item per
request, in order: a result, or a ``RequestRejected`` *instance* for a request it
cannot serve (that request becomes an error line, the rest go on). It *raises*
``RetryableError`` or ``BackendUnavailable`` when the whole call failed; the engine
then retries the shard later instead of failing its lines.

What a model can do is data (``Capabilities``), checked by ``check_request`` before a
request reaches the backend, so an unsupported field is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import EmbedResult, GenerateResult
from overnight.errors import RequestRejected

GenerateOutcome = GenerateResult | RequestRejected
EmbedOutcome = EmbedResult | RequestRejected

# Set by the engine around a backend call when someone is watching progress (``overnight
# run``'s bar). A backend whose requests finish one by one within a call (vLLM's
# continuous batching) may call it with (requests finished, tokens generated) as they
# do, on the caller's event loop; the engine reports whatever it did not when the call
# returns. Backends that finish a call all at once ignore it.
LIVE_PROGRESS: ContextVar[Callable[[int, int], None] | None] = ContextVar(
    "overnight_live_progress", default=None
)

# generationConfig fields every local generative backend honours.
BASIC_GENERATION_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "candidate_count",
        "max_output_tokens",
        "stop_sequences",
        "seed",
        "response_mime_type",
        "thinking_config",
    }
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a model can do. Data, not methods."""

    model_version: str
    generate: bool = False
    embed: bool = False
    input_modalities: frozenset[str] = frozenset({"text"})
    generation_fields: frozenset[str] = BASIC_GENERATION_FIELDS
    response_mime_types: frozenset[str] = frozenset({"text/plain"})
    max_batch_size: int = 64
    max_candidates: int = 1
    embedding_dimensions: int | None = None
    tools: bool = False
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A model engine. Blocking work must run off the event loop."""

    capabilities: Capabilities

    async def start(self) -> None:
        """Load weights / open connections. Idempotent. Raises BackendUnavailable."""

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateOutcome]:
        """One outcome per request, in order."""
        ...

    async def embed(self, requests: Sequence[EmbedRequest]) -> list[EmbedOutcome]:
        """One outcome per request, in order."""
        ...

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        """Prompt tokens per request, in order, as this model would count them."""
        ...

    async def close(self) -> None:
        """Release weights and connections."""


def _reject(path: str, why: str) -> RequestRejected:
    return RequestRejected(f"{path}: {why}")


def check_generate(request: GenerateRequest, caps: Capabilities) -> None:
    """Raise ``RequestRejected`` naming the first field this model cannot honour."""
    if not caps.generate:
        raise RequestRejected(
            f"model {caps.model_version} does not generate content; use an embedding batch"
        )
    turns = list(request.contents)
    for i, content in enumerate(turns):
        if content.role not in (None, "user", "model"):
            raise _reject(
                f"contents[{i}].role", f"{content.role!r} is not supported; use 'user' or 'model'"
            )
        _check_parts(f"contents[{i}]", content.parts, caps)
    if request.system_instruction is not None:
        _check_parts("systemInstruction", request.system_instruction.parts, caps)
    if request.tools and not caps.tools:
        raise _reject(
            "tools", f"model {caps.model_version} does not support tools or function calling"
        )
    if request.tool_config is not None and not caps.tools:
        raise _reject("toolConfig", f"model {caps.model_version} does not support tools")
    if request.cached_content is not None:
        raise _reject("cachedContent", "context caching is not supported by local models")
    config = request.generation_config
    if config is None:
        return
    for name in config.model_fields_set:
        if getattr(config, name) is None:
            continue
        if name not in caps.generation_fields:
            raise _reject(
                f"generationConfig.{_camel(name)}",
                f"not supported by model {caps.model_version}",
            )
    mime = config.response_mime_type
    if mime is not None and mime not in caps.response_mime_types:
        raise _reject(
            "generationConfig.responseMimeType",
            f"{mime!r} is not supported by model {caps.model_version}; "
            f"supported: {', '.join(sorted(caps.response_mime_types))}",
        )
    count = config.candidate_count or 1
    if count > caps.max_candidates:
        raise _reject(
            "generationConfig.candidateCount",
            f"{count} exceeds the {caps.max_candidates} candidates model {caps.model_version} supports",
        )


def check_embed(request: EmbedRequest, caps: Capabilities) -> None:
    """Raise ``RequestRejected`` if this embedding request cannot be served."""
    if not caps.embed:
        raise RequestRejected(
            f"model {caps.model_version} does not produce embeddings; use a generateContent batch"
        )
    _check_parts("content", request.content.parts, caps)
    dim = request.output_dimensionality
    if (
        dim is not None
        and caps.embedding_dimensions is not None
        and dim > caps.embedding_dimensions
    ):
        raise _reject(
            "outputDimensionality",
            f"{dim} exceeds the {caps.embedding_dimensions} dimensions of model {caps.model_version}",
        )


def _check_parts(path: str, parts: Sequence[object], caps: Capabilities) -> None:
    for j, part in enumerate(parts):
        kind = getattr(part, "kind", "empty")
        if kind == "text":
            continue
        if kind == "empty":
            raise _reject(f"{path}.parts[{j}]", "a part must carry one datum, such as text")
        modality = "image" if kind in ("inlineData", "fileData") else kind
        if modality not in caps.input_modalities:
            raise _reject(
                f"{path}.parts[{j}].{kind}",
                f"model {caps.model_version} accepts text parts only",
            )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def prompt_text(request: GenerateRequest) -> str:
    """All text of the request, for token estimates and fakes."""
    pieces = [c.text for c in request.contents]
    if request.system_instruction is not None:
        pieces.insert(0, request.system_instruction.text)
    return "\n".join(pieces)
