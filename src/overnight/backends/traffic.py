"""The traffic layer shared by the upstream backends (``openai``, ``gemini``).

It pushes as hard as an upstream server allows and no harder, and decides what a
failure means:

- **Limits.** At most ``max_concurrency`` calls in flight. ``requests_per_minute`` and
  ``tokens_per_minute`` are leaky buckets without burst: call starts are spaced so that
  no trailing 60 s window ever holds more than the limit (a token bucket that starts
  full would allow twice the limit in the first minute, which servers count as a
  violation). Tokens are estimated before the call: prompt characters / 4 plus the
  output budget.
- **Retries.** 408, 429, 5xx, timeouts and connection resets are retried with jittered
  exponential backoff (``retry_base_s`` doubling up to ``retry_max_s``), or after the
  server's ``Retry-After``. After ``max_attempts`` the request gets an error line with
  the upstream's last status and message. Other 4xx answers are the request's own fault
  and fail it at once; 401, 403 and 404 concern every request (a bad key, an unknown
  model) and fail the call instead.
- **The circuit.** ``circuit_failures`` consecutive connection failures or 5xx answers
  open it: calls stop, and after ``circuit_cooldown_s`` one probe call goes through.
  While the circuit is open, failures do not use up a request's attempts. A call that
  has waited ``circuit_wait_s`` on an open circuit raises ``RetryableError``: the
  engine gives the shard back and retries it later, so an upstream that is down turns
  into a delay, not into failed lines.

Every number is per model (``[models.NAME]``) and per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from overnight.backends.transport import Reply, Transport, TransportFailure
from overnight.config import ModelSettings
from overnight.errors import BackendUnavailable, RequestRejected, RetryableError

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Answers that concern every request, not the one that got them.
FATAL_STATUSES = {
    401: "the upstream rejected the API key (401); check api_key / api_key_env",
    403: "the upstream refused access (403); check the key (api_key / api_key_env) and its permissions",
    404: "the upstream does not know this path or model (404); check base_url and model",
}
# Google status names for the HTTP statuses an upstream may leave a request with.
GOOGLE_STATUS = {
    400: ("INVALID_ARGUMENT", 3),
    408: ("DEADLINE_EXCEEDED", 4),
    409: ("ABORTED", 10),
    413: ("INVALID_ARGUMENT", 3),
    422: ("INVALID_ARGUMENT", 3),
    429: ("RESOURCE_EXHAUSTED", 8),
    500: ("INTERNAL", 13),
    501: ("UNIMPLEMENTED", 12),
    502: ("UNAVAILABLE", 14),
    503: ("UNAVAILABLE", 14),
    504: ("DEADLINE_EXCEEDED", 4),
}


@dataclass(frozen=True, slots=True)
class TrafficLimits:
    """The numbers of one upstream model; see ``ModelSettings`` for each."""

    max_concurrency: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    timeout_s: float = 120.0
    max_attempts: int = 6
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0
    circuit_failures: int = 5
    circuit_cooldown_s: float = 5.0
    circuit_wait_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> TrafficLimits:
        return cls(
            max_concurrency=settings.max_concurrency,
            requests_per_minute=settings.requests_per_minute,
            tokens_per_minute=settings.tokens_per_minute,
            timeout_s=settings.timeout_s,
            max_attempts=settings.max_attempts,
            retry_base_s=settings.retry_base_s,
            retry_max_s=settings.retry_max_s,
            circuit_failures=settings.circuit_failures,
            circuit_cooldown_s=settings.circuit_cooldown_s,
            circuit_wait_s=settings.circuit_wait_s,
        )


@dataclass(slots=True)
class _Failure:
    """Why one try failed: an HTTP status with the upstream's message, or a transport error."""

    status: int | None
    message: str
    retry_after: float | None = None

    @property
    def describe(self) -> str:
        if self.status is None:
            return self.message
        return f"HTTP {self.status}: {self.message}"


@dataclass(slots=True)
class TrafficStats:
    calls: int = 0
    retries: int = 0
    failures: int = 0
    circuit_opened: int = 0
    max_in_flight: int = 0


