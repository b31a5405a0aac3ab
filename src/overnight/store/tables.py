"""The current schema, as SQLAlchemy Core tables. Times are UNIX seconds (float)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# File ids are per tenant (migration 3): the key is (tenant, id).
files = Table(
    "files",
    metadata,
    Column("tenant", String(128), primary_key=True, index=True),
    Column("id", String(64), primary_key=True),
    Column("display_name", Text, nullable=False, default=""),
    Column("mime_type", String(255), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("source", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("create_time", Float, nullable=False),
    Column("update_time", Float, nullable=False),
    Column("expire_time", Float, nullable=True),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("model", Text, nullable=False),
    Column("model_resolved", String(255), nullable=False),
    Column("display_name", Text, nullable=False, default=""),
    Column("state", String(16), nullable=False, index=True),
    Column("input_file_id", String(64), nullable=True),
    Column("input_blob", Text, nullable=False),
    Column("inline", Boolean, nullable=False, default=False),
    Column("output_file_id", String(64), nullable=True),
    Column("request_count", BigInteger, nullable=False, default=0),
    Column("succeeded_count", BigInteger, nullable=False, default=0),
    Column("failed_count", BigInteger, nullable=False, default=0),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("candidates_tokens", BigInteger, nullable=False, default=0),
    Column("create_time", Float, nullable=False),
    Column("update_time", Float, nullable=False),
    Column("end_time", Float, nullable=True),
    Column("expire_time", Float, nullable=False),
    Column("error", Text, nullable=True),
    Column("ref", String(255), nullable=True, unique=True),
    Column("annotations", Text, nullable=False, default="{}"),
    Column("admitted", Boolean, nullable=False, default=False),
    Column("finalized", Boolean, nullable=False, default=False),
    Column("lease_owner", String(255), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("webhook_config", Text, nullable=True),  # migration 5: JSON {uris, user_metadata}
)

shards = Table(
    "shards",
    metadata,
    Column("batch_id", String(64), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("byte_start", BigInteger, nullable=False),
    Column("byte_end", BigInteger, nullable=False),
    Column("first_line", BigInteger, nullable=False),
    Column("request_count", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("lease_owner", String(255), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("lease_token", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("output_blob", Text, nullable=True),
    Column("succeeded_count", Integer, nullable=False, default=0),
    Column("failed_count", Integer, nullable=False, default=0),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("candidates_tokens", BigInteger, nullable=False, default=0),
    Index("ix_shards_state", "state", "batch_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_hash", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),
    Column("create_time", Float, nullable=False),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("file_id", String(64), nullable=False),
    Column("display_name", Text, nullable=False, default=""),
    Column("mime_type", String(255), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("received", BigInteger, nullable=False, default=0),
    Column("expire_time", Float, nullable=False),
    # One open session per requested name (migration 3); finalize still relies on the
    # files key, as a name can be reserved again while its file is being recorded.
    Index("ux_uploads_tenant_file", "tenant", "file_id", unique=True),
)

# Registered webhooks (migration 5). ``secrets`` is a JSON list of
# {secret, create_time, expire_time}; ``subscribed_events`` a JSON list of names.
webhooks = Table(
    "webhooks",
    metadata,
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

# The outbox (migration 5): one row per event and target, written in the transaction
# that ends the batch. A row is leased by moving ``next_attempt_at`` past the attempt
# under a fresh ``lease_token``; a dispatcher that dies leaves it due again after that.
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("webhook_id", String(64), nullable=True, index=True),  # None: a batch's own URI
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

# The secret that signs deliveries to batches' own webhookConfig URIs, per tenant.
webhook_dynamic_secrets = Table(
    "webhook_dynamic_secrets",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("secret", Text, nullable=False),
    Column("create_time", Float, nullable=False),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("applied_at", Float, nullable=False),
)
