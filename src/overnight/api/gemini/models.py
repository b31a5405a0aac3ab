"""Gemini API routes: models (list, get) and the synchronous calls on a model.

``generateContent``, ``streamGenerateContent``, ``embedContent``, ``batchEmbedContents``
and ``countTokens`` run at once on the same backends the batch workers use. Each has
its own literal suffix, so they never clash with the batch routes
(``:batchGenerateContent``, ``:asyncBatchEmbedContent``) in ``batches.py``.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from overnight.api.body import read_json_object
from overnight.api.deps import ServicesDep, TenantDep, VersionDep
from overnight.api.gemini.bodies import (
    BATCH_EMBED_CONTENTS,
    COUNT_TOKENS,
    EMBED_REQUEST,
    GENERATE_REQUEST,
)
from overnight.api.openapi import answers, json_body, ref
from overnight.backends import registry
from overnight.catalog import ModelCatalog, ModelEntry
from overnight.domain.batches import BatchKind
from overnight.domain.fields import check_known
from overnight.domain.lines import parse_request
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.errors import InvalidArgument
from overnight.services.ids import new_id

router = APIRouter()

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
GENERATE_METHODS = [
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "batchGenerateContent",
]
EMBED_METHODS = ["embedContent", "batchEmbedContents", "asyncBatchEmbedContent", "countTokens"]
_WILDCARDS = frozenset("*?[")


def _json(content: Any) -> Response:
    return Response(orjson.dumps(content), media_type="application/json")


# ---- the Model resource ---------------------------------------------------------------


def _methods(entry: ModelEntry) -> list[str]:
    methods: list[str] = []
    if BatchKind.GENERATE in entry.kinds:
        methods += GENERATE_METHODS
    if BatchKind.EMBED in entry.kinds:
        methods += [m for m in EMBED_METHODS if m not in methods]
    return methods


def _pattern_for(catalog: ModelCatalog, bare: str) -> str | None:
    matches = [p for p in catalog.aliases if fnmatch.fnmatchcase(bare, p)]
    return max(matches, key=len) if matches else None


def _model(catalog: ModelCatalog, asked: str, entry: ModelEntry) -> dict[str, Any]:
    """The Model resource for ``asked`` (a model's own name or an alias of ``entry``)."""
    settings = entry.settings
    if asked == entry.name:
        description = settings.description or f"{entry.name} ({settings.backend} backend)"
        served_as = sorted(
            p
            for p, target in catalog.aliases.items()
            if target == entry.name and _WILDCARDS & set(p)
        )
        if served_as:
            description += f". Names matching {', '.join(served_as)} are served by this model."
    else:
        pattern = _pattern_for(catalog, asked)
        via = f" (alias pattern {pattern!r})" if pattern and pattern != asked else " (alias)"
        description = f"Served by Overnight model {entry.name}{via}. {settings.description}".strip()
    model: dict[str, Any] = {
        "name": f"models/{asked}",
        "baseModelId": entry.name,
        "version": entry.name,
        "displayName": asked,
        "description": description,
        "inputTokenLimit": settings.max_input_tokens,
        "outputTokenLimit": settings.max_output_tokens if BatchKind.GENERATE in entry.kinds else 1,
        "supportedGenerationMethods": _methods(entry),
    }
    if BatchKind.GENERATE in entry.kinds:
        model.update(_sampling(entry))
    return model


def _sampling(entry: ModelEntry) -> dict[str, Any]:
    """The defaults a request without them gets (``config.generation``), as Gemini
    publishes them. A local model with no default temperature decodes greedily: 0. An
    upstream's own defaults are unknown here, so they are left out."""
    defaults = entry.generation_defaults
    temperature = defaults.temperature
    if temperature is None and registry.BACKENDS[entry.settings.backend].local:
        temperature = 0.0
    published = {"temperature": temperature, "topP": defaults.top_p, "topK": defaults.top_k}
    return {"maxTemperature": 2.0} | {k: v for k, v in published.items() if v is not None}


@router.get("/{version}/models", responses=answers("ListModelsResponse"))
async def list_models(
    version: VersionDep,
    services: ServicesDep,
    _: TenantDep,
    page_size: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(alias="pageToken")] = None,
) -> Response:
    """Configured models, then each alias that names one model exactly (no wildcard)."""
    catalog = services.catalog
    names = sorted(catalog.models)
    names += sorted(
        p for p in catalog.aliases if not _WILDCARDS & set(p) and p not in catalog.models
    )
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if size < 0:
        raise InvalidArgument(f"pageSize must not be negative, got {page_size}")
    try:
        start = int(page_token) if page_token else 0
    except ValueError:
        raise InvalidArgument(f"pageToken {page_token!r} is not one this server issued") from None
    page = names[start : start + size]
    body: dict[str, Any] = {"models": [_model(catalog, n, catalog.resolve(n)) for n in page]}
    if start + size < len(names):
        body["nextPageToken"] = str(start + size)
    return _json(body)


