"""Batch and shard records and the batch state machine.

    PENDING ──admission──▶ RUNNING ──last shard──▶ SUCCEEDED
       │                      │
       ├──────cancel──────────┴──▶ CANCELLED
       ├──────deadline────────┴──▶ EXPIRED
       └──unreadable input / infrastructure──▶ FAILED

Every transition is applied by the store as a conditional UPDATE whose WHERE clause
is ``state IN allowed_sources(target)``, so concurrent workers cannot both win.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from overnight.domain.webhooks import WebhookConfig


class BatchState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def wire(self) -> str:
        """The Gemini wire name (``BATCH_STATE_RUNNING``)."""
        return f"BATCH_STATE_{self.value}"


TERMINAL_STATES = frozenset(
    {BatchState.SUCCEEDED, BatchState.FAILED, BatchState.CANCELLED, BatchState.EXPIRED}
)

TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    BatchState.PENDING: frozenset(
        {BatchState.RUNNING, BatchState.CANCELLED, BatchState.EXPIRED, BatchState.FAILED}
    ),
    BatchState.RUNNING: frozenset(
        {BatchState.SUCCEEDED, BatchState.CANCELLED, BatchState.EXPIRED, BatchState.FAILED}
    ),
    BatchState.SUCCEEDED: frozenset(),
    BatchState.FAILED: frozenset(),
    BatchState.CANCELLED: frozenset(),
    BatchState.EXPIRED: frozenset(),
}


def allowed_sources(target: BatchState) -> frozenset[BatchState]:
    """The states from which ``target`` may be entered."""
    return frozenset(src for src, targets in TRANSITIONS.items() if target in targets)


class BatchKind(enum.StrEnum):
    GENERATE = "generate"
    EMBED = "embed"


class ShardState(enum.StrEnum):
    PENDING = "PENDING"
    LEASED = "LEASED"
    DONE = "DONE"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, summed over requests."""

    prompt_tokens: int = 0
    candidates_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.candidates_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.candidates_tokens + other.candidates_tokens,
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch job. Times are UNIX seconds (UTC)."""

    id: str
    tenant: str
    kind: BatchKind
    model: str  # as the client named it, e.g. "models/gemini-2.5-flash"
    model_resolved: str  # the configured model that serves it
    display_name: str
    state: BatchState
    input_file_id: str | None
    inline: bool
    output_file_id: str | None
    request_count: int
    succeeded_count: int
    failed_count: int
    usage: Usage
    create_time: float
    update_time: float
    end_time: float | None
    expire_time: float
    error: str | None
    ref: str | None
    admitted: bool
    finalized: bool
    webhook_config: WebhookConfig | None = None  # the batch's own webhookConfig, if any

    @classmethod
    def new(
        cls,
        *,
        id: str,
        tenant: str,
        kind: BatchKind,
        model: str,
        model_resolved: str,
        input_file_id: str | None,
        inline: bool,
        now: float,
        expiry_s: float,
        display_name: str = "",
        ref: str | None = None,
        webhook_config: WebhookConfig | None = None,
    ) -> Batch:
        """A batch just created: PENDING, not yet admitted, no counts; it expires
        ``expiry_s`` after ``now`` unless it ends first."""
        return cls(
            id=id,
            tenant=tenant,
            kind=kind,
            model=model,
            model_resolved=model_resolved,
            display_name=display_name,
            state=BatchState.PENDING,
            input_file_id=input_file_id,
            inline=inline,
            output_file_id=None,
            request_count=0,
            succeeded_count=0,
            failed_count=0,
            usage=Usage(),
            create_time=now,
            update_time=now,
            end_time=None,
            expire_time=now + expiry_s,
            error=None,
            ref=ref,
            admitted=False,
            finalized=False,
            webhook_config=webhook_config,
        )

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    @property
    def done_count(self) -> int:
        return self.succeeded_count + self.failed_count

    @property
    def pending_count(self) -> int:
        return max(self.request_count - self.done_count, 0)


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """A contiguous byte range of the input, cut at admission."""

    seq: int
    byte_start: int
    byte_end: int
    first_line: int  # 1-based physical line number of the range's first line
    request_count: int


@dataclass(frozen=True, slots=True)
class Shard:
    batch_id: str
    seq: int
    byte_start: int
    byte_end: int
    first_line: int
    request_count: int
    state: ShardState
    lease_owner: str | None
    lease_expires: float | None
    lease_token: str | None
    attempts: int
    output_blob: str | None


@dataclass(frozen=True, slots=True)
class ShardOutcome:
    """What a worker commits for a shard, in one transaction with the shard's DONE."""

    output_blob: str
    succeeded: int
    failed: int
    usage: Usage


class BatchWork(enum.Enum):
    """What a worker that claimed a batch does with it next."""

    ADMIT = "admit"  # PENDING: stream the input once and cut shards
    FINALIZE = "finalize"  # no shard left to run: build the responses file, end the batch


@dataclass(frozen=True, slots=True)
class LeasedShard:
    """A leased shard with everything needed to run it, read in the lease's transaction.

    ``batch`` is the batch as it was when the lease was taken (RUNNING, not overdue);
    ``input_key`` is the blob holding its input; the shard's bytes are
    ``shard.byte_start``–``shard.byte_end`` of that blob.
    """

    shard: Shard
    batch: Batch
    input_key: str

    @property
    def byte_range(self) -> tuple[int, int]:
        """The shard's ``[start, end)`` byte offsets in the input blob."""
        return self.shard.byte_start, self.shard.byte_end
