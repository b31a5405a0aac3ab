"""The fake upstream's asyncio server: listeners, the HTTP/1.1 connection loop, the
rate-limit enforcer (:class:`Limiter`), fault injection and the ``/_fake/*`` control
endpoints. It runs on one event loop; :class:`overnight.testing.upstream.FakeUpstream`
wraps it for other threads and processes. The replies come from
:mod:`overnight.testing.replies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from overnight.testing.config import WINDOW_S, RecordedRequest, UpstreamConfig, UpstreamStats
from overnight.testing.replies import (
    HttpError,
    Route,
    build_reply,
    error_body,
    find_route,
    request_tokens,
)

_RESET = object()  # a handler's answer: abort the connection with no response


def _response(
    status: int, payload: Any, *, keep_alive: bool = True, headers: Sequence[str] = ()
) -> bytes:
    body = orjson.dumps(payload)
    head = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "server: overnight-fake-upstream",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *headers,
    ]
    if not keep_alive:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class Limiter:
    """rpm/tpm (sliding window or token bucket) and an in-flight cap; see
    :class:`UpstreamConfig`."""

    def __init__(self) -> None:
        self.arrivals: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0
        self.buckets: dict[str, tuple[float, float]] = {}  # limit name: (level, at)

    def admit(self, config: UpstreamConfig, now: float, tokens: int, in_flight: int) -> str | None:
        """The name of the limit this request breaks, or ``None`` (and it is admitted)."""
        if config.max_concurrency is not None and in_flight >= config.max_concurrency:
            return "max_concurrency"
        costs = {"requests_per_minute": 1, "tokens_per_minute": tokens}
        limits = {
            "requests_per_minute": config.requests_per_minute,
            "tokens_per_minute": config.tokens_per_minute,
        }
        if config.limit_mode == "bucket":
            levels = {}
            for name, limit in limits.items():
                if limit is None:
                    continue
                rate = limit / WINDOW_S
                level, at = self.buckets.get(name, (float(limit), now))
                level = min(float(limit), level + (now - at) * rate)
                if level + rate * config.limit_tolerance_s < costs[name]:
                    return name
                levels[name] = level - costs[name]
            self.buckets.update({name: (level, now) for name, level in levels.items()})
            return None
        horizon = now - (config.window_s - config.limit_tolerance_s)
        while self.arrivals and self.arrivals[0] <= horizon:
            self.arrivals.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.token_sum -= self.tokens.popleft()[1]
        scale = config.window_s / WINDOW_S
        rpm, tpm = (
            None if limit is None else limit * scale
            for limit in (limits["requests_per_minute"], limits["tokens_per_minute"])
        )
        if rpm is not None and len(self.arrivals) >= rpm:
            return "requests_per_minute"
        if tpm is not None and self.token_sum + tokens > tpm:
            return "tokens_per_minute"
        self.arrivals.append(now)
        self.tokens.append((now, tokens))
        self.token_sum += tokens
        return None


class Server:
    """The asyncio server: listeners, connections, counters. Runs on one event loop."""

    def __init__(self, config: UpstreamConfig, host: str, port: int, control_port: int) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.control_port = control_port
        self._listener: asyncio.Server | None = None
        self._control: asyncio.Server | None = None
        self._conns: dict[asyncio.Transport, tuple[asyncio.Task[Any], bool]] = {}
        self._up_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.reset_stats()
        self._reseed()

    def _reseed(self) -> None:
        seed = self.config.seed
        self._faults = random.Random(seed)
        self._jitter = random.Random(None if seed is None else seed + 1)

    def reset_stats(self) -> None:
        self.stats = UpstreamStats()
        self._in_flight = 0
        self._serial = 0
        self._limiter = Limiter()
        self.recorded: deque[RecordedRequest] = deque(maxlen=self.config.record_limit)

    def snapshot(self) -> UpstreamStats:
        return dataclasses.replace(
            self.stats,
            by_status=dict(self.stats.by_status),
            violations=dict(self.stats.violations),
            by_model=dict(self.stats.by_model),
            by_endpoint=dict(self.stats.by_endpoint),
            in_flight=self._in_flight,
        )

    def configure(self, changes: Mapping[str, Any]) -> UpstreamConfig:
        old = self.config
        self.config = old.replace(**changes)
        if "seed" in changes:
            self._reseed()
        if self.config.record_limit != old.record_limit:
            self.recorded = deque(self.recorded, maxlen=self.config.record_limit)
        return self.config

    # -- listening

    async def start(self) -> None:
        self._control = await self._listen(self.control_port, control_only=True)
        self.control_port = self._control.sockets[0].getsockname()[1]
        self._listener = await self._listen(self.port, control_only=False)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _listen(self, port: int, *, control_only: bool) -> asyncio.Server:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # _drop_connections cancels these leaf tasks; Python 3.11's stream callback
            # would report the cancellation as an error, so it ends here.
            with contextlib.suppress(asyncio.CancelledError):
                await self._connection(reader, writer, control_only)

        return await asyncio.start_server(
            on_connection, self.host, port, reuse_address=True, limit=1 << 20, backlog=1024
        )

    @property
    def down(self) -> bool:
        return self._listener is None

    async def set_down(self, down: bool) -> None:
        if self._up_timer is not None:
            self._up_timer.cancel()
            self._up_timer = None
        if down and self._listener is not None:
            self._listener.close()
            self._listener = None
            await self._drop_connections(control=False)
        elif not down and self._listener is None:
            self._listener = await self._listen(self.port, control_only=False)

    async def down_for(self, seconds: float) -> None:
        await self.set_down(True)

        def come_back() -> None:
            self._up_timer = None
            task = asyncio.get_running_loop().create_task(self.set_down(False))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._up_timer = asyncio.get_running_loop().call_later(seconds, come_back)

    async def close(self) -> None:
        await self.set_down(True)
        if self._control is not None:
            self._control.close()
            self._control = None
        await self._drop_connections(control=True)

    async def _drop_connections(self, *, control: bool) -> None:
        """Reset the connections of one listener (never the caller's own)."""
        current = asyncio.current_task()
        dropped = []
        for transport, (task, control_only) in list(self._conns.items()):
            if control_only == control and task is not current:
                _abort(transport)
                task.cancel()
                dropped.append(task)
        await asyncio.gather(*dropped, return_exceptions=True)

    # -- connections

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, control_only: bool
    ) -> None:
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        task = asyncio.current_task()
        assert task is not None
        self._conns[transport] = (task, control_only)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, {"error": "headers too large"}, keep_alive=False))
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    writer.write(_response(400, {"error": "bad request line"}, keep_alive=False))
                    return
                method, target, version = parts
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", ""):
                    message = {"error": "chunked request bodies are not supported"}
                    writer.write(_response(501, message, keep_alive=False))
                    return
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl, for big bodies
                try:
                    body = await reader.readexactly(int(headers.get("content-length") or 0))
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                connection = headers.get("connection", "").lower()
                keep_alive = "close" not in connection and (
                    version == "HTTP/1.1" or "keep-alive" in connection
                )
                answer = await self._request(method, target, headers, body, control_only)
                if answer is _RESET:
                    _abort(transport)
                    return
                status, payload, extra = answer
                if not control_only and self.down:
                    keep_alive = False  # a control call on the port it just took down
                writer.write(_response(status, payload, keep_alive=keep_alive, headers=extra))
                if transport.get_write_buffer_size() > 1 << 16:
                    await writer.drain()
                if not keep_alive:
                    return
        except ConnectionError:
            return
        finally:
            self._conns.pop(transport, None)
            if not transport.is_closing():
                transport.close()

    async def _request(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes, control_only: bool
    ) -> Any:
        url = urlsplit(target)
        if url.path.startswith("/_fake/"):
            return await self._control_request(method, url.path, raw)
        route = None if control_only else find_route(method, url.path)
        if route is None:
            api = "gemini" if ":" in url.path or url.path.startswith("/v1beta") else "openai"
            return 404, error_body(api, 404, f"no route for {method} {url.path}"), ()
        stats = self.stats
        stats.requests += 1
        try:
            body: Any = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            return self._finish(route, 400, error_body(route.api, 400, f"invalid JSON: {exc}"))
        if not isinstance(body, dict):
            message = "the request body must be a JSON object"
            return self._finish(route, 400, error_body(route.api, 400, message))
        model = route.model if route.api == "gemini" else body.get("model")
        _bump(stats.by_endpoint, route.endpoint)
        if model is not None:
            _bump(stats.by_model, str(model))
        self.recorded.append(RecordedRequest(method, url.path, model, body))
        denied = self._check_auth(route, headers, url.query)
        if denied is not None:
            return self._finish(route, denied[0], error_body(route.api, *denied))
        config = self.config
        violation = self._limiter.admit(
            config, time.monotonic(), request_tokens(route, body), self._in_flight
        )
        if violation is not None:
            _bump(stats.violations, violation)
            message = f"rate limit exceeded: {violation} (fake upstream enforcer)"
            return self._finish(route, 429, error_body(route.api, 429, message))
        self._in_flight += 1
        if self._in_flight > stats.max_in_flight:
            stats.max_in_flight = self._in_flight
        try:
            reset = self._faults.random() < config.reset_rate if config.reset_rate else False
            fault = None if reset else self._draw_error(config)
            delay = config.latency_s
            if config.jitter_s:
                delay += self._jitter.uniform(0.0, config.jitter_s)
            if delay:
                await asyncio.sleep(delay)
            if reset:
                stats.resets += 1
                return _RESET
            if fault is not None:
                message = f"injected fault: {http.HTTPStatus(fault).phrase} (fake upstream)"
                return self._finish(route, fault, error_body(route.api, fault, message))
            try:
                payload = self._reply(route, model, body)
            except HttpError as exc:
                return self._finish(
                    route, exc.status, error_body(route.api, exc.status, exc.message)
                )
            return self._finish(route, 200, payload)
        finally:
            self._in_flight -= 1

    def _draw_error(self, config: UpstreamConfig) -> int | None:
        if not config.error_rates:
            return None
        roll = self._faults.random()
        for status, rate in sorted(config.error_rates.items()):
            if roll < rate:
                return status
            roll -= rate
        return None

    def _finish(self, route: Route, status: int, payload: Any) -> tuple[int, Any, list[str]]:
        _bump(self.stats.by_status, status)
        headers = []
        retry_after = self.config.retry_after_s
        if retry_after is not None and status in (429, 503):
            text = str(int(retry_after)) if retry_after == int(retry_after) else f"{retry_after:g}"
            headers = [f"retry-after: {text}", f"retry-after-ms: {round(retry_after * 1000)}"]
        return status, payload, headers

    def _check_auth(
        self, route: Route, headers: Mapping[str, str], query: str
    ) -> tuple[int, str] | None:
        key = self.config.api_key
        if key is None or route.endpoint == "models":
            return None
        if route.api == "openai":
            given = headers.get("authorization", "")
            if given != f"Bearer {key}":
                return 401, "Incorrect or missing API key (expected Authorization: Bearer KEY)"
            return None
        given = headers.get("x-goog-api-key") or (parse_qs(query).get("key") or [""])[0]
        if not given:
            return 401, "Method doesn't allow unregistered callers: send x-goog-api-key"
        if given != key:
            return 403, "API key not valid. Please pass a valid API key."
        return None

    def _reply(self, route: Route, model: Any, body: Mapping[str, Any]) -> Any:
        return build_reply(route, model, body, self.config, self._next_serial)

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    async def _control_request(self, method: str, path: str, raw: bytes) -> Any:
        try:
            if path == "/_fake/health":
                return 200, {"ok": True, "down": self.down}, ()
            if path == "/_fake/stats" and method == "GET":
                return 200, self.snapshot().to_json(), ()
            if path == "/_fake/requests" and method == "GET":
                return 200, [dataclasses.asdict(r) for r in self.recorded], ()
            if path == "/_fake/reset" and method == "POST":
                self.reset_stats()
                return 200, {"ok": True}, ()
            if path == "/_fake/config" and method == "POST":
                changes = dict(orjson.loads(raw or b"{}"))
                down, down_for = changes.pop("down", None), changes.pop("down_for", None)
                config = self.configure(changes)
                if down_for is not None:
                    await self.down_for(float(down_for))
                elif down is not None:
                    await self.set_down(bool(down))
                return 200, {"config": config.to_json(), "down": self.down}, ()
            if path == "/_fake/config" and method == "GET":
                return 200, {"config": self.config.to_json(), "down": self.down}, ()
        except (TypeError, ValueError, orjson.JSONDecodeError) as exc:
            return 400, {"error": {"message": str(exc)}}, ()
        return 404, {"error": {"message": f"no control route {method} {path}"}}, ()


def _bump(counter: dict[Any, int], key: Any) -> None:
    counter[key] = counter.get(key, 0) + 1


def _abort(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a polite FIN: the peer sees a reset."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()
