"""Workers: lease work from the store, run it, commit it, and never die quietly.

A ``Worker`` is one process's share of the engine. It runs ``concurrency`` loops
that each, in turn: admit a PENDING batch, finalize a finished one, or lease and
run one shard. A heartbeat task renews every lease the process holds; a lease that
cannot be renewed is treated as lost and its shard abandoned at the next
micro-batch boundary. The reaper (``reaper.py``) expires overdue batches and frees
the leases of dead processes on this host, so a rerun after SIGKILL resumes at once
instead of waiting for leases to time out.

Liveness: every step's error is caught, logged with its batch and shard, and
contained. An error that belongs to one batch (its input deleted, its results
file impossible to record) fails that batch with a message; a backend failure
releases or retries the shard; a database or disk failure backs off and resumes
by itself when the fault clears (``health.py`` classifies errors and words a
failed batch's message). The loops and the heartbeat are supervised: one that dies
anyway is logged and restarted. ``health`` tells ``/healthz`` whether work is moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from overnight.backends.pool import BackendPool
from overnight.blobs.base import BlobStore
from overnight.config import EngineSettings
from overnight.domain.batches import Batch, BatchState, BatchWork, LeasedShard, Shard, ShardOutcome
from overnight.domain.file_parts import TenantFileReader
from overnight.engine.admission import Admission, cut_shards
from overnight.engine.finalize import finalize_batch
from overnight.engine.health import (
    Backoff,
    BatchBroken,
    Where,
    WorkerHealth,
    describe,
    finalize_failure,
    input_gone,
    is_infrastructure,
)
from overnight.engine.reaper import new_owner_id, reap
from overnight.engine.runner import ProgressFn, ShardAbandoned, fail_shard, run_shard
from overnight.errors import AlreadyExists, BackendError, BlobNotFound, NotFound, RetryableError
from overnight.store.base import WorkQueue

log = logging.getLogger("overnight.worker")

WATCH_SECONDS = 1.0  # how often the health watch looks for a change of state


@dataclass
class _Held:
    shard: Shard
    token: str
    lost: bool = False


@dataclass
class WorkerScope:
    """Which work a worker takes: all of it, some models, or one batch."""

    models: set[str] | None = None
    batch_id: str | None = None


@dataclass
class Worker:
    queue: WorkQueue
    blobs: BlobStore
    pool: BackendPool
    settings: EngineSettings
    scope: WorkerScope = field(default_factory=WorkerScope)
    on_progress: ProgressFn | None = None
    on_finalized: Callable[[str], None] | None = None  # given each batch id it finalized
    clock: Callable[[], float] = time.time
    owner: str = field(default_factory=new_owner_id)
    retention_s: float | None = None
    read_file: TenantFileReader | None = None  # resolves fileData parts (domain.file_parts)

    def __post_init__(self) -> None:
        self._held: dict[tuple[str, int], _Held] = {}
        self._state_cache: dict[str, tuple[float, BatchState]] = {}
        self._last_reap = 0.0
        # Releases that failed (the database was down); retried before the next step.
        self._owed: list[Callable[[], Awaitable[object]]] = []
        self.health = WorkerHealth(
            stall_seconds=self.settings.stall_seconds, waiting_since=self.queue.waiting_since
        )

    # ----------------------------------------------------------------- running

    async def run(self, stop: asyncio.Event, *, concurrency: int | None = None) -> None:
        """Work until ``stop`` is set. On return every lease we held is released.

        Errors never end it: they are contained to their batch or shard, or waited out.
        """
        loops = concurrency or self.settings.workers
        self.health.loops = loops
        workers = [
            asyncio.create_task(self._supervised(f"worker loop {i}", self._loop, stop, loop=True))
            for i in range(loops)
        ]
        helpers = [
            asyncio.create_task(self._supervised("heartbeat", self._heartbeat, stop)),
            asyncio.create_task(self._supervised("health watch", self._watch, stop)),
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in [*workers, *helpers]:
                task.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.queue.release_owner(self.owner))

    async def _supervised(
        self,
        name: str,
        body: Callable[[asyncio.Event], Awaitable[None]],
        stop: asyncio.Event,
        *,
        loop: bool = False,
    ) -> None:
        """Run ``body`` until ``stop``; if it dies, log it and start it again."""
        backoff = Backoff(self.settings.backoff_seconds, self.settings.backoff_max_seconds)
        while not stop.is_set():
            try:
                await body(stop)
                return
            except Exception as exc:
                delay = backoff.next()
                log.exception(
                    "%s of worker %s died; restarting it in %.1f s", name, self.owner, delay
                )
                self.health.failed(exc, Where(name))
            self.health.loops_restarting += loop
            try:
                await _sleep_or_stop(stop, delay)
            finally:
                self.health.loops_restarting -= loop

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self.settings.backoff_seconds, self.settings.backoff_max_seconds)
        while not stop.is_set():
            where = Where()
            try:
                busy = await self._step(stop, where)
            except Exception as exc:
                delay = backoff.next()
                self._report(exc, where, delay)
                await _sleep_or_stop(stop, delay)
                continue
            backoff.reset()
            self.health.succeeded()
            if not busy:
                await _sleep_or_stop(stop, self.settings.poll_seconds)

    def _report(self, exc: Exception, where: Where, delay: float) -> None:
        ongoing = self.health.outage_since is not None
        self.health.failed(exc, where)
        if is_infrastructure(exc):
            # The first failure of an outage is a warning; the watch logs the outage
            # itself, so each further retry is only news at INFO.
            level = logging.INFO if ongoing else logging.WARNING
            log.log(level, "%s: %s; retrying in %.1f s", where, describe(exc), delay)
        elif isinstance(exc, BackendError):
            log.warning("%s: backend trouble, retrying in %.1f s: %s", where, delay, exc)
        else:
            log.error("%s: unexpected error, retrying in %.1f s", where, delay, exc_info=exc)

    async def step(self, stop: asyncio.Event | None = None) -> bool:
        """Do one unit of work. Returns False when there was nothing to do.

        Errors the step cannot contain (the database or disk failing, a backend
        failing) are raised; ``run`` backs off and retries them.
        """
        return await self._step(stop, Where())

    async def _step(self, stop: asyncio.Event | None, where: Where) -> bool:
        await self._settle_owed()
        now = self.clock()
        if now - self._last_reap > self.settings.heartbeat_seconds:
            self._last_reap = now
            where.phase = "reaping"
            await self.reap()
            where.phase = "looking for work"
        claimed = await self.queue.claim_batch_work(
            self.owner,
            now=now,
            lease_until=now + self.settings.lease_seconds,
            models=self.scope.models,
            batch_id=self.scope.batch_id,
        )
        if claimed is not None:
            batch, work = claimed
            where.phase = "admission" if work is BatchWork.ADMIT else "finalization"
            where.batch_id = batch.id
            try:
                if work is BatchWork.ADMIT:
                    await self._admit(batch, where)
                else:
                    await self._finalize(batch, where)
            except NotFound:
                log.info("%s: the batch was deleted meanwhile", where)
            finally:
                await self._release(lambda: self.queue.release_batch(batch.id, self.owner))
            return True
        token = secrets.token_hex(8)
        lease = await self.queue.lease_shard(
            self.owner,
            token,
            now=now,
            lease_until=now + self.settings.lease_seconds,
            models=self.scope.models,
            batch_id=self.scope.batch_id,
        )
        if lease is None:
            return False
        where.phase, where.batch_id, where.seq = "shard", lease.shard.batch_id, lease.shard.seq
        await self._run_shard(lease, token, stop, where)
        return True

    async def reap(self) -> None:
        """Expire overdue batches; free leases of dead processes on this host."""
        await reap(self.queue, self.owner, self.clock())

    # --------------------------------------------------------------- containment

    async def _release(self, release: Callable[[], Awaitable[object]]) -> None:
        """Give a lease back; if the database is down, owe it and retry later."""
        try:
            await asyncio.shield(release())
        except Exception as exc:
            log.debug("release failed (%s); it will be retried", exc)
            self._owed.append(release)

    async def _settle_owed(self) -> None:
        owed, self._owed = self._owed, []
        for i, release in enumerate(owed):
            try:
                await release()
            except Exception:
                self._owed.extend(owed[i:])
                raise

    async def _fail_batch(self, batch: Batch, message: str, where: Where) -> None:
        """Fail one batch for an error that is its own; nothing else is touched."""
        log.error("%s: failing the batch: %s", where, message)
        self.health.failed(BatchBroken(message), where)
        await self.queue.transition(batch.id, BatchState.FAILED, now=self.clock(), error=message)

    # ---------------------------------------------------------------- admission

    async def _admit(self, batch: Batch, where: Where) -> None:
        input_key, _ = await self.queue.batch_input(batch.id)
        s = self.settings

        def scan() -> Admission:
            with self.blobs.open_read(input_key) as f:
                return cut_shards(
                    f,
                    batch.kind,
                    shard_size=s.shard_size,
                    shard_max_bytes=s.shard_max_bytes,
                    inline=batch.inline,
                )

        now = self.clock()
        try:
            admission = await asyncio.to_thread(scan)
        except (BlobNotFound, FileNotFoundError):
            await self._fail_batch(batch, input_gone(batch, "before the batch started"), where)
            return
        except Exception as exc:
            if is_infrastructure(exc):
                raise
            log.exception("%s: admission failed", where)
            await self._fail_batch(
                batch, f"the input could not be admitted: {describe(exc)}", where
            )
            return
        if not admission.has_valid_line:
            why = (
                "the input holds no request lines"
                if admission.request_count == 0
                else f"the input holds no valid request line; first problem: {admission.first_error}"
            )
            await self.queue.transition(batch.id, BatchState.FAILED, now=now, error=why)
            return
        await self.queue.admit(batch.id, self.owner, admission.shards, now=now)

    # ----------------------------------------------------------------- finalize

    async def _finalize(self, batch: Batch, where: Where) -> None:
        try:
            await finalize_batch(
                self.queue, self.blobs, batch, self.owner, retention_s=self.retention_s
            )
        except Exception as exc:
            if is_infrastructure(exc):
                raise
            if not isinstance(exc, AlreadyExists):
                log.exception("%s: finalize failed", where)
            message = finalize_failure(batch, exc)
            log.error("%s: failing the batch: %s", where, message)
            self.health.failed(BatchBroken(message), where)
            target = BatchState.FAILED if batch.state is BatchState.RUNNING else None
            await self.queue.finalize(
                batch.id, self.owner, now=self.clock(), output=None, target=target, error=message
            )
        if self.on_finalized is not None:
            self.on_finalized(batch.id)

    # ------------------------------------------------------------------- shards

    async def _run_shard(
        self, lease: LeasedShard, token: str, stop: asyncio.Event | None, where: Where
    ) -> None:
        shard = lease.shard
        held = _Held(shard, token)
        self._held[(shard.batch_id, shard.seq)] = held
        try:
            outcome = await self._execute(lease, held, stop, where)
            if outcome is not None:
                await self._commit(shard, token, outcome, stop, where)
        finally:
            self._held.pop((shard.batch_id, shard.seq), None)

    async def _execute(
        self, lease: LeasedShard, held: _Held, stop: asyncio.Event | None, where: Where
    ) -> ShardOutcome | None:
        """Run a leased shard; None if it was given back (or its batch failed).

        What the loop must back off from (the database, the disk, a backend) is raised
        after the shard is given back. A failed attempt (a backend error that is not
        transient, or a bug) is counted; the last allowed one answers the shard's
        requests with the error instead.
        """
        shard, token = held.shard, held.token
        batch, input_key = lease.batch, lease.input_key
        give_back = True
        try:
            backend = await self.pool.get(batch.model_resolved)

            async def should_stop() -> bool:
                if held.lost or (stop is not None and stop.is_set()):
                    return True
                return await self._batch_state(shard.batch_id) is not BatchState.RUNNING

            outcome = await run_shard(
                batch=batch,
                shard=shard,
                token=token,
                input_key=input_key,
                backend=backend,
                blobs=self.blobs,
                max_line=self.settings.shard_max_bytes,
                should_stop=should_stop,
                on_progress=self._progress,
                defaults=self.pool.generation_defaults(batch.model_resolved),
                read_file=self.read_file,
            )
            give_back = False
            return outcome
        except (ShardAbandoned, NotFound):
            return None  # stopped at a boundary, or the batch was deleted meanwhile
        except BlobNotFound:
            await self._fail_batch(batch, input_gone(batch, "while the batch ran"), where)
            return None
        except Exception as exc:
            # The runner turns its own blob I/O errors into BlobError or StorageFull, so
            # a bare OSError here came from the backend: a failed attempt.
            infrastructure = is_infrastructure(exc) and not isinstance(exc, OSError)
            if infrastructure or isinstance(exc, RetryableError):
                raise
            attempts = await self.queue.count_failed_attempt(shard.batch_id, shard.seq, token)
            limit = self.settings.max_shard_attempts
            if attempts is None or attempts < limit:
                raise
            log.error(
                "%s: attempt %d of %d failed; answering its requests with the error",
                where,
                attempts,
                limit,
                exc_info=exc,
            )
            outcome = await fail_shard(
                batch, shard, token, input_key, self.blobs, self.settings.shard_max_bytes, exc
            )
            give_back = False
            return outcome
        finally:
            if give_back:
                await self._release(
                    lambda: self.queue.release_shard(shard.batch_id, shard.seq, token)
                )

    async def _commit(
        self,
        shard: Shard,
        token: str,
        outcome: ShardOutcome,
        stop: asyncio.Event | None,
        where: Where,
    ) -> None:
        """Commit a finished shard; wait out a database outage rather than redo the work."""
        backoff = Backoff(self.settings.backoff_seconds, self.settings.backoff_max_seconds)
        while True:
            try:
                committed = await self.queue.commit_shard(
                    shard.batch_id, shard.seq, token, outcome, now=self.clock()
                )
                break
            except Exception as exc:
                if not is_infrastructure(exc) or stop is None or stop.is_set():
                    raise
                delay = backoff.next()
                self._report(exc, where, delay)
                await _sleep_or_stop(stop, delay)
        if not committed:
            log.warning(
                "could not commit %s/%d (lease lost, or the batch was already finalized); output discarded",
                shard.batch_id,
                shard.seq,
            )
            await asyncio.to_thread(self.blobs.delete, outcome.output_blob)

    def _progress(self, requests: int, tokens: int) -> None:
        self.health.moved()
        if self.on_progress is not None:
            self.on_progress(requests, tokens)

    async def _batch_state(self, batch_id: str) -> BatchState:
        """The batch's state, re-read at most once a second.

        While the database is down the last known state stands: the shard goes on,
        and a cancel is noticed once the database is back.
        """
        now = time.monotonic()
        cached = self._state_cache.get(batch_id)
        if cached is None or now - cached[0] > 1.0:
            try:
                state = (await self.queue.get_batch(batch_id)).state
            except Exception as exc:
                if not is_infrastructure(exc):
                    raise
                state = BatchState.RUNNING if cached is None else cached[1]
            cached = (now, state)
            self._state_cache[batch_id] = cached
        return cached[1]

    # ------------------------------------------------------------ heartbeat, watch

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_or_stop(stop, self.settings.heartbeat_seconds)
            until = self.clock() + self.settings.lease_seconds
            for held in list(self._held.values()):
                try:
                    ok = await self.queue.renew_shard(
                        held.shard.batch_id, held.shard.seq, held.token, until
                    )
                except Exception as exc:
                    log.log(
                        logging.INFO if self.health.outage_since else logging.WARNING,
                        "heartbeat of batches/%s shard %d failed: %s",
                        held.shard.batch_id,
                        held.shard.seq,
                        describe(exc),
                    )
                    break  # the database is likely down: try them all next beat
                if not ok:
                    held.lost = True

    async def _watch(self, stop: asyncio.Event) -> None:
        """Log when the workers become degraded, and when they recover."""
        since: float | None = None
        while not stop.is_set():
            reason = self.health.degraded_reason()
            if reason is not None and since is None:
                since = time.monotonic()
                log.warning("worker %s degraded: %s", self.owner, reason)
            elif reason is None and since is not None:
                log.warning(
                    "worker %s recovered after %.0f s", self.owner, time.monotonic() - since
                )
                since = None
            await _sleep_or_stop(stop, WATCH_SECONDS)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
