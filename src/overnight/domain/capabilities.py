"""What a model can do, as data, and the checks that hold a request against it.

``Capabilities`` is reported by each backend; ``check_generate`` and ``check_embed``
run before a request reaches the backend (in a batch's runner and in the synchronous
calls alike), so a field a model cannot honour is never silently ignored: it raises
``RequestRejected`` naming the field. Pure: no backend, engine or I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.tools import check_local_tools, function_tools
from overnight.errors import RequestRejected

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
    # What generationConfig.responseModalities may ask for (lowercase). A model that
    # lists response_modalities in generation_fields passes the field on instead.
    output_modalities: frozenset[str] = frozenset({"text"})
    generation_fields: frozenset[str] = BASIC_GENERATION_FIELDS
    response_mime_types: frozenset[str] = frozenset({"text/plain"})
    max_batch_size: int = 64
    max_candidates: int = 1
    embedding_dimensions: int | None = None
    tools: bool = False  # every Gemini tool, passed on as it came (the gemini backend)
    # functionDeclarations and toolConfig.functionCallingConfig only (docs/function-calling.md)
    function_calling: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _reject(path: str, why: str) -> RequestRejected:
    return RequestRejected(f"{path}: {why}")


def check_generate(request: GenerateRequest, caps: Capabilities) -> None:
    """Raise ``RequestRejected`` naming the first field this model cannot honour."""
    if not caps.generate:
        raise RequestRejected(
            f"model {caps.model_version} does not generate content; use an embedding batch"
        )
    turns = list(request.contents)
    calling = caps.tools or caps.function_calling
    for i, content in enumerate(turns):
        if content.role not in (None, "user", "model") and not (
            calling and content.role == "function"
        ):
            raise _reject(
                f"contents[{i}].role", f"{content.role!r} is not supported; use 'user' or 'model'"
            )
        _check_parts(f"contents[{i}]", content.parts, caps)
    if request.system_instruction is not None:
        _check_parts("systemInstruction", request.system_instruction.parts, caps)
    if caps.function_calling and not caps.tools:
        check_local_tools(request, caps.model_version)
        function_tools(request)
    elif request.tools and not caps.tools:
        raise _reject(
            "tools", f"model {caps.model_version} does not support tools or function calling"
        )
    if request.tool_config is not None and not calling:
        raise _reject("toolConfig", f"model {caps.model_version} does not support tools")
    if request.cached_content is not None:
        raise _reject("cachedContent", "context caching is not supported by local models")
    if request.continuation_token is not None:
        raise _reject("continuationToken", f"not supported by model {caps.model_version}")
    config = request.generation_config
    if config is None:
        return
    for name in config.model_fields_set:
        if getattr(config, name) is None:
            continue
        if name == "response_modalities" and name not in caps.generation_fields:
            _check_modalities(config.response_modalities or [], caps)
        elif name not in caps.generation_fields:
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


def _check_modalities(modalities: Sequence[str], caps: Capabilities) -> None:
    """``responseModalities`` in any case (the SDK README writes ``["text"]``); a
    modality the model cannot produce is refused, naming what it can."""
    for i, modality in enumerate(modalities):
        if modality.lower() in caps.output_modalities or modality == "MODALITY_UNSPECIFIED":
            continue
        kinds = sorted(m.upper() for m in caps.output_modalities)
        listed = ", ".join(f'"{m}"' for m in kinds)
        raise _reject(
            f"generationConfig.responseModalities[{i}]",
            f"{modality!r} is not supported by model {caps.model_version}, which answers "
            f"with {' and '.join(kinds)} only; ask for [{listed}] or leave "
            f"responseModalities out, or configure a model that produces "
            f"{modality.lower()} output",
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
        if kind == "text" or (kind in _FUNCTION_PARTS and (caps.tools or caps.function_calling)):
            continue
        if kind == "empty":
            raise _reject(f"{path}.parts[{j}]", "a part must carry one datum, such as text")
        modality = "image" if kind in ("inlineData", "fileData") else kind
        if modality not in caps.input_modalities:
            raise _reject(
                f"{path}.parts[{j}].{kind}",
                f"model {caps.model_version} accepts text parts only",
            )


_FUNCTION_PARTS = frozenset({"functionCall", "functionResponse"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def prompt_text(request: GenerateRequest) -> str:
    """All text of the request, for token estimates and fakes."""
    pieces = [c.text for c in request.contents]
    if request.system_instruction is not None:
        pieces.insert(0, request.system_instruction.text)
    return "\n".join(pieces)
