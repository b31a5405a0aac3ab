"""0005: webhooks, their outbox, and each batch's own ``webhookConfig``.

Adds ``batches.webhook_config`` (unless migration 1, which creates the batches table
as ``tables.py`` has it now, already did), the ``webhooks`` table, the
``webhook_outbox`` (one row per event and target, written in the transaction that
ends a batch) and ``webhook_dynamic_secrets`` (the per-tenant secret that signs
deliveries to a batch's own URIs).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)


def _tables_v5(meta: MetaData) -> None:
    # Frozen copies of the tables as of version 5 (tables.py may move on).
    Table(
        "webhooks",
        meta,
        Column("id", String(64), primary_key=True),
        Column("tenant", String(128), nullable=False, index=True),
        Column("name", Text, nullable=False, default=""),
        Column("uri", Text, nullable=False),
        Column("subscribed_events", Text, nullable=False),
        Column("state", String(48), nullable=False),
        Column("secrets", Text, nullable=False),
        Column("create_time", Float, nullable=False),
        Column("update_time", Float, nullable=False),
        Column("consecutive_failures", Integer, nullable=False, default=0),
        Column("failing_since", Float, nullable=True),
    )
    Table(
        "webhook_outbox",
        meta,
        Column("id", String(64), primary_key=True),
        Column("event_id", String(64), nullable=False),
        Column("event_type", String(64), nullable=False),
        Column("tenant", String(128), nullable=False),
        Column("webhook_id", String(64), nullable=True, index=True),
        Column("uri", Text, nullable=True),
        Column("payload", Text, nullable=False),
        Column("state", String(16), nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("create_time", Float, nullable=False),
        Column("next_attempt_at", Float, nullable=False),
        Column("lease_token", String(64), nullable=True),
        Column("finish_time", Float, nullable=True),
        Column("last_error", Text, nullable=True),
        Index("ix_webhook_outbox_due", "state", "next_attempt_at"),
    )
    Table(
        "webhook_dynamic_secrets",
        meta,
        Column("tenant", String(128), primary_key=True),
        Column("secret", Text, nullable=False),
        Column("create_time", Float, nullable=False),
    )


def upgrade(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns("batches")}
    if "webhook_config" not in columns:
        conn.execute(text("ALTER TABLE batches ADD COLUMN webhook_config TEXT"))
    meta = MetaData()
    _tables_v5(meta)
    meta.create_all(conn, checkfirst=True)
