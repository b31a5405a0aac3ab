"""Gemini API routes: webhooks (``client.webhooks.*`` in the google-genai SDK).

``POST /{v}/webhooks`` registers one (its ``new_signing_secret`` is shown only then),
``GET /{v}/webhooks[/{id}]`` reads them, ``PATCH /{v}/webhooks/{id}?update_mask=``
changes one, ``DELETE`` removes it, ``:ping`` sends it a test event and
``:rotateSigningSecret`` gives it a new secret. These resources speak snake_case on the
wire, as the SDK's webhook types do (``subscribed_events``, ``next_page_token``);
camelCase is accepted in requests too. ``GET /{v}/webhooks:dynamicSigningSecret`` is
Overnight's own: the secret that signs deliveries to batches' ``webhookConfig`` URIs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from overnight.api.body import read_json_object
from overnight.api.deps import ServicesDep, TenantDep, VersionDep
from overnight.api.gemini.bodies import ROTATE_SIGNING_SECRET, WEBHOOK
from overnight.api.paging import decode_page_token, encode_page_token
from overnight.api.wire import timestamp
from overnight.domain.fields import check_known
from overnight.domain.webhooks import SUBSCRIBABLE_EVENTS, Webhook, WebhookState
from overnight.errors import InvalidArgument
from overnight.services.webhooks import split_mask

router = APIRouter()

DEFAULT_PAGE_SIZE = 50  # the SDK's documented default
MAX_PAGE_SIZE = 1000  # and maximum

_TIME: dict[str, Any] = {"type": "string", "description": "RFC 3339, UTC (Z)"}
_EVENTS: dict[str, Any] = {
    "type": "array",
    "items": {"type": "string", "enum": sorted(SUBSCRIBABLE_EVENTS)},
}
WEBHOOK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string", "description": "The user-provided name."},
        "uri": {"type": "string"},
        "subscribed_events": _EVENTS,
        "state": {"type": "string", "enum": [s.value for s in WebhookState]},
        "create_time": _TIME,
        "update_time": _TIME,
        "signing_secrets": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"truncated_secret": {"type": "string"}, "expire_time": _TIME},
            },
        },
        "new_signing_secret": {"type": "string", "description": "Only in the create answer."},
    },
    "required": ["id", "uri", "subscribed_events", "state"],
}
_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "uri": {"type": "string"},
        "subscribed_events": _EVENTS,
        "name": {"type": "string"},
        "state": {"type": "string", "enum": ["enabled", "disabled"]},
    },
}
_SECRET_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"secret": {"type": "string"}}}


def _ok(schema: dict[str, Any]) -> dict[int | str, Any]:
    return {200: {"description": "OK", "content": {"application/json": {"schema": schema}}}}


def _body(description: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "description": description,
            "content": {"application/json": {"schema": _INPUT_SCHEMA}},
        }
    }


def render_webhook(
    webhook: Webhook, *, now: float, new_secret: str | None = None
) -> dict[str, Any]:
    """The Webhook resource as the SDK reads it (snake_case)."""
    body: dict[str, Any] = {
        "id": webhook.id,
        "name": webhook.name,
        "uri": webhook.uri,
        "subscribed_events": list(webhook.subscribed_events),
        "state": webhook.state.value,
        "create_time": timestamp(webhook.create_time),
        "update_time": timestamp(webhook.update_time),
        "signing_secrets": [
            {"truncated_secret": s.truncated}
            | ({"expire_time": timestamp(s.expire_time)} if s.expire_time is not None else {})
            for s in webhook.live_secrets(now)
        ],
    }
    if new_secret is not None:
        body["new_signing_secret"] = new_secret
    return body


def _field(obj: dict[str, Any], snake: str, camel: str) -> Any:
    value = obj.get(snake)
    return obj.get(camel) if value is None else value


async def _read(request: Request) -> dict[str, Any]:
    body = await read_json_object(
        request, shape='{"uri": "https://...", "subscribed_events": ["batch.succeeded"]}'
    )
    check_known(body, WEBHOOK)
    return {
        "uri": body.get("uri"),
        "subscribed_events": _field(body, "subscribed_events", "subscribedEvents"),
        "name": _field(body, "name", "displayName"),
        "state": body.get("state"),
    }


@router.get(
    "/{version}/webhooks:dynamicSigningSecret", response_model=None, responses=_ok(_SECRET_SCHEMA)
)
async def dynamic_signing_secret(
    version: VersionDep, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    """Overnight's own: the secret that signs deliveries to your batches'
    ``webhookConfig`` URIs (Standard Webhooks, like registered webhooks)."""
    return {"secret": await services.webhooks.dynamic_secret(tenant)}


@router.post(
    "/{version}/webhooks",
    response_model=None,
    responses=_ok(WEBHOOK_SCHEMA),
    openapi_extra=_body("The webhook: uri and subscribed_events required, name optional."),
)
async def create_webhook(
    version: VersionDep, request: Request, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    """Register a webhook. The answer carries ``new_signing_secret``, shown only here."""
    fields = await _read(request)
    webhook, secret = await services.webhooks.create(
        tenant,
        uri=fields["uri"],
        subscribed_events=fields["subscribed_events"],
        name=fields["name"],
    )
    return render_webhook(webhook, now=webhook.create_time, new_secret=secret)


@router.get(
    "/{version}/webhooks",
    response_model=None,
    responses=_ok(
        {
            "type": "object",
            "properties": {
                "webhooks": {"type": "array", "items": WEBHOOK_SCHEMA},
                "next_page_token": {"type": "string"},
            },
        }
    ),
)
async def list_webhooks(
    version: VersionDep,
    services: ServicesDep,
    tenant: TenantDep,
    page_size: Annotated[int | None, Query(description="default 50, at most 1000")] = None,
    page_size_camel: Annotated[int | None, Query(alias="pageSize")] = None,
    page_token: Annotated[str | None, Query(description="a next_page_token")] = None,
    page_token_camel: Annotated[str | None, Query(alias="pageToken")] = None,
) -> dict[str, Any]:
    """Newest first, as ``{"webhooks": [...], "next_page_token"?}``."""
    size = page_size if page_size is not None else page_size_camel
    size = DEFAULT_PAGE_SIZE if not size or size <= 0 else min(size, MAX_PAGE_SIZE)
    token = page_token or page_token_camel
    after = decode_page_token(token) if token else None
    rows = await services.webhooks.list_page(tenant, limit=size + 1, after=after)
    now = services.webhooks.clock()
    body: dict[str, Any] = {"webhooks": [render_webhook(w, now=now) for w in rows[:size]]}
    if len(rows) > size:
        last = rows[size - 1]
        body["next_page_token"] = encode_page_token(last.create_time, last.id)
    return body


@router.post(
    "/{version}/webhooks/{webhook_id}:ping",
    response_model=None,
    responses=_ok({"type": "object"}),
    openapi_extra={
        "requestBody": {
            "required": False,
            "description": "Empty (the SDK sends none).",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def ping_webhook(
    version: VersionDep, webhook_id: str, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    """Send the webhook a ``webhook.ping`` event, signed and retried like any other."""
    await services.webhooks.ping(tenant, webhook_id)
    return {}


@router.post(
    "/{version}/webhooks/{webhook_id}:rotateSigningSecret",
    response_model=None,
    responses=_ok(_SECRET_SCHEMA),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "revocation_behavior": {
                                "type": "string",
                                "enum": [
                                    "revoke_previous_secrets_after_h24",
                                    "revoke_previous_secrets_immediately",
                                ],
                            }
                        },
                    }
                }
            },
        }
    },
)
async def rotate_signing_secret(
    version: VersionDep,
    webhook_id: str,
    request: Request,
    services: ServicesDep,
    tenant: TenantDep,
) -> dict[str, Any]:
    """A new secret, shown only here; the previous ones keep signing for 24 hours
    unless ``revocation_behavior`` is ``revoke_previous_secrets_immediately``."""
    body = await read_json_object(request)
    check_known(body, ROTATE_SIGNING_SECRET)
    behavior = _field(body, "revocation_behavior", "revocationBehavior")
    if behavior not in (
        None,
        "revoke_previous_secrets_after_h24",
        "revoke_previous_secrets_immediately",
    ):
        raise InvalidArgument(
            "revocation_behavior must be revoke_previous_secrets_after_h24 or "
            "revoke_previous_secrets_immediately"
        )
    secret = await services.webhooks.rotate_secret(
        tenant, webhook_id, revoke_previous_now=behavior == "revoke_previous_secrets_immediately"
    )
    return {"secret": secret}


@router.get("/{version}/webhooks/{webhook_id}", response_model=None, responses=_ok(WEBHOOK_SCHEMA))
async def get_webhook(
    version: VersionDep, webhook_id: str, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    webhook = await services.webhooks.get(tenant, webhook_id)
    return render_webhook(webhook, now=services.webhooks.clock())


@router.patch(
    "/{version}/webhooks/{webhook_id}",
    response_model=None,
    responses=_ok(WEBHOOK_SCHEMA),
    openapi_extra=_body("The fields to change (all given ones, or those update_mask names)."),
)
async def update_webhook(
    version: VersionDep,
    webhook_id: str,
    request: Request,
    services: ServicesDep,
    tenant: TenantDep,
    update_mask: Annotated[
        str | None, Query(description="fields to change, comma-separated; default: those given")
    ] = None,
    update_mask_camel: Annotated[str | None, Query(alias="updateMask")] = None,
) -> dict[str, Any]:
    """Change a webhook's name, uri, subscribed_events or state (enabled, disabled)."""
    fields = await _read(request)
    mask = split_mask([update_mask, update_mask_camel])
    webhook = await services.webhooks.update(tenant, webhook_id, fields, mask)
    return render_webhook(webhook, now=services.webhooks.clock())


@router.delete(
    "/{version}/webhooks/{webhook_id}", response_model=None, responses=_ok({"type": "object"})
)
async def delete_webhook(
    version: VersionDep, webhook_id: str, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    """Delete it; events not yet delivered to it are dropped."""
    await services.webhooks.delete(tenant, webhook_id)
    return {}
