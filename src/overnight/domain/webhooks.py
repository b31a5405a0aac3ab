"""Webhooks: registered endpoints, per-batch webhook configs, events and deliveries.

A tenant registers **webhooks** (Gemini's static webhooks: a URI, the events it is
subscribed to, signing secrets); a batch may carry its own ``webhookConfig`` (Gemini's
dynamic webhooks: URIs used *instead of* the registered ones for that batch, and
``user_metadata`` echoed in each of its events). When a batch reaches a terminal state
the store writes one **delivery** per target into an outbox, in the transaction of
the state change; a dispatcher POSTs each, signed per Standard Webhooks, until it is
answered 2xx or its retry window closes.

Pure: records, names, the event payload and the address policy. No I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

SECRET_PREFIX = "whsec_"  # Standard Webhooks: base64 key bytes behind this prefix
EVENT_VERSION = "v1"


class WebhookState(enum.StrEnum):
    """The states the SDK knows (``WebhookState``); the last is set by Overnight only."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    DISABLED_DUE_TO_FAILED_DELIVERIES = "disabled_due_to_failed_deliveries"


class WebhookEvent(enum.StrEnum):
    """The events Overnight sends. ``batch.cancelled`` is an extension (Gemini's SDK 3.6
    does not list it, later ones do): only webhooks subscribed to it get it."""

    BATCH_SUCCEEDED = "batch.succeeded"
    BATCH_FAILED = "batch.failed"
    BATCH_EXPIRED = "batch.expired"
    BATCH_CANCELLED = "batch.cancelled"
    PING = "webhook.ping"


# Gemini's other events: a subscription to them is accepted (code written for Gemini
# keeps working) but Overnight has no interactions or videos, so they never fire.
GEMINI_ONLY_EVENTS = frozenset(
    {
        "interaction.requires_action",
        "interaction.completed",
        "interaction.failed",
        "interaction.cancelled",
        "video.generated",
    }
)
SUBSCRIBABLE_EVENTS = (
    frozenset(
        {
            WebhookEvent.BATCH_SUCCEEDED,
            WebhookEvent.BATCH_FAILED,
            WebhookEvent.BATCH_EXPIRED,
            WebhookEvent.BATCH_CANCELLED,
        }
    )
    | GEMINI_ONLY_EVENTS
)

# What a terminal batch state sends (keyed by ``BatchState`` value).
BATCH_EVENTS: Mapping[str, WebhookEvent] = {
    "SUCCEEDED": WebhookEvent.BATCH_SUCCEEDED,
    "FAILED": WebhookEvent.BATCH_FAILED,
    "EXPIRED": WebhookEvent.BATCH_EXPIRED,
    "CANCELLED": WebhookEvent.BATCH_CANCELLED,
}
# A batch's own webhookConfig URIs cannot subscribe, so they get Gemini's events only.
DYNAMIC_EVENTS = frozenset(
    {WebhookEvent.BATCH_SUCCEEDED, WebhookEvent.BATCH_FAILED, WebhookEvent.BATCH_EXPIRED}
)

# The Operation error code of each unsuccessful end (as api/gemini/operations.py).
_ERROR_CODES = {"FAILED": 13, "CANCELLED": 1, "EXPIRED": 4}


class DeliveryState(enum.StrEnum):
    PENDING = "PENDING"  # waiting for its next attempt (or being attempted)
    DELIVERED = "DELIVERED"  # answered 2xx
    FAILED = "FAILED"  # retry window closed, or its webhook was disabled or deleted


@dataclass(frozen=True, slots=True)
class SigningSecret:
    """One signing secret of a webhook; several sign at once during a rotation."""

    secret: str
    create_time: float
    expire_time: float | None = None

    def live(self, now: float) -> bool:
        return self.expire_time is None or self.expire_time > now

    @property
    def truncated(self) -> str:
        """What the API shows of it after creation: the prefix and four characters."""
        return f"{self.secret[: len(SECRET_PREFIX) + 4]}..."