class Pacer:
    """Spaces call starts so that no trailing minute holds more than ``per_minute`` units.

    A leaky bucket with no burst: a start costing ``n`` units is scheduled ``n *
    60 / per_minute`` seconds after the previous one (``n`` is 1 for requests, the
    token estimate for tokens). A cost above the whole minute's budget is capped at it,
    so one huge request waits one minute rather than forever.
    """

    def __init__(self, per_minute: float, clock: Callable[[], float], margin: float = 1.01) -> None:
        self.interval = 60.0 / per_minute * margin
        self.per_minute = per_minute
        self._clock = clock
        self._next = 0.0

    def reserve(self, cost: float = 1.0) -> float:
        """Book the next start; returns the seconds to wait before starting."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval * min(cost, self.per_minute)
        return start - now


class Circuit:
    """Closed, open until a time, or half-open with one probe in flight."""

    def __init__(self, limits: TrafficLimits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self._changed = asyncio.Event()
        self.last_failure: str = ""
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    async def admit(self) -> bool:
        """Wait until a call may go. Returns True if this call is the probe.

        Raises ``RetryableError`` after ``circuit_wait_s`` of waiting.
        """
        waited_since: float | None = None
        while True:
            if self._open_until is None:
                return False
            now = self._clock()
            if now >= self._open_until and not self._probing:
                self._probing = True
                return True
            if waited_since is None:
                waited_since = now
            left = self._limits.circuit_wait_s - (now - waited_since)
            if left <= 0:
                raise RetryableError(
                    f"the upstream has been failing for over {self._limits.circuit_wait_s:g} s "
                    f"(last: {self.last_failure}); the shard will be retried later"
                )
            self._changed.clear()
            pause = min(left, max(self._open_until - now, 0.05), 0.25)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), pause)

    def succeeded(self, probe: bool) -> None:
        self._failures = 0
        if probe or self._open_until is not None:
            if self._open_until is not None:
                log.info("upstream answered again; circuit closed")
            self._open_until = None
            self._probing = False
            self._changed.set()

    def failed(self, failure: _Failure, probe: bool) -> None:
        """Count a failure that says the server is unwell (transport error or 5xx)."""
        self.last_failure = failure.describe
        self._failures += 1
        if probe:
            self._probing = False
        if probe or (self._open_until is None and self._failures >= self._limits.circuit_failures):
            if self._open_until is None:
                self.opened += 1
                log.warning(
                    "upstream failed %d times in a row (%s); pausing calls",
                    self._failures,
                    failure.describe,
                )
            self._open_until = self._clock() + self._limits.circuit_cooldown_s
            self._changed.set()

    def released(self, probe: bool) -> None:
        """A probe ended without telling anything (cancelled, a 4xx): let another probe."""
        if probe:
            self._probing = False
            self._changed.set()


class Traffic:
    """Sends JSON calls to one upstream within its limits; see the module docstring."""

    def __init__(
        self,
        limits: TrafficLimits,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.limits = limits
        self.transport = transport
        self.stats = TrafficStats()
        self._clock = clock
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self._in_flight = 0
        self._requests = (
            Pacer(limits.requests_per_minute, clock) if limits.requests_per_minute else None
        )
        self._tokens = Pacer(limits.tokens_per_minute, clock) if limits.tokens_per_minute else None
        self.circuit = Circuit(limits, clock)

    async def post(
        self, url: str, body: Mapping[str, Any], *, tokens: int = 0, what: str = "call"
    ) -> Any:
        """POST ``body`` as JSON and return the parsed JSON answer.

        Raises ``RequestRejected`` for a request the upstream refused or that ran out of
        attempts (it becomes that request's error line), ``BackendUnavailable`` for an
        answer that concerns every request (bad key, unknown model), and
        ``RetryableError`` when the circuit stayed open too long.
        """
        attempt = 0
        while True:
            probe = await self.circuit.admit()
            try:
                outcome = await self._send_once(url, body, tokens)
            except BaseException:
                self.circuit.released(probe)
                raise
            if not isinstance(outcome, _Failure):
                self.circuit.succeeded(probe)
                return outcome
            server_unwell = outcome.status is None or outcome.status >= 500
            if outcome.status is not None and outcome.status not in RETRYABLE_STATUSES:
                self.circuit.released(probe)
                if outcome.status in FATAL_STATUSES:
                    raise BackendUnavailable(
                        f"{FATAL_STATUSES[outcome.status]} ({url}: {outcome.message})"
                    )
                raise _rejection(outcome, f"the upstream refused the {what}")
            if server_unwell:
                self.circuit.failed(outcome, probe)
            else:  # a 429 or 408 still shows the server is up
                self.circuit.succeeded(probe)
            # Tries made while the circuit is open say nothing about this request.
            if not self.circuit.is_open:
                attempt += 1
            if attempt >= self.limits.max_attempts:
                self.stats.failures += 1
                raise _rejection(
                    outcome,
                    f"the upstream failed the {what} on all {self.limits.max_attempts} attempts",
                )
            self.stats.retries += 1
            await asyncio.sleep(self._delay(max(attempt, 1), outcome.retry_after))

    async def _send_once(self, url: str, body: Mapping[str, Any], tokens: int) -> Any:
        async with self._slots:
            wait = 0.0
            if self._requests is not None:
                wait = self._requests.reserve(1)
            if self._tokens is not None:
                wait = max(wait, self._tokens.reserve(tokens))
            if wait > 0:
                await asyncio.sleep(wait)
            self._in_flight += 1
            self.stats.calls += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
            try:
                reply = await self.transport.post_json(url, body, self.limits.timeout_s)
            except TransportFailure as exc:
                return _Failure(None, exc.message)
            finally:
                self._in_flight -= 1
        if reply.status < 400:
            try:
                return orjson.loads(reply.body)
            except orjson.JSONDecodeError:
                return _Failure(
                    502, f"the upstream answered {reply.status} with a body that is not JSON"
                )
        return _Failure(
            reply.status, error_message(reply), _retry_after(reply.headers.get("retry-after"))
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(self.limits.retry_max_s, self.limits.retry_base_s * 2 ** (attempt - 1))
        return ceiling * (0.5 + self._rng.random() / 2)

    async def close(self) -> None:
        await self.transport.close()


def _rejection(failure: _Failure, why: str) -> RequestRejected:
    status, code = GOOGLE_STATUS.get(failure.status or 0, ("UNAVAILABLE", 14))
    if failure.status is not None and failure.status not in GOOGLE_STATUS:
        status, code = ("INVALID_ARGUMENT", 3) if failure.status < 500 else ("INTERNAL", 13)
    return RequestRejected(f"{why}: {failure.describe}", status=status, grpc_code=code)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(reply: Reply) -> str:
    """The message of an OpenAI- or Google-style error body, else the start of the body."""
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return reply.body[:300].decode("utf-8", "replace").strip() or f"HTTP {reply.status}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return reply.body[:300].decode("utf-8", "replace")


def estimate_tokens(text_chars: int, output_budget: int) -> int:
    """A token estimate for rate limits: about four characters a token, plus the output."""
    return text_chars // 4 + 1 + output_budget
