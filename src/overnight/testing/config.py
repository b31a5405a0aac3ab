"""The fake upstream's configuration and what it reports: :class:`UpstreamConfig`,
:class:`UpstreamStats` and :class:`RecordedRequest`.

See :mod:`overnight.testing.upstream` for the fake itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

WINDOW_S = 60.0
"""The length of the sliding window for ``requests_per_minute`` and ``tokens_per_minute``."""

VIOLATION_KINDS = ("requests_per_minute", "tokens_per_minute", "max_concurrency")


@dataclass(frozen=True)
class UpstreamConfig:
    """Everything that shapes the fake's behaviour; all of it can change at run time.

    Faults:
        latency_s: seconds every model request waits before its answer (errors and resets
            included; rate-limit 429s are immediate).
        jitter_s: a uniform random extra delay in ``[0, jitter_s]``.
        error_rates: probability per status, e.g. ``{429: 0.1, 500: 0.05, 503: 0.05}``.
            The statuses are drawn from one roll, so the rates add up (at most 1).
        reset_rate: probability that a request's connection is aborted with a TCP reset
            and no response (drawn before ``error_rates``).
        retry_after_s: when set, sent on every 429 and 503 as ``Retry-After`` (seconds;
            a fraction is sent as a decimal, e.g. ``0.5``) and ``retry-after-ms``.
        seed: seeds the fault and jitter random generators, so a run is reproducible
            (for the same order of arrivals). Changing it at run time re-seeds them.

    Limits (``None``: no limit). A request over a limit is answered 429, counted in
    :attr:`UpstreamStats.violations` under the limit's name, and not admitted (it does
    not count towards later windows):
        requests_per_minute: a request is a violation when ``requests_per_minute``
            admitted requests already arrived in the trailing window, that is, more than
            N arrivals in any trailing 60 s window. The window is half-open,
            ``(now - 60 s + limit_tolerance_s, now]``: a client that sends request N+1
            exactly 60 s after request 1 is within the limit.
        tokens_per_minute: the same window over tokens, where a request's tokens are its
            prompt words plus its ``max_tokens`` / ``max_completion_tokens`` /
            ``maxOutputTokens`` (0 when absent; ``n`` is not multiplied in). Embedding
            requests count the words of their inputs.
        max_concurrency: a request is a violation when this many requests are already in
            flight. A request leaves the in-flight count before its response is written,
            so a client never sees a slot free before the server does.
        limit_tolerance_s: shortens the window by this much, so that clients that pace
            requests exactly at the limit are not flagged for timer slop or scheduling
            delays. Default 0.05 s.
        window_s: the window's length for ``"window"`` mode (default 60 s); the limits
            scale with it, so ``requests_per_minute=600, window_s=10`` allows 100
            requests in any trailing 10 s. A short window makes a per-minute limit bind
            within a short test, and is stricter than the minute: a client that passes
            it passes the 60 s window too.
        limit_mode: ``"window"`` (the default, above) or ``"bucket"``: a token bucket
            per limit, holding at most N (requests or tokens), full at the start and
            refilled at N per 60 s; a request needs its cost in the bucket (with
            ``limit_tolerance_s`` worth of refill as slack). The bucket is looser: it
            accepts a burst of N followed by a steady N per minute (up to 2N in one 60 s
            window), the way many hosted APIs meter. A client that spaces calls
            ``60 / N`` s apart, with no burst, passes both; with requests of varied token
            counts only the bucket guarantees that for ``tokens_per_minute``.

    Other:
        api_key: when set, OpenAI requests need ``Authorization: Bearer KEY`` (else 401)
            and Gemini requests ``x-goog-api-key: KEY`` or ``?key=KEY`` (missing: 401
            UNAUTHENTICATED, wrong: 403 PERMISSION_DENIED).
        models: when set, only these models are served (others get 404) and
            ``GET /v1/models`` lists them; when ``None`` any model name is accepted.
        embedding_dimensions: the default embedding size (a request's ``dimensions`` /
            ``outputDimensionality`` overrides it).
        max_embedding_inputs: when set, an embeddings call with more inputs gets 400.
        record_limit: how many recent request bodies :meth:`FakeUpstream.requests` keeps.
    """

    latency_s: float = 0.0
    jitter_s: float = 0.0
    error_rates: Mapping[int, float] = field(default_factory=dict)
    reset_rate: float = 0.0
    retry_after_s: float | None = None
    seed: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrency: int | None = None
    limit_tolerance_s: float = 0.05
    window_s: float = WINDOW_S
    limit_mode: Literal["window", "bucket"] = "window"
    api_key: str | None = None
    models: tuple[str, ...] | None = None
    embedding_dimensions: int = 8
    max_embedding_inputs: int | None = None
    record_limit: int = 100

    def __post_init__(self) -> None:
        rates = {int(status): float(rate) for status, rate in dict(self.error_rates).items()}
        object.__setattr__(self, "error_rates", rates)
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
        for status, rate in rates.items():
            if not 400 <= status <= 599:
                raise ValueError(f"error_rates: {status} is not an HTTP error status (400-599)")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"error_rates[{status}] = {rate}: a rate is between 0 and 1")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"error_rates add up to {sum(rates.values()):.3f}; at most 1")
        if not 0.0 <= self.reset_rate <= 1.0:
            raise ValueError(f"reset_rate = {self.reset_rate}: a rate is between 0 and 1")
        for name in ("latency_s", "jitter_s", "limit_tolerance_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)}: must be >= 0")
        if self.limit_mode not in ("window", "bucket"):
            raise ValueError(f"limit_mode = {self.limit_mode!r}: 'window' or 'bucket'")
        if not 0 < self.window_s <= WINDOW_S:
            raise ValueError(f"window_s = {self.window_s}: between 0 (exclusive) and {WINDOW_S}")
        if self.limit_tolerance_s >= self.window_s:
            raise ValueError(f"limit_tolerance_s must be below window_s ({self.window_s} s)")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError(f"retry_after_s = {self.retry_after_s}: must be >= 0 or None")
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrency",
            "max_embedding_inputs",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} = {value}: must be >= 1 or None (no limit)")
        if self.embedding_dimensions < 1 or self.record_limit < 0:
            raise ValueError("embedding_dimensions must be >= 1 and record_limit >= 0")

    def replace(self, **changes: Any) -> UpstreamConfig:
        """A copy with ``changes``; unknown names raise ``TypeError`` naming them."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(
                f"unknown fake upstream option(s) {sorted(unknown)}; "
                f"known: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["error_rates"] = {str(k): v for k, v in self.error_rates.items()}
        data["models"] = list(self.models) if self.models is not None else None
        return data


@dataclass
class UpstreamStats:
    """A snapshot of what the fake saw (model API requests only, never control calls).

    Attributes:
        requests: model API requests received (resets and 429s included).
        by_status: responses sent, per HTTP status.
        resets: connections aborted on purpose (``reset_rate``).
        violations: rate-limit violations per limit name (``requests_per_minute``,
            ``tokens_per_minute``, ``max_concurrency``); a limit with none is absent.
        max_in_flight: the most requests in flight at once.
        in_flight: requests in flight now.
        by_model: requests per model name.
        by_endpoint: requests per endpoint (``chat.completions``, ``embeddings``,
            ``models``, ``generateContent``, ``embedContent``, ...).
    """

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    resets: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 0
    in_flight: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    by_endpoint: dict[str, int] = field(default_factory=dict)

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["by_status"] = {str(k): v for k, v in self.by_status.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpstreamStats:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["by_status"] = {int(k): v for k, v in data.get("by_status", {}).items()}
        return cls(**values)


@dataclass(frozen=True)
class RecordedRequest:
    """One model API request as received: ``body`` is the parsed JSON (``{}`` for GET)."""

    method: str
    path: str
    model: str | None
    body: Any
