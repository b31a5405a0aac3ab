"""Gemini API routes: batches (spec §4–§8).

``POST /{v}/models/{model}:batchGenerateContent`` and ``:asyncBatchEmbedContent`` create a
batch from inline requests or an uploaded file; ``GET /{v}/batches[/{id}]``,
``POST /{v}/batches/{id}:cancel`` and ``DELETE /{v}/batches/{id}`` manage it. Every batch
is rendered as an Operation (``operations.py``). Bodies are parsed like proto3 JSON:
camelCase and snake_case are both accepted.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from overnight.api.body import read_json_object
from overnight.api.deps import ServicesDep, TenantDep, VersionDep
from overnight.api.gemini.bodies import BATCH_CREATE, CANCEL
from overnight.api.gemini.operations import inlined_item, render_listed, render_operation
from overnight.api.openapi import answers, json_body
from overnight.api.paging import PageRequest, paging
from overnight.domain.batches import Batch, BatchKind
from overnight.domain.fields import check_known
from overnight.errors import InvalidArgument
from overnight.services.container import ServiceSet

router = APIRouter()

DEFAULT_PAGE_SIZE = 50
# A list page carries no inline results (a get does), so each operation is small.
MAX_PAGE_SIZE = 100
BatchesPage = Annotated[
    PageRequest, Depends(paging(default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE))
]


def _field(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """A field in either spelling (proto3 JSON); None when absent."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


async def _read_body(request: Request, limit: int) -> dict[str, Any]:
    """The JSON object body, refused past ``limit`` bytes without reading it all."""
    return await read_json_object(
        request,
        shape='{"batch": {...}}',
        required=True,
        limit=limit,
        too_large=f"the batch-create request is larger than the {limit}-byte limit for inline "
        "requests (server.max_inline_bytes); upload the requests as a JSONL file and create "
        'a file batch with {"inputConfig": {"fileName": "files/..."}} instead',
    )


def _inline_requests(requests: Any) -> list[dict[str, Any]]:
    """Shape check only; each request's content is checked by the engine, per line."""
    items = requests.get("requests") if isinstance(requests, dict) else None
    if not isinstance(items, list):
        raise InvalidArgument(
            "batch.inputConfig.requests must be an object holding a list: "
            '{"requests": [{"request": {...}, "metadata": {...}}]}'
        )
    if not items:
        raise InvalidArgument("batch.inputConfig.requests.requests is empty")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "request" not in item:
            raise InvalidArgument(
                f"batch.inputConfig.requests.requests[{i}] must be an object with a 'request'"
            )
    return items


async def _create(
    request: Request, services: ServiceSet, tenant: str, model: str, kind: BatchKind
) -> dict[str, Any]:
    body = await _read_body(request, services.settings.server.max_inline_bytes)
    # Up to server.max_inline_bytes of requests to walk: off the event loop.
    await asyncio.to_thread(check_known, body, BATCH_CREATE[kind])
    batch = body.get("batch")
    if not isinstance(batch, dict):
        raise InvalidArgument('the body must hold the batch: {"batch": {"inputConfig": ...}}')
    display_name = _field(batch, "displayName", "display_name") or ""
    if not isinstance(display_name, str):
        raise InvalidArgument("batch.displayName must be a string")
    config = _field(batch, "inputConfig", "input_config")
    if not isinstance(config, dict):
        raise InvalidArgument(
            'batch.inputConfig is required: {"requests": {"requests": [...]}} or {"fileName": "files/..."}'
        )
    file_name = _field(config, "fileName", "file_name")
    requests = config.get("requests")
    if (file_name is None) == (requests is None):
        raise InvalidArgument("batch.inputConfig needs exactly one of 'requests' and 'fileName'")
    webhooks = services.webhooks.batch_config(_field(batch, "webhookConfig", "webhook_config"))
    if file_name is not None:
        if not isinstance(file_name, str) or not file_name:
            raise InvalidArgument("batch.inputConfig.fileName must be a file name: files/ID")
        created = await services.batches.create_from_file(
            tenant,
            model=model,
            kind=kind,
            file_id=file_name,
            display_name=display_name,
            webhook_config=webhooks,
        )
    else:
        created = await services.batches.create_inline(
            tenant,
            model=model,
            kind=kind,
            requests=_inline_requests(requests),
            display_name=display_name,
            webhook_config=webhooks,
        )
    return render_operation(created)


async def _render(services: ServiceSet, batch: Batch) -> dict[str, Any]:
    lines = await services.batches.inline_results(batch)
    return render_operation(batch, [inlined_item(line) for line in lines])


@router.post(
    "/{version}/models/{model}:batchGenerateContent",
    response_model=None,
    responses=answers("Operation"),
    openapi_extra=json_body("BatchCreateRequest"),
)
async def batch_generate_content(
    version: VersionDep, model: str, request: Request, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    """Create a generate-content batch (spec §4)."""
    return await _create(request, services, tenant, model, BatchKind.GENERATE)


@router.post(
    "/{version}/models/{model}:asyncBatchEmbedContent",
    response_model=None,
    responses=answers("Operation"),
    openapi_extra=json_body("BatchCreateRequest", "requests[].request: EmbedContentRequest"),
)
async def async_batch_embed_content(
    version: VersionDep, model: str, request: Request, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    """Create an embeddings batch (spec §5)."""
    return await _create(request, services, tenant, model, BatchKind.EMBED)


@router.get("/{version}/batches", response_model=None, responses=answers("ListOperationsResponse"))
async def list_batches(
    version: VersionDep,
    services: ServicesDep,
    tenant: TenantDep,
    page: BatchesPage,
) -> dict[str, Any]:
    """Batches newest first, as ``{"operations": [...], "nextPageToken"?}``.

    Like Gemini's list, the operations leave out inline batches' results (the SDK's
    ``batches.list()`` shows their ``dest`` as None): get a batch to read its
    ``inlinedResponses``. That keeps a page small whatever the batches hold.
    """
    batches = await services.batches.list_page(tenant, limit=page.fetch, after=page.after)
    return page.answer("operations", batches, render_listed)


@router.post(
    "/{version}/batches/{batch_id}:cancel", response_model=None, responses=answers("Empty")
)
async def cancel_batch(
    version: VersionDep, batch_id: str, request: Request, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    """Best effort: the batch ends CANCELLED; finished requests stay in its output.
    A batch that has already ended answers FAILED_PRECONDITION naming its state."""
    check_known(await read_json_object(request), CANCEL)
    await services.batches.cancel(tenant, batch_id)
    return {}


@router.get("/{version}/batches/{batch_id}", response_model=None, responses=answers("Operation"))
async def get_batch(
    version: VersionDep, batch_id: str, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    return await _render(services, await services.batches.get(tenant, batch_id))


@router.delete("/{version}/batches/{batch_id}", response_model=None, responses=answers("Empty"))
async def delete_batch(
    version: VersionDep, batch_id: str, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    await services.batches.delete(tenant, batch_id)
    return {}
