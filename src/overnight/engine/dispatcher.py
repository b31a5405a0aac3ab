"""The webhook dispatcher: deliver what the outbox holds, at least once.

``overnight serve`` runs one as a background task. It leases due outbox rows (any
number of serve replicas may run one: leases are exclusive), POSTs each through the
``Sender`` and records the attempt. A failed attempt is due again after a backoff
that doubles from ``webhooks.retry_initial_seconds`` up to ``retry_max_seconds``, with
jitter, until ``retry_window_hours`` after the event, when it is given up. Failures
count against their webhook, which ``disable_after_failures`` consecutive failures
over ``disable_after_hours`` disable.

A dispatcher that dies (SIGKILL, power loss) leaves its leased rows due again once
the lease ends, and rows it never reached are untouched: a restart loses no event,
and an event whose answer was lost is sent again (receivers drop repeats by
``webhook-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable

from overnight.config import WebhookSettings
from overnight.domain.webhooks import Delivery, DisablePolicy
from overnight.engine.delivery import Outcome, Sender
from overnight.store.base import WebhookOutbox

log = logging.getLogger("overnight.webhooks")

PRUNE_SECONDS = 3600.0
ERROR_BACKOFF_S = (1.0, 30.0)  # first and longest wait after the store failed


class WebhookDispatcher:
    """Delivers due outbox rows; ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        outbox: WebhookOutbox,
        settings: WebhookSettings,
        *,
        sender: Sender | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.sender = sender or Sender(settings)
        self.clock = clock
        self.jitter = jitter
        self.policy = DisablePolicy(
            settings.disable_after_failures, settings.disable_after_hours * 3600
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()  # an attempt finished: a slot is free
        self._last_prune = 0.0

    @property
    def lease_seconds(self) -> float:
        """How long a leased row stays away from other dispatchers: past any attempt."""
        return self.settings.timeout_seconds * 2 + 10

    def retry_at(self, delivery: Delivery, now: float, retry_after_s: float | None) -> float | None:
        """When to try ``delivery`` again after its attempt failed at ``now``; None once
        that would fall outside its retry window."""
        s = self.settings
        delay = min(s.retry_max_seconds, s.retry_initial_seconds * 2 ** min(delivery.attempts, 40))
        delay *= 0.8 + 0.4 * self.jitter()
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, s.retry_max_seconds))
        at = now + delay
        return at if at <= delivery.create_time + s.retry_window_hours * 3600 else None

    async def deliver_due(self) -> int:
        """Lease the due rows (up to ``concurrency``) and attempt each; how many."""
        deliveries = await self._lease(self.settings.concurrency)
        await asyncio.gather(*(self._attempt(d) for d in deliveries))
        return len(deliveries)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; store failures are logged and retried after a backoff.
        Attempts still in flight at ``stop`` get a moment to finish; the rest are left
        to their leases (and sent again later)."""
        failures = 0
        try:
            while not stop.is_set():
                free = self.settings.concurrency - len(self._in_flight)
                leased = 0
                try:
                    if free > 0:
                        for delivery in await self._lease(free):
                            task = asyncio.create_task(self._attempt(delivery))
                            self._in_flight.add(task)
                            task.add_done_callback(self._finished)
                            leased += 1
                    await self._prune()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    first, longest = ERROR_BACKOFF_S
                    delay = min(longest, first * 2 ** min(failures - 1, 10))
                    log.warning("webhook outbox unavailable, retrying in %.0f s: %s", delay, exc)
                    await _wait(stop, delay)
                    continue
                if leased == 0 or leased == free:
                    await self._idle(stop)
        finally:
            if self._in_flight:
                _, pending = await asyncio.wait(self._in_flight, timeout=5)
                for task in pending:
                    task.cancel()
            await self.sender.close()

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for the next poll, a finished attempt, or ``stop``, whichever is first."""
        self._wake.clear()
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
        try:
            await asyncio.wait(
                waiters, timeout=self.settings.poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def _lease(self, limit: int) -> list[Delivery]:
        now = self.clock()
        return await self.outbox.lease_deliveries(
            secrets.token_hex(8), now=now, lease_until=now + self.lease_seconds, limit=limit
        )

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            outcome = await self.sender.send(delivery, self.clock())
        except Exception as exc:  # a bug: count it as a failed attempt, never lose the row
            log.exception("delivery %s to %s failed unexpectedly", delivery.id, delivery.uri)
            outcome = Outcome(False, f"unexpected error: {type(exc).__name__}: {exc}")
        now = self.clock()
        retry_at = None
        if not outcome.delivered:
            retry_at = self.retry_at(delivery, now, outcome.retry_after_s)
        try:
            disabled = await self.outbox.finish_attempt(
                delivery,
                now=now,
                delivered=outcome.delivered,
                error=outcome.error,
                retry_at=retry_at,
                policy=self.policy,
            )
        except Exception as exc:  # the lease ends and the row is sent again
            log.warning("could not record delivery %s: %s", delivery.id, exc)
            return
        if outcome.delivered:
            log.info("delivered %s %s to %s", delivery.event_type, delivery.event_id, delivery.uri)
        elif retry_at is None:
            log.warning(
                "gave up %s %s to %s after %d attempts: %s",
                delivery.event_type,
                delivery.event_id,
                delivery.uri,
                delivery.attempts + 1,
                outcome.error,
            )
        else:
            log.info(
                "delivery of %s to %s failed (%s); next attempt in %.0f s",
                delivery.event_id,
                delivery.uri,
                outcome.error,
                retry_at - now,
            )
        if disabled:
            log.warning(
                "webhook %s (%s) disabled after repeated failed deliveries; last: %s",
                delivery.webhook_id,
                delivery.uri,
                outcome.error,
            )

    async def _prune(self) -> None:
        now = self.clock()
        if now - self._last_prune < PRUNE_SECONDS:
            return
        self._last_prune = now
        await self.outbox.prune_deliveries(now - self.settings.retry_window_hours * 3600)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
