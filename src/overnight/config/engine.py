"""``[engine]``: how batches are cut into shards and executed."""

from __future__ import annotations

from pydantic import Field

from overnight.config.base import Section


class EngineSettings(Section):
    """How batches are cut into shards and executed."""

    shard_size: int = Field(256, ge=1, description="Most requests in one shard.")
    shard_max_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Most input bytes in one shard (bounds memory)."
    )
    workers: int = Field(
        2,
        ge=1,
        description="Shards one process works on at once (keeps a model busy across shard boundaries).",
    )
    lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a shard lease lasts without a heartbeat before another worker may take it.",
    )
    heartbeat_seconds: float = Field(
        10.0, gt=0, description="How often a worker renews the leases it holds."
    )
    max_shard_attempts: int = Field(
        3,
        ge=1,
        description="After this many failed attempts at a shard whose backend keeps failing (not a "
        "transient error), its requests get error lines instead of being retried again. "
        "Leases lost to crashes or shutdowns do not count.",
    )
    backoff_seconds: float = Field(
        0.5,
        gt=0,
        description="First wait before a worker retries after the database, the disk or a "
        "backend failed; it doubles with each further failure.",
    )
    backoff_max_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest wait between a worker's retries while a failure lasts.",
    )
    stall_seconds: float = Field(
        15.0,
        gt=0,
        description="A database call waiting longer than this (locked or unreachable "
        "database) makes /healthz report the workers as degraded.",
    )
    poll_seconds: float = Field(
        0.5, gt=0, description="How long an idle worker sleeps before looking for work again."
    )
    batch_expiry_hours: float = Field(
        48.0,
        gt=0,
        description="A batch still PENDING or RUNNING this long after creation becomes EXPIRED.",
    )
