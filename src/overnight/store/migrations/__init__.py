"""Versioned schema migrations, applied in order at start-up.

Each migration is a function of a SQLAlchemy ``Connection`` inside the migrating
transaction. Add new ones at the end of ``MIGRATIONS``; never edit an applied one.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection

from overnight.store.migrations import (
    m0001_initial,
    m0002_api,
    m0003_file_names,
    m0004_shard_attempts,
    m0005_webhooks,
)

Migration = tuple[int, str, Callable[[Connection], None]]

MIGRATIONS: list[Migration] = [
    (1, "initial schema: files, batches, shards", m0001_initial.upgrade),
    (2, "api keys and upload sessions", m0002_api.upgrade),
    (3, "file names per tenant; one upload session per name", m0003_file_names.upgrade),
    (4, "shard attempts count failures only", m0004_shard_attempts.upgrade),
    (5, "webhooks, their outbox, and batches' own webhookConfig", m0005_webhooks.upgrade),
]
