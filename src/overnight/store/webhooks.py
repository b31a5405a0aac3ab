"""Registered webhooks in SQL: create, read, list, change, rotate secrets, delete."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from overnight.domain.webhooks import (
    DeliveryState,
    SigningSecret,
    Webhook,
    WebhookEvent,
    WebhookState,
    new_event_id,
    ping_payload,
)
from overnight.errors import FailedPrecondition
from overnight.store import tables as t
from overnight.store.db import Database
from overnight.store.outbox import dynamic_secret, outbox_row
from overnight.store.rows import to_webhook, webhook_values
from overnight.store.sqlhelpers import owned_row, page

UPDATABLE = frozenset({"name", "uri", "subscribed_events", "state"})


class SqlWebhookStore:
    """The ``WebhookStore`` over a ``Database``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_webhook(self, webhook: Webhook, *, max_per_tenant: int) -> None:
        """Record a webhook. Raises ``FailedPrecondition`` when its tenant already has
        ``max_per_tenant``."""
        w = t.webhooks

        def q(conn: Connection) -> None:
            count = conn.execute(
                select(func.count()).select_from(w).where(w.c.tenant == webhook.tenant)
            ).scalar()
            if int(count or 0) >= max_per_tenant:
                raise FailedPrecondition(
                    f"you have {count} webhooks, the most one tenant may have; delete one "
                    "you no longer use first"
                )
            conn.execute(insert(w).values(**webhook_values(webhook)))

        await self._db.run(q)

    async def get_webhook(self, webhook_id: str, tenant: str | None = None) -> Webhook:
        return await self._db.run(
            lambda c: to_webhook(owned_row(c, t.webhooks, webhook_id, tenant))
        )

    async def list_webhooks(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[Webhook]:
        stmt = page(t.webhooks, tenant, limit, after)
        return await self._db.run(lambda c: [to_webhook(r) for r in c.execute(stmt).mappings()])

    async def update_webhook(
        self, webhook_id: str, tenant: str, changes: Mapping[str, Any], *, now: float
    ) -> Webhook:
        """Apply ``changes`` (name, uri, subscribed_events, state) and return the result.
        Enabling a webhook clears its count of failed deliveries. Raises ``NotFound``."""
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")

        def q(conn: Connection) -> Webhook:
            current = to_webhook(owned_row(conn, t.webhooks, webhook_id, tenant, lock=True))
            updated = replace(current, **dict(changes), update_time=now)
            if changes.get("state") is WebhookState.ENABLED:
                updated = replace(updated, consecutive_failures=0, failing_since=None)
            conn.execute(
                update(t.webhooks)
                .where(t.webhooks.c.id == webhook_id)
                .values(**webhook_values(updated))
            )
            return updated

        return await self._db.run(q)

    async def rotate_webhook_secret(
        self,
        webhook_id: str,
        tenant: str,
        secret: str,
        *,
        now: float,
        keep_previous_until: float | None,
    ) -> Webhook:
        """Add ``secret``; the live ones sign alongside it until ``keep_previous_until``
        (None: they stop at once). Expired secrets are dropped. Raises ``NotFound``."""

        def q(conn: Connection) -> Webhook:
            current = to_webhook(owned_row(conn, t.webhooks, webhook_id, tenant, lock=True))
            kept = []
            if keep_previous_until is not None:
                for old in current.live_secrets(now):
                    until = keep_previous_until
                    if old.expire_time is not None:
                        until = min(until, old.expire_time)
                    kept.append(replace(old, expire_time=until))
            secrets = (*kept, SigningSecret(secret, now))
            updated = replace(current, secrets=secrets, update_time=now)
            conn.execute(
                update(t.webhooks)
                .where(t.webhooks.c.id == webhook_id)
                .values(**webhook_values(updated))
            )
            return updated

        return await self._db.run(q)

    async def delete_webhook(self, webhook_id: str, tenant: str | None = None) -> Webhook:
        """Delete a webhook and the deliveries still waiting for it. Raises ``NotFound``."""

        def q(conn: Connection) -> Webhook:
            row = owned_row(conn, t.webhooks, webhook_id, tenant)
            o = t.webhook_outbox
            conn.execute(
                delete(o).where(
                    o.c.webhook_id == webhook_id, o.c.state == DeliveryState.PENDING.value
                )
            )
            conn.execute(delete(t.webhooks).where(t.webhooks.c.id == webhook_id))
            return to_webhook(row)

        return await self._db.run(q)

    async def enqueue_ping(self, webhook_id: str, tenant: str, *, now: float) -> None:
        """Queue a ``webhook.ping`` event to an enabled webhook. Raises ``NotFound``, or
        ``FailedPrecondition`` when the webhook is not enabled."""

        def q(conn: Connection) -> None:
            hook = to_webhook(owned_row(conn, t.webhooks, webhook_id, tenant))
            if hook.state is not WebhookState.ENABLED:
                raise FailedPrecondition(
                    f"webhook {webhook_id} is {hook.state.value}; enable it first "
                    "(update its state to enabled)"
                )
            row = outbox_row(
                new_event_id(),
                WebhookEvent.PING,
                tenant,
                ping_payload(webhook_id, now),
                now,
                webhook_id=webhook_id,
            )
            conn.execute(insert(t.webhook_outbox).values(**row))

        await self._db.run(q)

    async def dynamic_secret(self, tenant: str, *, now: float) -> str:
        """The secret signing deliveries to the tenant's batches' own URIs (made on
        first use, then the same)."""
        return await self._db.run(lambda c: dynamic_secret(c, tenant, now))
