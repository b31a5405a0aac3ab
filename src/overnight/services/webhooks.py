"""Webhook use-cases: register, read, list, change, rotate secrets, ping, delete; and
the checks on a batch's own ``webhookConfig``.

Events are written by the store with each batch's terminal transition and sent by
``engine/dispatcher.py``; nothing here makes an HTTP call. URIs are checked
here as far as that needs no network: the scheme, and a literal address (or
``localhost``) that is loopback or private. Host names are resolved and checked again
at each delivery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from overnight.config import WebhookSettings
from overnight.domain.webhooks import (
    GEMINI_ONLY_EVENTS,
    SUBSCRIBABLE_EVENTS,
    SigningSecret,
    Webhook,
    WebhookConfig,
    WebhookState,
    host_problem,
    new_signing_secret,
)
from overnight.errors import InvalidArgument
from overnight.services.ids import new_id
from overnight.store.base import WebhookStore

MAX_URI_CHARS = 2048
MAX_NAME_CHARS = 512
MAX_BATCH_URIS = 10
MAX_USER_METADATA_BYTES = 16 * 1024
KEEP_PREVIOUS_SECRETS_S = 24 * 3600.0  # revoke_previous_secrets_after_h24
UPDATE_FIELDS = ("name", "uri", "subscribed_events", "state")
_MASK_NAMES = {"subscribedEvents": "subscribed_events", "displayName": "name"}


class WebhookService:
    """Registered webhooks of a tenant, and the secret for batches' own URIs."""

    def __init__(
        self,
        store: WebhookStore,
        settings: WebhookSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    async def create(
        self, tenant: str, *, uri: Any, subscribed_events: Any, name: Any = None
    ) -> tuple[Webhook, str]:
        """Register a webhook; returns it and its signing secret (shown this once).

        Raises ``InvalidArgument`` for a bad URI, event or name, ``FailedPrecondition``
        when the tenant has ``webhooks.max_per_tenant`` already.
        """
        now = self.clock()
        secret = new_signing_secret()
        webhook = Webhook(
            id=new_id(),
            tenant=tenant,
            name=self.check_name(name),
            uri=self.check_uri(uri),
            subscribed_events=self.check_events(subscribed_events, required=True),
            state=WebhookState.ENABLED,
            secrets=(SigningSecret(secret, now),),
            create_time=now,
            update_time=now,
        )
        await self.store.create_webhook(webhook, max_per_tenant=self.settings.max_per_tenant)
        return webhook, secret

    async def get(self, tenant: str, webhook_id: str) -> Webhook:
        return await self.store.get_webhook(_bare(webhook_id), tenant)

    async def list_page(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[Webhook]:
        """Newest first; ``after`` is the (create_time, id) of the previous page's last one."""
        return await self.store.list_webhooks(tenant, limit=limit, after=after)

    async def update(
        self,
        tenant: str,
        webhook_id: str,
        fields: Mapping[str, Any],
        update_mask: Sequence[str] | None = None,
    ) -> Webhook:
        """Change ``name``, ``uri``, ``subscribed_events`` or ``state``.

        With ``update_mask`` only the fields it names change (a named field missing from
        ``fields`` is cleared, which only ``name`` allows); without it, every field
        given. Output-only fields are ignored. ``state`` may be ``enabled`` or
        ``disabled``; enabling clears the count of failed deliveries. Raises
        ``InvalidArgument`` or ``NotFound``.
        """
        if update_mask is None:
            names = [f for f in UPDATE_FIELDS if fields.get(f) is not None]
        else:
            names = []
            for entry in update_mask:
                name = _MASK_NAMES.get(entry, entry)
                if name not in UPDATE_FIELDS:
                    raise InvalidArgument(
                        f"update_mask names {entry!r}, which cannot be updated; "
                        f"use {', '.join(UPDATE_FIELDS)}"
                    )
                names.append(name)
        changes: dict[str, Any] = {}
        for name in dict.fromkeys(names):
            value = fields.get(name)
            if name == "name":
                changes["name"] = self.check_name(value)
            elif value is None:
                raise InvalidArgument(f"update_mask names {name!r} but the body gives no {name}")
            elif name == "uri":
                changes["uri"] = self.check_uri(value)
            elif name == "subscribed_events":
                changes["subscribed_events"] = self.check_events(value, required=True)
            else:
                changes["state"] = _check_state(value)
        if not changes:
            return await self.get(tenant, webhook_id)
        return await self.store.update_webhook(_bare(webhook_id), tenant, changes, now=self.clock())

    async def delete(self, tenant: str, webhook_id: str) -> None:
        """Delete a webhook; events not yet delivered to it are dropped. Raises ``NotFound``."""
        await self.store.delete_webhook(_bare(webhook_id), tenant)

    async def rotate_secret(
        self, tenant: str, webhook_id: str, *, revoke_previous_now: bool = False
    ) -> str:
        """A new signing secret (returned this once). The previous ones keep signing
        for 24 hours, so receivers can switch, unless ``revoke_previous_now``."""
        now = self.clock()
        secret = new_signing_secret()
        keep = None if revoke_previous_now else now + KEEP_PREVIOUS_SECRETS_S
        await self.store.rotate_webhook_secret(
            _bare(webhook_id), tenant, secret, now=now, keep_previous_until=keep
        )
        return secret

    async def ping(self, tenant: str, webhook_id: str) -> None:
        """Send the webhook a ``webhook.ping`` event (through the outbox, like any event)."""
        await self.store.enqueue_ping(_bare(webhook_id), tenant, now=self.clock())

    async def dynamic_secret(self, tenant: str) -> str:
        """The secret that signs deliveries to the tenant's batches' own ``webhookConfig``
        URIs (Gemini signs those differently, with tokens Overnight cannot issue)."""
        return await self.store.dynamic_secret(tenant, now=self.clock())

    # ------------------------------------------------------------------- checks

    def batch_config(self, raw: Any) -> WebhookConfig | None:
        """A batch's ``webhookConfig`` (``uris``, ``user_metadata`` or
        ``userMetadata``), checked; None when absent or empty. Raises ``InvalidArgument``."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise InvalidArgument(
                'batch.webhookConfig must be an object: {"uris": [...], "user_metadata": {...}}'
            )
        uris = raw.get("uris")
        if uris is None:
            uris = []
        if not isinstance(uris, list) or len(uris) > MAX_BATCH_URIS:
            raise InvalidArgument(
                f"batch.webhookConfig.uris must be a list of at most {MAX_BATCH_URIS} URIs"
            )
        metadata = raw.get("user_metadata", raw.get("userMetadata"))
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InvalidArgument("batch.webhookConfig.user_metadata must be an object")
            if len(orjson.dumps(metadata)) > MAX_USER_METADATA_BYTES:
                raise InvalidArgument(
                    "batch.webhookConfig.user_metadata is larger than "
                    f"{MAX_USER_METADATA_BYTES} bytes; keep it to ids you can look up"
                )
        checked = tuple(
            dict.fromkeys(
                self.check_uri(u, where=f"batch.webhookConfig.uris[{i}]")
                for i, u in enumerate(uris)
            )
        )
        if not checked and metadata is None:
            return None
        return WebhookConfig(checked, metadata)

    def check_uri(self, uri: Any, *, where: str = "uri") -> str:
        """An http(s) URI with a host; one naming a loopback or private address is
        refused unless ``webhooks.allow_private_addresses``. Raises ``InvalidArgument``."""
        if not isinstance(uri, str) or not uri.strip():
            raise InvalidArgument(f"{where} is required: the http(s) URL events are POSTed to")
        uri = uri.strip()
        if len(uri) > MAX_URI_CHARS:
            raise InvalidArgument(f"{where} is longer than {MAX_URI_CHARS} characters")
        try:
            parts = urlsplit(uri)
            host, _ = parts.hostname, parts.port
        except ValueError as exc:
            raise InvalidArgument(f"{where} {uri!r} is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise InvalidArgument(f"{where} {uri!r} must be an http:// or https:// URL with a host")
        problem = host_problem(host)
        if problem is not None and not self.settings.allow_private_addresses:
            raise InvalidArgument(
                f"{where} {uri!r} points at {problem}; Overnight does not deliver webhooks "
                "to loopback or private addresses (server-side request forgery) unless "
                "webhooks.allow_private_addresses = true"
            )
        return uri

    @staticmethod
    def check_events(events: Any, *, required: bool) -> tuple[str, ...]:
        """A non-empty list of event names the SDK knows. Raises ``InvalidArgument``."""
        if events is None:
            events = []
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise InvalidArgument("subscribed_events must be a list of event names")
        if required and not events:
            raise InvalidArgument(
                "subscribed_events is required: name at least one of "
                + ", ".join(sorted(SUBSCRIBABLE_EVENTS - GEMINI_ONLY_EVENTS))
            )
        unknown = [e for e in events if e not in SUBSCRIBABLE_EVENTS]
        if unknown:
            raise InvalidArgument(
                f"unknown event {unknown[0]!r}; Overnight sends "
                + ", ".join(sorted(SUBSCRIBABLE_EVENTS - GEMINI_ONLY_EVENTS))
                + " (Gemini's interaction.* and video.generated are accepted but never sent)"
            )
        return tuple(dict.fromkeys(events))

    @staticmethod
    def check_name(name: Any) -> str:
        if name is None:
            return ""
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"name must be a string of at most {MAX_NAME_CHARS} characters")
        return name


def _check_state(value: Any) -> WebhookState:
    if value == WebhookState.DISABLED_DUE_TO_FAILED_DELIVERIES.value:
        raise InvalidArgument(
            "state disabled_due_to_failed_deliveries is set by Overnight only; "
            "set enabled or disabled"
        )
    try:
        return WebhookState(value)
    except ValueError:
        raise InvalidArgument(f"state must be enabled or disabled, not {value!r}") from None


def _bare(webhook_id: str) -> str:
    return webhook_id.removeprefix("webhooks/")


def split_mask(masks: Iterable[str | None]) -> list[str] | None:
    """``update_mask`` query values (``a,b`` or repeated) as field names; None if absent."""
    names = [part.strip() for mask in masks if mask for part in mask.split(",") if part.strip()]
    return names or None
