"""What the two upstream backends (``openai``, ``gemini``) share.

An upstream backend owns one pooled HTTP client and one ``Traffic`` (limits, retries,
circuit) per model. Its ``generate``/``embed`` fan a micro-batch out as concurrent
calls; the traffic layer decides how many actually run at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from overnight.backends.base import prompt_text
from overnight.backends.traffic import Traffic, TrafficLimits, estimate_tokens
from overnight.backends.transport import make_transport
from overnight.config import ModelSettings
from overnight.domain.requests import GenerateRequest
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
