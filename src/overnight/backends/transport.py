"""HTTP transports for the upstream backends: one JSON POST, pooled connections.

The default is aiohttp over HTTP/1.1 keep-alive. We measured it against httpx on two
cores, 32 keep-alive connections to a server answering in 50 ms: aiohttp spent about
0.15 ms of CPU per call, httpx about 1.2 ms (most of it in its connection pool's
bookkeeping), which capped a batch at roughly half the server's capacity. httpx is used
where HTTP/2 is asked for (``http2 = true``), which aiohttp's client does not speak.

Transport failures (refused, reset, timed out) raise ``TransportFailure``; HTTP error
statuses are returned, not raised: what they mean is the traffic layer's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from overnight.errors import BackendUnavailable


class TransportFailure(Exception):
    """No HTTP answer: the connection failed, was reset, or the call timed out."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    async def post_json(self, url: str, body: Mapping[str, Any], timeout: float) -> Reply:
        """POST ``body`` as JSON. Raises ``TransportFailure``."""
        ...

    async def close(self) -> None: ...


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AiohttpTransport:
    """HTTP/1.1 with keep-alive; at most ``connections`` open to the upstream."""

    def __init__(self, headers: Mapping[str, str], connections: int) -> None:
        self._headers = {"Content-Type": "application/json", **headers}
        self._connections = connections
        self._session: Any = None

    def _open(self) -> Any:
        # aiohttp binds a session to the running loop, so it is made on first use.
        import aiohttp

        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._connections, keepalive_timeout=30, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, auto_decompress=True
            )
        return self._session

    async def post_json(self, url: str, body: Mapping[str, Any], timeout: float) -> Reply:
        import aiohttp

        session = self._open()
        try:
            async with session.post(
                url, data=orjson.dumps(body), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                data = await response.read()
                return Reply(response.status, response.headers, data)
        except TimeoutError:
            raise TransportFailure(
                f"no answer within timeout_s={timeout:g} s", timed_out=True
            ) from None
        except aiohttp.ClientError as exc:
            raise TransportFailure(f"connection failed: {_describe(exc)}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxTransport:
    """httpx, for HTTP/2 (``http2 = true``, needs the ``h2`` package)."""

    def __init__(self, headers: Mapping[str, str], connections: int, *, http2: bool) -> None:
        import httpx

        if http2:
            try:
                import h2  # noqa: F401
            except ImportError:
                raise BackendUnavailable(
                    "http2 = true needs the h2 package: pip install 'httpx[http2]'"
                ) from None
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=connections,
                max_keepalive_connections=connections,
                keepalive_expiry=30.0,
            ),
            headers={"Content-Type": "application/json", **headers},
            http2=http2,
            follow_redirects=False,
        )

    async def post_json(self, url: str, body: Mapping[str, Any], timeout: float) -> Reply:
        import httpx

        try:
            response = await self._client.post(url, content=orjson.dumps(body), timeout=timeout)
        except httpx.TimeoutException:
            raise TransportFailure(
                f"no answer within timeout_s={timeout:g} s", timed_out=True
            ) from None
        except httpx.TransportError as exc:
            raise TransportFailure(f"connection failed: {_describe(exc)}") from None
        return Reply(response.status_code, response.headers, response.content)

    async def close(self) -> None:
        await self._client.aclose()


def make_transport(headers: Mapping[str, str], connections: int, *, http2: bool) -> Transport:
    if http2:
        return HttpxTransport(headers, connections, http2=True)
    return AiohttpTransport(headers, connections)
