"""Worker health: whether work is moving, and if not, why.

Every worker loop reports to one ``WorkerHealth``: a step that finished, an error
it contained, an infrastructure fault it is backing off from, a loop that died and
is being restarted. ``report()`` turns that into what ``/healthz`` serves: status
``ok`` while work moves or there is none, ``degraded`` with a reason while the
workers cannot reach the database or write to disk, or a database call has been
waiting longer than ``engine.stall_seconds``.

Errors are classified here, once, for the worker and the report alike:
infrastructure (the database, the disk) heals by itself and is waited out with
backoff; everything else belongs to one batch, one shard or one backend. The
messages a batch fails with, when an error is its own, are written here too.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from overnight.domain.batches import Batch
from overnight.errors import AlreadyExists, BlobError, BlobNotFound, StorageFull, StoreError


class BatchBroken(Exception):
    """An error that belongs to one batch: fail that batch with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Where:
    """What a worker step was doing, for logs and the health report."""

    phase: str = "looking for work"
    batch_id: str | None = None
    seq: int | None = None

    def __str__(self) -> str:
        if self.batch_id is None:
            return self.phase
        if self.seq is None:
            return f"{self.phase} of batches/{self.batch_id}"
        return f"batches/{self.batch_id} shard {self.seq}"


def is_infrastructure(exc: BaseException) -> bool:
    """The database or the disk failed: nothing wrong with the work, wait and retry."""
    if isinstance(exc, BlobNotFound):
        return False
    return isinstance(exc, StoreError | StorageFull | BlobError | OSError)


def infrastructure_kind(exc: BaseException) -> str:
    return "the database" if isinstance(exc, StoreError) else "the blob storage"


def describe(exc: BaseException) -> str:
    """One line for logs and reports; a full disk says so."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"the disk is full: {exc}"
    message = getattr(exc, "message", None) or str(exc)
    return message if message else type(exc).__name__


def input_gone(batch: Batch, when: str) -> str:
    """The error of a batch whose input was deleted behind Overnight's back."""
    if batch.input_file_id:
        return (
            f"the input file files/{batch.input_file_id} was deleted {when}; "
            "create the batch again from a new upload"
        )
    return f"the stored copy of its inline requests was deleted {when}; create the batch again"


def finalize_failure(batch: Batch, exc: BaseException) -> str:
    """The error of a batch whose responses file could not be written or recorded
    (after any error it already had)."""
    if isinstance(exc, AlreadyExists):
        why = (
            "its responses file could not be recorded because a file with the id "
            f"Overnight gives it already exists ({describe(exc)}); "
            "delete or rename that file and create the batch again"
        )
    else:
        why = f"its responses file could not be written: {describe(exc)}; create the batch again"
    return why if batch.error is None else f"{batch.error}; {why}"


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``first``, doubling up to ``cap`` seconds."""

    first: float
    cap: float
    failures: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return delay * random.uniform(0.75, 1.0)

    def reset(self) -> None:
        self.failures = 0


@dataclass
class StepError:
    message: str
    where: str
    batch_id: str | None
    seq: int | None
    time: float  # UNIX seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "where": self.where,
            "batch": None if self.batch_id is None else f"batches/{self.batch_id}",
            "shard": self.seq,
            "time": self.time,
        }


@dataclass
class WorkerHealth:
    """The health record of one ``Worker`` (all its loops)."""

    stall_seconds: float = 15.0
    waiting_since: Callable[[], float | None] = lambda: None  # oldest store call in flight
    clock: Callable[[], float] = time.monotonic
    loops: int = 0
    loops_restarting: int = 0  # loops that died and wait to be started again
    consecutive_failures: int = 0
    last_error: StepError | None = None
    outage: str | None = None  # what is down: "the database", "the blob storage"
    outage_error: str = ""
    outage_since: float | None = None
    last_progress: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    def moved(self) -> None:
        """Work moved: a step finished or a backend answered requests."""
        self.last_progress = self.clock()

    def succeeded(self) -> None:
        """A whole step finished: the database and disk work again."""
        self.moved()
        self.consecutive_failures = 0
        self.outage = self.outage_since = None
        self.outage_error = ""

    def failed(self, exc: BaseException, where: Where) -> None:
        """A step failed; infrastructure failures start (or extend) an outage."""
        message = describe(exc)
        self.last_error = StepError(message, str(where), where.batch_id, where.seq, time.time())
        self.consecutive_failures += 1
        if is_infrastructure(exc):
            if self.outage_since is None:
                self.outage_since = self.clock()
            self.outage = infrastructure_kind(exc)
            self.outage_error = message

    def degraded_reason(self) -> str | None:
        """Why work is not moving, or None while it is (or there is none)."""
        now = self.clock()
        if self.outage_since is not None:
            return (
                f"workers cannot use {self.outage} since {now - self.outage_since:.0f} s: "
                f"{self.outage_error}"
            )
        waiting = self.waiting_since()
        if waiting is not None and now - waiting > self.stall_seconds:
            return (
                f"a database call has been waiting for {now - waiting:.0f} s "
                "(is the database locked or unreachable?)"
            )
        if self.loops_restarting:
            why = f": {self.last_error.message}" if self.last_error else ""
            return (
                f"{self.loops_restarting} of {self.loops} worker loops are restarting "
                f"after an error{why}"
            )
        return None

    def report(self) -> dict[str, Any]:
        """The JSON body of ``/healthz``: ``status`` is ``ok`` or ``degraded``."""
        reason = self.degraded_reason()
        body: dict[str, Any] = {"status": "ok" if reason is None else "degraded"}
        if reason is not None:
            body["reason"] = reason
        body["workers"] = {
            "loops": self.loops,
            "loops_alive": self.loops - self.loops_restarting,
            "seconds_since_progress": round(self.clock() - self.last_progress, 1),
            "consecutive_failures": self.consecutive_failures,
            "backing_off": self.outage_since is not None,
            "last_error": None if self.last_error is None else self.last_error.to_json(),
        }
        return body
