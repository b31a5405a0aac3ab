"""Fault injection for tests: a TCP proxy that can play a network outage.

``TcpProxy`` forwards a loopback port to a server (PostgreSQL, in the fault tests).
``down()`` cuts every open connection and refuses new ones, as a database restart
or a network partition would; ``up()`` accepts again on the same port. It runs its
own event loop in a thread, so tests in any loop, or in none, can drive it, and
processes started by the test can connect through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """``127.0.0.1:port`` → ``target``; switch it off and on to play an outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # connections accepted since start: proof traffic went through
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @classmethod
    def to_url(cls, url: str) -> TcpProxy:
        """A started proxy to the host and port of a database URL."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432).start()

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        userinfo = netloc[0] + netloc[1]
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def down(self) -> None:
        """Cut every connection and refuse new ones."""
        self._call(self._down())

    def up(self) -> None:
        """Accept connections again, on the same port."""
        self._call(self._listen())

    @contextlib.contextmanager
    def outage(self, seconds: float) -> Iterator[None]:
        """Down for ``seconds`` (while the body runs, at least), then up."""
        self.down()
        started = time.monotonic()
        try:
            yield
        finally:
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
            self.up()

    def close(self) -> None:
        self._call(self._down())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    # ------------------------------------------------------------ in the thread

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        pair = {client_w, server_w}
        self._open |= pair
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        finally:
            self._open -= pair


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()
