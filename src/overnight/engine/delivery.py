"""One delivery attempt: sign per Standard Webhooks, check where it goes, POST it.

Headers are those of the Standard Webhooks spec: ``webhook-id`` (the event id, the
same on every attempt, so a receiver can drop repeats), ``webhook-timestamp`` (this
attempt, UNIX seconds; receivers refuse ones more than five minutes off) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of ``id.timestamp.body`` with each
live secret, space-separated: several during a secret rotation). The signing is the
``standardwebhooks`` library's own, the one receivers verify with.

Server-side request forgery: unless ``webhooks.allow_private_addresses``, the host is
resolved here and the attempt refused if any of its addresses is loopback, private,
link-local or otherwise not public; the request then goes to the address that was
checked (Host header and TLS server name kept), so a second DNS answer cannot move it.
Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from standardwebhooks import Webhook as Signer

from overnight import __version__
from overnight.config import WebhookSettings
from overnight.domain.webhooks import Delivery, address_problem, host_problem


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt went: delivered (2xx), or why not and any ``Retry-After``."""

    delivered: bool
    error: str | None = None
    retry_after_s: float | None = None


class Refused(Exception):
    """The URI points where webhooks may not go."""


def signature_headers(delivery: Delivery, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt at ``delivery`` made at ``now``."""
    moment = dt.datetime.fromtimestamp(int(now), tz=dt.UTC)
    signatures = " ".join(
        Signer(secret).sign(delivery.event_id, moment, delivery.payload)
        for secret in delivery.secrets
    )
    return {
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Sender:
    """POSTs deliveries; ``close`` when done. ``transport`` and ``resolver`` replace
    httpx's network transport and the system resolver (a ``MockTransport``, a fixed
    table)."""

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self._http = httpx.AsyncClient(
            timeout=settings.timeout_seconds,
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": f"Overnight-Webhooks/{__version__}"},
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, delivery: Delivery, now: float) -> Outcome:
        """One attempt; never raises for what the receiver or the network did."""
        if not delivery.secrets:
            return Outcome(False, "the webhook has no live signing secret; rotate it")
        headers = signature_headers(delivery, now)
        try:
            url, extra_headers, extensions = await self._target(delivery.uri)
        except Refused as exc:
            return Outcome(False, str(exc))
        try:
            response = await self._http.post(
                url,
                content=delivery.payload.encode(),
                headers={**headers, **extra_headers},
                extensions=extensions,
            )
        except httpx.TimeoutException:
            return Outcome(False, f"no answer within {self.settings.timeout_seconds:g} s")
        except httpx.HTTPError as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= response.status_code < 300:
            return Outcome(True)
        return Outcome(
            False,
            f"the receiver answered HTTP {response.status_code}",
            _retry_after(response.headers.get("retry-after")),
        )

    async def _target(self, uri: str) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
        """Where to connect: the URI itself when private addresses are allowed, else
        the checked address of its host. Raises ``Refused``."""
        try:
            url = httpx.URL(uri)
        except httpx.InvalidURL as exc:
            raise Refused(f"{uri!r} is not a valid URL: {exc}") from None
        if self.settings.allow_private_addresses:
            return url, {}, {}
        host = url.host
        problem = host_problem(host)
        if problem is not None:
            raise Refused(_refusal(uri, host, problem))
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self.resolver(host, port)
        except OSError as exc:
            raise Refused(f"cannot resolve {host}: {exc.strerror or exc}") from None
        for address in addresses:
            problem = address_problem(address)
            if problem is not None:
                raise Refused(_refusal(uri, f"{host} ({address})", problem))
        if not addresses:
            raise Refused(f"{host} has no address")
        pinned = url.copy_with(host=addresses[0])
        extensions: dict[str, Any] = {"sni_hostname": host} if url.scheme == "https" else {}
        return pinned, {"host": url.netloc.decode("ascii")}, extensions


def _refusal(uri: str, what: str, problem: str) -> str:
    return (
        f"refused to deliver to {uri}: {what} is {problem}; set "
        "webhooks.allow_private_addresses = true to allow it"
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