@dataclass(frozen=True, slots=True)
class Webhook:
    """A registered webhook of a tenant. Times are UNIX seconds (UTC)."""

    id: str
    tenant: str
    name: str
    uri: str
    subscribed_events: tuple[str, ...]
    state: WebhookState
    secrets: tuple[SigningSecret, ...]
    create_time: float
    update_time: float
    consecutive_failures: int = 0
    failing_since: float | None = None

    def live_secrets(self, now: float) -> tuple[SigningSecret, ...]:
        return tuple(s for s in self.secrets if s.live(now))


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """A batch's own ``webhookConfig``: ``uris`` replace the tenant's registered webhooks
    for its events; ``user_metadata`` is echoed in each of them."""

    uris: tuple[str, ...] = ()
    user_metadata: dict[str, Any] | None = None

    def to_json(self) -> str:
        return orjson.dumps({"uris": list(self.uris), "user_metadata": self.user_metadata}).decode()

    @classmethod
    def from_json(cls, text: str | None) -> WebhookConfig | None:
        if not text:
            return None
        data = orjson.loads(text)
        return cls(tuple(data.get("uris") or ()), data.get("user_metadata"))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row leased for an attempt: the exact body and where it goes.

    ``event_id`` is the ``webhook-id`` header (the same on every attempt, so a receiver
    can drop repeats); ``secrets`` are the live signing secrets at lease time.
    """

    id: str
    event_id: str
    event_type: str
    tenant: str
    webhook_id: str | None  # None: a batch's webhookConfig URI
    uri: str
    payload: str
    secrets: tuple[str, ...]
    attempts: int  # attempts made before this one
    create_time: float  # when the event happened; retries stop a window after it
    token: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An outbox row as it stands (for tests and operators)."""

    id: str
    event_id: str
    event_type: str
    tenant: str
    webhook_id: str | None
    uri: str | None
    payload: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DisablePolicy:
    """When failing deliveries disable a webhook: ``failures`` consecutive failed
    attempts, the first of them at least ``after_s`` ago."""

    failures: int
    after_s: float

    def disables(self, consecutive_failures: int, failing_since: float, now: float) -> bool:
        return consecutive_failures >= self.failures and now - failing_since >= self.after_s


def new_signing_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def rfc3339(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def batch_event_payload(
    event: WebhookEvent,
    *,
    batch_id: str,
    state: str,
    now: float,
    model: str,
    display_name: str,
    inline: bool,
    output_file_id: str | None,
    error: str | None,
    user_metadata: dict[str, Any] | None,
) -> str:
    """The JSON body of a batch event, as the bytes that are signed and sent.

    A thin payload, as Gemini's: ``type``, ``version``, ``timestamp`` and ``data`` with
    the batch's name in ``id`` (``client.batches.get(name=data["id"])`` reads the rest),
    its ``state``, ``file_name`` of a file batch's responses file, ``error_code`` and
    ``error_message`` when it did not succeed, and the batch's ``user_metadata``.
    """
    data: dict[str, Any] = {
        "id": f"batches/{batch_id}",
        "state": f"BATCH_STATE_{state}",
        "model": model,
        "display_name": display_name,
    }
    if output_file_id and not inline:
        data["file_name"] = f"files/{output_file_id}"
    if state in _ERROR_CODES:
        data["error_code"] = _ERROR_CODES[state]
        data["error_message"] = error or f"the batch ended {state}"
    if user_metadata is not None:
        data["user_metadata"] = user_metadata
    body = {"type": event.value, "version": EVENT_VERSION, "timestamp": rfc3339(now), "data": data}
    return orjson.dumps(body).decode()


def ping_payload(webhook_id: str, now: float) -> str:
    body = {
        "type": WebhookEvent.PING.value,
        "version": EVENT_VERSION,
        "timestamp": rfc3339(now),
        "data": {"id": f"webhooks/{webhook_id}"},
    }
    return orjson.dumps(body).decode()


# ------------------------------------------------------------------ address policy


def address_problem(address: str) -> str | None:
    """Why a webhook may not be delivered to this IP address (server-side request
    forgery), or None when it may: only globally routable unicast addresses are."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private or not ip.is_global:
        return "a private or reserved address"
    return None


def host_problem(host: str) -> str | None:
    """``address_problem`` for a URI's host without resolving it: a literal address, or
    a name that is loopback by definition (``localhost``). Other names are checked
    once resolved, at each delivery."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback address"
    return address_problem(name)
