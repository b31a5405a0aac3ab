"""Workers: lease work from the store, run it, commit it.

A ``Worker`` is one process's share of the engine. It runs ``concurrency`` loops
that each, in turn: admit a PENDING batch, finalize a finished one, or lease and
run one shard. A heartbeat task renews every lease the process holds; a lease that
cannot be renewed is treated as lost and its shard abandoned at the next
micro-batch boundary. The reaper expires overdue batches and frees the leases of
dead processes on this host, so a rerun after SIGKILL resumes at once instead of
waiting for leases to time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from overnight.blobs.base import BlobStore
from overnight.config import EngineSettings
from overnight.domain.batches import Batch, BatchState, Shard
from overnight.engine.admission import Admission, cut_shards
from overnight.engine.finalize import finalize_batch
from overnight.engine.pool import BackendPool
from overnight.engine.runner import ProgressFn, ShardAbandoned, fail_shard, run_shard
from overnight.errors import BackendError, BlobError, OvernightError, RetryableError
from overnight.store.sql import SqlStore

log = logging.getLogger("overnight.worker")


def new_owner_id() -> str:
    """``host:pid:random``; the reaper uses host and pid to spot dead owners."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str) -> bool:
    """True only if ``owner`` ran on this host and its process no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
    store: SqlStore
    blobs: BlobStore
    pool: BackendPool
    settings: EngineSettings
    scope: WorkerScope = field(default_factory=WorkerScope)
    on_progress: ProgressFn | None = None
    on_finalized: Callable[[str], None] | None = (
        None  # called with the id of each batch this worker finalized
    )
    clock: Callable[[], float] = time.time
    owner: str = field(default_factory=new_owner_id)
    retention_s: float | None = None

    def __post_init__(self) -> None:
        self._held: dict[tuple[str, int], _Held] = {}
        self._state_cache: dict[str, tuple[float, BatchState]] = {}
        self._last_reap = 0.0

    # ----------------------------------------------------------------- running

    async def run(self, stop: asyncio.Event, *, concurrency: int | None = None) -> None:
        """Work until ``stop`` is set. On return every lease we held is released."""
        loops = concurrency or self.settings.workers
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        try:
            await asyncio.gather(*(self._loop(stop) for _ in range(loops)))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(OvernightError):
                await asyncio.shield(self.store.release_owner(self.owner))

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.step(stop)
            except BackendError as exc:
                log.warning("backend trouble, backing off: %s", exc)
                busy = False
                await _sleep_or_stop(stop, self.settings.poll_seconds * 10)
            if not busy:
                await _sleep_or_stop(stop, self.settings.poll_seconds)

    async def step(self, stop: asyncio.Event | None = None) -> bool:
        """Do one unit of work. Returns False when there was nothing to do."""
        now = self.clock()
        if now - self._last_reap > self.settings.heartbeat_seconds:
            self._last_reap = now
            await self.reap()
        claimed = await self.store.claim_batch_work(
            self.owner,
            now=now,
            lease_until=now + self.settings.lease_seconds,
            models=self.scope.models,
            batch_id=self.scope.batch_id,
        )
        if claimed is not None:
            batch, phase = claimed
            try:
                if phase == "admit":
                    await self._admit(batch)
                else:
                    await finalize_batch(
                        self.store, self.blobs, batch, self.owner, retention_s=self.retention_s
                    )
                    if self.on_finalized is not None:
                        self.on_finalized(batch.id)
            finally:
                await self.store.release_batch(batch.id, self.owner)
            return True
        token = secrets.token_hex(8)
        shard = await self.store.lease_shard(
            self.owner,
            token,
            now=now,
            lease_until=now + self.settings.lease_seconds,
            models=self.scope.models,
            batch_id=self.scope.batch_id,
        )
        if shard is None:
            return False
        await self._run_shard(shard, token, stop)
        return True

    async def reap(self) -> None:
        """Expire overdue batches; free leases of dead processes on this host."""
        await self.store.expire_batches(self.clock())
        for owner in await self.store.lease_owners():
            if owner != self.owner and owner_is_dead(owner):
                released = await self.store.release_owner(owner)
                log.info("released %d shard lease(s) of dead worker %s", released, owner)

    # ---------------------------------------------------------------- admission

    async def _admit(self, batch: Batch) -> None:
        input_key, _ = await self.store.batch_input(batch.id)
        s = self.settings

        def scan() -> Admission:
            with self.blobs.open_read(input_key) as f:
                return cut_shards(
                    f, batch.kind, shard_size=s.shard_size, shard_max_bytes=s.shard_max_bytes
                )

        now = self.clock()
        try:
            admission = await asyncio.to_thread(scan)
        except (BlobError, OSError) as exc:
            await self.store.transition(
                batch.id, BatchState.FAILED, now=now, error=f"the input cannot be read: {exc}"
            )
            return
        if not admission.has_valid_line:
            why = (
                "the input holds no request lines"
                if admission.request_count == 0
                else f"the input holds no valid request line; first problem: {admission.first_error}"
            )
            await self.store.transition(batch.id, BatchState.FAILED, now=now, error=why)
            return
        await self.store.admit(batch.id, self.owner, admission.shards, now=now)

    # ------------------------------------------------------------------- shards

    async def _run_shard(self, shard: Shard, token: str, stop: asyncio.Event | None) -> None:
        held = _Held(shard, token)
        self._held[(shard.batch_id, shard.seq)] = held
        batch: Batch | None = None
        input_key = ""
        try:
            batch = await self.store.get_batch(shard.batch_id)
            input_key, _ = await self.store.batch_input(batch.id)
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
                on_progress=self.on_progress,
            )
        except BaseException as exc:
            if (
                isinstance(exc, BackendError)
                and not isinstance(exc, RetryableError)
                and batch is not None
                and shard.attempts >= self.settings.max_shard_attempts
            ):
                # The backend failed this shard every time: answer its lines with the
                # error rather than retrying forever.
                outcome = await fail_shard(
                    batch, shard, token, input_key, self.blobs, self.settings.shard_max_bytes, exc
                )
            else:
                # Abandoned, cancelled, backend down, or a bug: give the shard back so it
                # is retried now rather than after its lease runs out.
                with contextlib.suppress(OvernightError):
                    await asyncio.shield(self.store.release_shard(shard.batch_id, shard.seq, token))
                self._held.pop((shard.batch_id, shard.seq), None)
                if isinstance(exc, ShardAbandoned):
                    return
                raise
        try:
            committed = await self.store.commit_shard(
                shard.batch_id, shard.seq, token, outcome, now=self.clock()
            )
            if not committed:
                log.warning(
                    "could not commit %s/%d (lease lost, or the batch was already finalized); output discarded",
                    shard.batch_id,
                    shard.seq,
                )
                await asyncio.to_thread(self.blobs.delete, outcome.output_blob)
        finally:
            self._held.pop((shard.batch_id, shard.seq), None)

    async def _batch_state(self, batch_id: str) -> BatchState:
        """The batch's state, re-read at most once a second."""
        now = time.monotonic()
        cached = self._state_cache.get(batch_id)
        if cached is None or now - cached[0] > 1.0:
            batch = await self.store.get_batch(batch_id)
            cached = (now, batch.state)
            self._state_cache[batch_id] = cached
        return cached[1]

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_or_stop(stop, self.settings.heartbeat_seconds)
            until = self.clock() + self.settings.lease_seconds
            for held in list(self._held.values()):
                try:
                    ok = await self.store.renew_shard(
                        held.shard.batch_id, held.shard.seq, held.token, until
                    )
                except OvernightError as exc:
                    log.warning("heartbeat failed: %s", exc)
                    continue
                if not ok:
                    held.lost = True


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
