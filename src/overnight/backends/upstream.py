"""What the two upstream backends (``openai``, ``gemini``) share: ``UpstreamBackend``.

An upstream backend owns one pooled HTTP client and one ``Traffic`` (limits, retries,
circuit) per model, opened by ``start`` and closed by ``close``. Its ``generate`` fans
a micro-batch out as one call per request, its ``embed`` as one call per group of
requests; the traffic layer decides how many actually run at once, retries what is
worth retrying, and turns what is not into that request's error. A subclass maps the
dialect only: a request to a body and a URL, the answer back to results.
"""

from __future__ import annotations

import abc
import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from itertools import groupby
from typing import Any, TypeVar

from overnight.backends.base import Capabilities, EmbedOutcome, GenerateOutcome, prompt_text
from overnight.backends.traffic import Traffic, TrafficLimits, estimate_tokens
from overnight.backends.transport import make_transport
from overnight.config import ModelSettings
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import EmbedResult, GenerateResult
from overnight.errors import BackendUnavailable, ConfigError, RequestRejected

T = TypeVar("T")
R = TypeVar("R")


def resolve_api_key(name: str, settings: ModelSettings, environ: Mapping[str, str]) -> str | None:
    """The key from ``api_key``, else from the variable ``api_key_env`` names."""
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    if settings.api_key_env:
        value = environ.get(settings.api_key_env)
        if not value:
            raise BackendUnavailable(
                f"model {name!r}: the environment variable {settings.api_key_env} "
                "(its api_key_env) is not set; export it, or set api_key"
            )
        return value
    return None


def require_base_url(name: str, settings: ModelSettings, default: str | None = None) -> str:
    url = settings.base_url or default
    if not url:
        raise ConfigError(
            f"model {name!r}: backend {settings.backend!r} needs base_url, e.g. "
            'base_url = "http://127.0.0.1:8000/v1"'
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"model {name!r}: base_url {url!r} must start with http:// or https://")
    return url.rstrip("/")


def micro_batch_size(settings: ModelSettings) -> int:
    """Requests per ``generate`` call: enough to keep every slot busy past stragglers.

    ``max_batch_size`` wins where it is set; otherwise four times ``max_concurrency``.
    """
    if "max_batch_size" in settings.model_fields_set:
        return settings.max_batch_size
    return max(settings.max_batch_size, 4 * settings.max_concurrency)


class UpstreamSession:
    """The client and traffic of one upstream model, opened by ``start``."""

    def __init__(
        self,
        name: str,
        settings: ModelSettings,
        headers: Callable[[str | None], dict[str, str]],
    ) -> None:
        self.name = name
        self.settings = settings
        self.limits = TrafficLimits.from_settings(settings)
        self._headers = headers
        self._traffic: Traffic | None = None

    @property
    def traffic(self) -> Traffic:
        if self._traffic is None:
            raise BackendUnavailable(f"model {self.name!r} is not started")
        return self._traffic

    def start(self, environ: Mapping[str, str] | None = None) -> None:
        if self._traffic is not None:
            return
        key = resolve_api_key(self.name, self.settings, os.environ if environ is None else environ)
        transport = make_transport(
            self._headers(key), self.limits.max_concurrency, http2=self.settings.http2
        )
        self._traffic = Traffic(self.limits, transport)

    async def close(self) -> None:
        if self._traffic is not None:
            await self._traffic.close()
            self._traffic = None

    def generate_tokens(self, request: GenerateRequest) -> int:
        config = request.config
        budget = (config.max_output_tokens or self.settings.max_output_tokens) * (
            config.candidate_count or 1
        )
        return estimate_tokens(len(prompt_text(request)), budget)


def malformed(message: str) -> RequestRejected:
    """The error line for an upstream answer Overnight cannot read (INTERNAL)."""
    return RequestRejected(message, status="INTERNAL", grpc_code=13)


async def fan_out(
    items: Sequence[T], call: Callable[[T], Awaitable[R]]
) -> list[R | RequestRejected]:
    """Run ``call`` on every item at once; a ``RequestRejected`` becomes that item's outcome.

    Any other error (the circuit stayed open, a bad key) cancels the remaining calls
    and propagates, so the engine retries or fails the whole micro-batch.
    """

    async def one(item: T) -> R | RequestRejected:
        try:
            return await call(item)
        except RequestRejected as exc:
            return exc

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class UpstreamBackend(abc.ABC):
    """A model behind an HTTP server; subclasses speak one dialect.

    A subclass sets ``capabilities`` and implements ``auth_headers`` (how the key is
    sent), ``generate_one`` (one request, one call), ``embed_group`` (one call for
    requests that may share it) and ``count_tokens``; ``embed_group_key`` says which
    embedding requests may share a call (by default, any).
    """

    capabilities: Capabilities

    def __init__(self, name: str, settings: ModelSettings, *, embed_batch_size: int) -> None:
        self.name = name
        self.settings = settings
        self.embed_batch_size = embed_batch_size
        self.session = UpstreamSession(name, settings, self.auth_headers)

    @staticmethod
    @abc.abstractmethod
    def auth_headers(key: str | None) -> dict[str, str]:
        """The headers that carry the API key (none without a key)."""

    @abc.abstractmethod
    async def generate_one(self, request: GenerateRequest) -> GenerateResult:
        """One request as one upstream call. Raises ``RequestRejected`` for this request."""

    @abc.abstractmethod
    async def embed_group(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        """One upstream call for requests with the same ``embed_group_key``, one result
        each, in order. Raises ``RequestRejected`` for the whole group."""

    @abc.abstractmethod
    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        """Prompt tokens per request, in order."""

    def embed_group_key(self, request: EmbedRequest) -> int:
        """Embedding requests with equal keys may share one upstream call; groups go out
        in key order."""
        return 0

    async def start(self) -> None:
        """Open the client. Raises ``BackendUnavailable`` when the key is missing."""
        self.session.start()

    async def close(self) -> None:
        """Close the client. Idempotent."""
        await self.session.close()

    async def post(self, url: str, body: Mapping[str, Any], *, tokens: int = 0, what: str) -> Any:
        """POST through the traffic layer; the parsed JSON answer."""
        return await self.session.traffic.post(url, body, tokens=tokens, what=what)

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateOutcome]:
        """One outcome per request, in order; a refused request is its own error."""
        return await fan_out(requests, self.generate_one)

    async def embed(self, requests: Sequence[EmbedRequest]) -> list[EmbedOutcome]:
        """One outcome per request, in order; requests are packed into calls of at most
        ``embed_batch_size`` with equal ``embed_group_key``, and a refused call is the
        error of each of its requests."""
        groups = self._embed_groups(requests)

        async def call(group: list[int]) -> list[EmbedResult]:
            return await self.embed_group([requests[i] for i in group])

        outcomes: list[EmbedOutcome | None] = [None] * len(requests)
        for group, outcome in zip(groups, await fan_out(groups, call), strict=True):
            for position, index in enumerate(group):
                outcomes[index] = (
                    outcome if isinstance(outcome, RequestRejected) else outcome[position]
                )
        return [o for o in outcomes if o is not None]

    def _embed_groups(self, requests: Sequence[EmbedRequest]) -> list[list[int]]:
        keys = [self.embed_group_key(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: keys[i])
        groups: list[list[int]] = []
        for _, same in groupby(order, key=lambda i: keys[i]):
            indexes = list(same)
            for start in range(0, len(indexes), self.embed_batch_size):
                groups.append(indexes[start : start + self.embed_batch_size])
        return groups
