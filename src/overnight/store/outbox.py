"""The webhook outbox in SQL: events written with the state change, leased, finished.

``enqueue_batch_events`` runs inside the transaction that moves a batch to a terminal
state (``SqlBatchStore.transition``, ``SqlWorkQueue.expire_batches`` and
``finalize``), so an event exists exactly when its state change does: a crash, or a
SIGKILL of ``serve``, can lose neither. ``SqlWebhookOutbox`` is what the dispatcher
uses: lease due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite holds the write
lock), then record each attempt, conditional on the lease token.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from overnight.domain.batches import Batch, BatchState
from overnight.domain.webhooks import (
    BATCH_EVENTS,
    DYNAMIC_EVENTS,
    Delivery,
    DeliveryState,
    DisablePolicy,
    OutboxEntry,
    WebhookEvent,
    WebhookState,
    batch_event_payload,
    new_event_id,
    new_signing_secret,
)
from overnight.store import tables as t
from overnight.store.db import Database
from overnight.store.rows import to_batch, to_webhook

_PENDING = DeliveryState.PENDING.value


def new_delivery_id() -> str:
    return "dlv_" + secrets.token_hex(12)


def outbox_row(
    event_id: str,
    event: WebhookEvent,
    tenant: str,
    payload: str,
    now: float,
    *,
    webhook_id: str | None = None,
    uri: str | None = None,
) -> dict[str, Any]:
    return {
        "id": new_delivery_id(),
        "event_id": event_id,
        "event_type": event.value,
        "tenant": tenant,
        "webhook_id": webhook_id,
        "uri": uri,
        "payload": payload,
        "state": _PENDING,
        "attempts": 0,
        "create_time": now,
        "next_attempt_at": now,
    }


def enqueue_batch_events(
    conn: Connection, batch_ids: Sequence[str], state: BatchState, now: float
) -> None:
    """Write the outbox rows for batches that just entered ``state``, in the caller's
    transaction: to each URI of a batch's own ``webhookConfig`` (which replace the
    registered webhooks for that batch), else to each of its tenant's enabled webhooks
    subscribed to the event."""
    event = BATCH_EVENTS.get(state.value)
    if event is None or not batch_ids:
        return
    rows = conn.execute(select(t.batches).where(t.batches.c.id.in_(list(batch_ids)))).mappings()
    subscribers: dict[str, list[str]] = {}
    out: list[dict[str, Any]] = []
    for row in rows:
        batch = to_batch(row)
        config = batch.webhook_config
        payload = _batch_payload(batch, event, now)
        event_id = new_event_id()
        if config is not None and config.uris:
            if event in DYNAMIC_EVENTS:
                out += [
                    outbox_row(event_id, event, batch.tenant, payload, now, uri=uri)
                    for uri in config.uris
                ]
            continue
        if batch.tenant not in subscribers:
            subscribers[batch.tenant] = _subscribed(conn, batch.tenant, event)
        out += [
            outbox_row(event_id, event, batch.tenant, payload, now, webhook_id=hook_id)
            for hook_id in subscribers[batch.tenant]
        ]
    if out:
        conn.execute(insert(t.webhook_outbox), out)


def _batch_payload(batch: Batch, event: WebhookEvent, now: float) -> str:
    config = batch.webhook_config
    return batch_event_payload(
        event,
        batch_id=batch.id,
        state=batch.state.value,
        now=now,
        model=batch.model,
        display_name=batch.display_name,
        inline=batch.inline,
        output_file_id=batch.output_file_id,
        error=batch.error,
        user_metadata=config.user_metadata if config is not None else None,
    )


def _subscribed(conn: Connection, tenant: str, event: WebhookEvent) -> list[str]:
    w = t.webhooks
    hooks = conn.execute(
        select(w).where(w.c.tenant == tenant, w.c.state == WebhookState.ENABLED.value)
    ).mappings()
    return [row["id"] for row in hooks if event.value in to_webhook(row).subscribed_events]


def dynamic_secret(conn: Connection, tenant: str, now: float) -> str:
    """The tenant's secret for its batches' own URIs, made on first use."""
    s = t.webhook_dynamic_secrets
    values = {"tenant": tenant, "secret": new_signing_secret(), "create_time": now}
    dialect_insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    conn.execute(dialect_insert(s).values(**values).on_conflict_do_nothing())
    return str(conn.execute(select(s.c.secret).where(s.c.tenant == tenant)).scalar_one())


class SqlWebhookOutbox:
    """The ``WebhookOutbox`` over a ``Database``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def lease_deliveries(
        self, token: str, *, now: float, lease_until: float, limit: int
    ) -> list[Delivery]:
        """Lease up to ``limit`` due rows until ``lease_until``, oldest due first.

        A row whose webhook was deleted or is no longer enabled is finished as FAILED
        here instead. Each delivery carries the signing secrets live now.
        """
        o = t.webhook_outbox

        def q(conn: Connection) -> list[Delivery]:
            stmt = (
                select(o.c.id)
                .where(o.c.state == _PENDING, o.c.next_attempt_at <= now)
                .order_by(o.c.next_attempt_at)
                .limit(limit)
            )
            if not self._db.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            ids = list(conn.execute(stmt).scalars())
            if not ids:
                return []
            conn.execute(
                update(o)
                .where(o.c.id.in_(ids), o.c.state == _PENDING)
                .values(lease_token=token, next_attempt_at=lease_until)
            )
            rows = list(
                conn.execute(select(o).where(o.c.id.in_(ids)).order_by(o.c.create_time)).mappings()
            )
            hook_ids = {r["webhook_id"] for r in rows if r["webhook_id"]}
            hooks = {
                r["id"]: to_webhook(r)
                for r in conn.execute(select(t.webhooks).where(t.webhooks.c.id.in_(hook_ids)))
                .mappings()
                .all()
            }
            out: list[Delivery] = []
            for row in rows:
                uri: str = row["uri"]
                signing: tuple[str, ...]
                if row["webhook_id"]:
                    hook = hooks.get(row["webhook_id"])
                    if hook is None or hook.state is not WebhookState.ENABLED:
                        why = (
                            "the webhook was deleted"
                            if hook is None
                            else f"the webhook is {hook.state.value}"
                        )
                        _finish(conn, row["id"], DeliveryState.FAILED, now, why)
                        continue
                    uri = hook.uri
                    signing = tuple(s.secret for s in hook.live_secrets(now))
                else:
                    signing = (dynamic_secret(conn, row["tenant"], now),)
                out.append(
                    Delivery(
                        id=row["id"],
                        event_id=row["event_id"],
                        event_type=row["event_type"],
                        tenant=row["tenant"],
                        webhook_id=row["webhook_id"],
                        uri=uri,
                        payload=row["payload"],
                        secrets=signing,
                        attempts=int(row["attempts"]),
                        create_time=row["create_time"],
                        token=token,
                    )
                )
            return out

        return await self._db.run(q)

    async def finish_attempt(
        self,
        delivery: Delivery,
        *,
        now: float,
        delivered: bool,
        error: str | None = None,
        retry_at: float | None = None,
        policy: DisablePolicy,
    ) -> bool:
        """Record one attempt: DELIVERED; or failed, due again at ``retry_at`` (None: the
        window closed, FAILED). A failed attempt counts against its webhook, which
        ``policy`` may disable (then its other pending rows are FAILED too).

        Returns True when this attempt disabled the webhook. Nothing changes if the
        lease was lost (the row was leased again after ``lease_until``).
        """
        o, w = t.webhook_outbox, t.webhooks

        def q(conn: Connection) -> bool:
            values: dict[str, Any] = {"attempts": o.c.attempts + 1, "lease_token": None}
            if delivered:
                values.update(state=DeliveryState.DELIVERED.value, finish_time=now, last_error=None)
            elif retry_at is None:
                values.update(state=DeliveryState.FAILED.value, finish_time=now, last_error=error)
            else:
                values.update(next_attempt_at=retry_at, last_error=error)
            res = conn.execute(
                update(o)
                .where(
                    o.c.id == delivery.id, o.c.lease_token == delivery.token, o.c.state == _PENDING
                )
                .values(**values)
            )
            if res.rowcount != 1 or delivery.webhook_id is None:
                return False
            if delivered:
                conn.execute(
                    update(w)
                    .where(w.c.id == delivery.webhook_id)
                    .values(consecutive_failures=0, failing_since=None)
                )
                return False
            stmt = select(w.c.consecutive_failures, w.c.failing_since, w.c.state).where(
                w.c.id == delivery.webhook_id
            )
            if not self._db.is_sqlite:
                stmt = stmt.with_for_update()
            hook = conn.execute(stmt).first()
            if hook is None:
                return False
            failures, since = int(hook[0] or 0) + 1, hook[1] if hook[1] is not None else now
            disable = hook[2] == WebhookState.ENABLED.value and policy.disables(
                failures, since, now
            )
            changes: dict[str, Any] = {"consecutive_failures": failures, "failing_since": since}
            if disable:
                changes.update(
                    state=WebhookState.DISABLED_DUE_TO_FAILED_DELIVERIES.value, update_time=now
                )
                conn.execute(
                    update(o)
                    .where(o.c.webhook_id == delivery.webhook_id, o.c.state == _PENDING)
                    .values(
                        state=DeliveryState.FAILED.value,
                        finish_time=now,
                        lease_token=None,
                        last_error=f"the webhook was disabled after {failures} failed deliveries",
                    )
                )
            conn.execute(update(w).where(w.c.id == delivery.webhook_id).values(**changes))
            return disable

        return await self._db.run(q)

    async def prune_deliveries(self, before: float) -> int:
        """Delete rows that finished (delivered or failed) before ``before``."""
        o = t.webhook_outbox

        def q(conn: Connection) -> int:
            res = conn.execute(delete(o).where(o.c.state != _PENDING, o.c.finish_time < before))
            return int(res.rowcount)

        return await self._db.run(q)

    async def list_outbox(self, tenant: str | None = None) -> list[OutboxEntry]:
        """Every outbox row (of ``tenant``), oldest first."""
        o = t.webhook_outbox

        def q(conn: Connection) -> list[OutboxEntry]:
            stmt = select(o).order_by(o.c.create_time, o.c.id)
            if tenant is not None:
                stmt = stmt.where(o.c.tenant == tenant)
            return [
                OutboxEntry(
                    id=r["id"],
                    event_id=r["event_id"],
                    event_type=r["event_type"],
                    tenant=r["tenant"],
                    webhook_id=r["webhook_id"],
                    uri=r["uri"],
                    payload=r["payload"],
                    state=DeliveryState(r["state"]),
                    attempts=int(r["attempts"]),
                    next_attempt_at=r["next_attempt_at"],
                    last_error=r["last_error"],
                )
                for r in conn.execute(stmt).mappings()
            ]

        return await self._db.run(q)


def _finish(conn: Connection, row_id: str, state: DeliveryState, now: float, error: str) -> None:
    o = t.webhook_outbox
    conn.execute(
        update(o)
        .where(o.c.id == row_id)
        .values(state=state.value, finish_time=now, lease_token=None, last_error=error)
    )