@router.get("/{version}/models/{model}", responses=answers("Model"))
async def get_model(
    version: VersionDep, model: str, services: ServicesDep, _: TenantDep
) -> Response:
    """A configured model, or any name an alias maps (``gemini-2.5-flash``)."""
    entry = services.catalog.resolve(model)
    return _json(_model(services.catalog, model.removeprefix("models/"), entry))


# ---- calls on a model -----------------------------------------------------------------


def _generate_request(body: Any, prefix: str) -> GenerateRequest:
    try:
        return cast(GenerateRequest, parse_request(body, BatchKind.GENERATE, prefix=prefix))
    except InvalidArgument as exc:
        if prefix:
            raise
        # Fields of a bare body are named from the top: "contents[0].parts: ...".
        raise InvalidArgument(exc.message.lstrip(".").replace("; .", "; ")) from None


async def _generate(
    model: str, request: Request, services: ServicesDep, tenant: str
) -> dict[str, Any]:
    body = await read_json_object(request)
    check_known(body, GENERATE_REQUEST)
    parsed = _generate_request(body, "GenerateContentRequest")
    result = await services.generation.generate(model, parsed, tenant=tenant)
    return result.to_wire(new_id(20))


@router.post(
    "/{version}/models/{model}:generateContent",
    responses=answers("GenerateContentResponse"),
    openapi_extra=json_body("GenerateContentRequest"),
)
async def generate_content(
    version: VersionDep, model: str, request: Request, services: ServicesDep, tenant: TenantDep
) -> Response:
    return _json(await _generate(model, request, services, tenant))


@router.post(
    "/{version}/models/{model}:streamGenerateContent",
    responses={
        200: {
            "description": "One SSE frame with alt=sse, else a JSON array of one response",
            "content": {
                "text/event-stream": {"schema": {"type": "string"}},
                "application/json": {
                    "schema": {"type": "array", "items": ref("GenerateContentResponse")}
                },
            },
        }
    },
    openapi_extra=json_body("GenerateContentRequest"),
)
async def stream_generate_content(
    version: VersionDep,
    model: str,
    request: Request,
    services: ServicesDep,
    tenant: TenantDep,
    alt: str | None = None,
) -> Response:
    """The whole response as one chunk: one SSE frame with ``alt=sse``, else a JSON array."""
    response = await _generate(model, request, services, tenant)
    if alt != "sse":
        return _json([response])
    frame = b"data: " + orjson.dumps(response) + b"\r\n\r\n"

    async def frames() -> Any:
        yield frame

    return StreamingResponse(frames(), media_type="text/event-stream")


def _embed_request(body: Any, prefix: str) -> EmbedRequest:
    return cast(EmbedRequest, parse_request(body, BatchKind.EMBED, prefix=prefix))


@router.post(
    "/{version}/models/{model}:embedContent",
    responses=answers("EmbedContentResponse"),
    openapi_extra=json_body("EmbedContentRequest"),
)
async def embed_content(
    version: VersionDep, model: str, request: Request, services: ServicesDep, _: TenantDep
) -> Response:
    body = await read_json_object(request)
    check_known(body, EMBED_REQUEST)
    parsed = _embed_request(body, "EmbedContentRequest")
    (result,) = await services.generation.embed(model, [parsed])
    return _json({"embedding": {"values": result.values}})


@router.post(
    "/{version}/models/{model}:batchEmbedContents",
    responses=answers("BatchEmbedContentsResponse"),
    openapi_extra=json_body("BatchEmbedContentsRequest"),
)
async def batch_embed_contents(
    version: VersionDep, model: str, request: Request, services: ServicesDep, _: TenantDep
) -> Response:
    body = await read_json_object(request)
    check_known(body, BATCH_EMBED_CONTENTS)
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise InvalidArgument("requests: required, a non-empty list of EmbedContentRequest")
    parsed = [_embed_request(r, f"requests[{i}]") for i, r in enumerate(requests)]
    results = await services.generation.embed(model, parsed)
    return _json({"embeddings": [{"values": r.values} for r in results]})


@router.post(
    "/{version}/models/{model}:countTokens",
    responses=answers("CountTokensResponse"),
    openapi_extra=json_body("CountTokensRequest"),
)
async def count_tokens(
    version: VersionDep, model: str, request: Request, services: ServicesDep, _: TenantDep
) -> Response:
    """``{"contents": [...]}`` or ``{"generateContentRequest": {...}}`` → totalTokens."""
    body = await read_json_object(request)
    check_known(body, COUNT_TOKENS)
    inner = body.get("generateContentRequest", body.get("generate_content_request"))
    if inner is not None:
        parsed = _generate_request(inner, "generateContentRequest")
    elif "contents" in body:
        parsed = _generate_request({"contents": body["contents"]}, "")
    else:
        raise InvalidArgument("contents: required (or generateContentRequest)")
    total = await services.generation.count_tokens(model, parsed)
    return _json({"totalTokens": total})
