"""A fake OpenAI- and Gemini-compatible model server, for testing clients of one.

It speaks real HTTP/1.1 with keep-alive on loopback, answers deterministically, and
misbehaves on request: latency, error statuses, connection resets, downtime, and a
rate-limit enforcer that answers 429 and counts every request over the limits.

In-process (the server runs on its own event loop in a background thread)::

    with FakeUpstream(latency_s=0.05, error_rates={429: 0.1}, seed=1) as up:
        httpx.post(f"{up.url}/v1/chat/completions", json={...})
        assert up.stats().violations == {}

As a separate process (for benchmarks: the client and the server must not share a GIL)::

    with FakeUpstream.spawn(latency_s=0.05, requests_per_minute=600) as up:
        ...
        up.configure(error_rates={500: 0.2})
        up.down_for(2.0)
        print(up.stats())

or from a shell: ``python -m overnight.testing.upstream --port 8900 --latency 0.05``.

Endpoints:

- OpenAI: ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``GET /v1/models``.
- Gemini (``/v1`` or ``/v1beta``): ``POST /models/{model}:generateContent``,
  ``:embedContent``, ``:batchEmbedContents``, ``:countTokens``.
- Control (never counted, never faulted, never rate limited): ``GET /_fake/stats``,
  ``POST /_fake/config`` (any :class:`UpstreamConfig` field, plus ``down`` or
  ``down_for``), ``POST /_fake/reset``, ``GET /_fake/requests``, ``GET /_fake/health``.
  They are served on the main port and on a separate control port that stays up while the
  main port is down (see :attr:`FakeUpstream.control_url`).

Replies: the text is ``"echo: " + the last user turn's text`` (candidate *i* > 0 says
``"echo i: "``), cut at the first stop sequence, and truncated to ``max_tokens``
(``maxOutputTokens``) words, in which case the finish reason is ``length``
(``MAX_TOKENS``), else ``stop`` (``STOP``). A token is a whitespace-separated word. With a
JSON schema (``response_format`` / ``responseSchema`` / ``responseJsonSchema``) the text
is a minimal valid instance of it; with JSON mode and no schema, ``{}``. Embeddings are
unit vectors derived from a hash of the text.

This module holds the handles, :class:`FakeUpstream` (in-process) and
:class:`UpstreamProcess` (a child process), and the command line. The rest lives in:

- :mod:`overnight.testing.config`: :class:`UpstreamConfig`, :class:`UpstreamStats` and
  :class:`RecordedRequest` (all re-exported here);
- :mod:`overnight.testing.replies`: routes, the replies and the error bodies, in the
  OpenAI and Gemini wire formats, and :func:`minimal_instance`;
- :mod:`overnight.testing.server`: the asyncio server, its HTTP/1.1 connection loop, the
  rate-limit enforcer, fault injection and the ``/_fake/*`` control endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from overnight.testing.config import (
    VIOLATION_KINDS,
    WINDOW_S,
    RecordedRequest,
    UpstreamConfig,
    UpstreamStats,
)
from overnight.testing.replies import minimal_instance
from overnight.testing.server import Limiter, Server

__all__ = [
    "VIOLATION_KINDS",
    "WINDOW_S",
    "FakeUpstream",
    "RecordedRequest",
    "UpstreamConfig",
    "UpstreamProcess",
    "UpstreamStats",
    "main",
    "minimal_instance",
]

_Limiter = Limiter  # the unit tests import it from here


class FakeUpstream:
    """A fake model server running on its own event loop in a background thread.

    ``FakeUpstream(**options)`` takes the fields of :class:`UpstreamConfig` plus
    ``host`` (default ``127.0.0.1``), ``port`` and ``control_port`` (0: a free port).
    Use it as a context manager, or call :meth:`start` and :meth:`stop`. All methods are
    thread-safe and may be called from any thread, including from async tests (they block
    for a moment while the server's loop does the work).

    For throughput measurements run it in another process with :meth:`spawn`: in-process,
    the server and the client share one GIL.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, control_port: int = 0, **options: Any
    ) -> None:
        self._server = Server(UpstreamConfig().replace(**options), host, port, control_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def spawn(
        *, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 20.0, **options: Any
    ) -> UpstreamProcess:
        """Start the fake in a separate Python process; return when it is listening."""
        return UpstreamProcess(host=host, port=port, timeout_s=timeout_s, **options)

    # -- lifecycle

    def start(self) -> FakeUpstream:
        """Bind the ports and start serving; returns ``self``. Raises ``OSError`` when a
        port is taken."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready: list[BaseException | None] = []
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._server.start())
                ready.append(None)
            except BaseException as exc:
                ready.append(exc)
            started.set()
            if ready[0] is None:
                loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-upstream", daemon=True)
        self._thread.start()
        started.wait()
        if ready[0] is not None:
            self._thread.join()
            self._thread = None
            raise ready[0]
        self._loop = loop
        return self

    def stop(self) -> None:
        """Stop serving and close every connection."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._server.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``: the base URL (OpenAI clients add ``/v1``)."""
        return f"http://{self._server.host}:{self._server.port}"

    @property
    def control_url(self) -> str:
        """The control port's URL: ``/_fake/*`` only, and up while :attr:`url` is down."""
        return f"http://{self._server.host}:{self._server.control_port}"

    # -- control

    @property
    def config(self) -> UpstreamConfig:
        return self._server.config

    def configure(self, **changes: Any) -> UpstreamConfig:
        """Change any :class:`UpstreamConfig` fields now; returns the new config."""
        return self._call_sync(lambda: self._server.configure(changes))

    def stats(self) -> UpstreamStats:
        """A snapshot of the counters."""
        return self._call_sync(self._server.snapshot)

    def reset_stats(self) -> None:
        """Zero the counters, the rate-limit windows and the recorded requests."""
        self._call_sync(self._server.reset_stats)

    def requests(self) -> list[RecordedRequest]:
        """The most recent model API requests (up to ``record_limit``), oldest first."""
        return self._call_sync(lambda: list(self._server.recorded))

    @property
    def last_request(self) -> RecordedRequest | None:
        recorded = self.requests()
        return recorded[-1] if recorded else None

    def set_down(self, down: bool) -> None:
        """``True``: stop listening and reset open connections (clients get connection
        refused); ``False``: listen again on the same port."""
        self._call(self._server.set_down(down))

    def down_for(self, seconds: float) -> None:
        """Go down now and come back up on the same port after ``seconds``."""
        self._call(self._server.down_for(seconds))

    @property
    def down(self) -> bool:
        return self._server.down

    def _call(self, coro: Any) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the fake upstream is not running: call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _call_sync(self, fn: Callable[[], Any]) -> Any:
        if self._loop is None:
            return fn()

        async def call() -> Any:
            return fn()

        return self._call(call())


class UpstreamProcess:
    """A fake upstream in a child process (``python -m overnight.testing.upstream``).

    Made by :meth:`FakeUpstream.spawn`; controlled over its control port, which stays up
    while the model port is down. Use it as a context manager or call :meth:`stop`.
    """

    def __init__(self, *, host: str, port: int, timeout_s: float, **options: Any) -> None:
        config = UpstreamConfig().replace(**options)  # fail here, not in the child
        command = [sys.executable, "-m", "overnight.testing.upstream", "--host", host]
        command += ["--port", str(port), "--options", orjson.dumps(config.to_json()).decode()]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert self._process.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if self._process.poll() is not None or left <= 0:
                self._process.kill()
                raise RuntimeError(
                    f"the fake upstream process did not start within {timeout_s} s "
                    f"(exit code {self._process.poll()}; its errors are on stderr above)"
                )
            readable, _, _ = select.select([self._process.stdout], [], [], min(left, 0.1))
            if readable:
                line += self._process.stdout.readline()
        ready = orjson.loads(line)
        self.url: str = ready["url"]
        self.control_url: str = ready["control_url"]
        self.pid = self._process.pid

    def _control(self, method: str, path: str, payload: Any = None) -> Any:
        import httpx

        response = httpx.request(method, f"{self.control_url}{path}", json=payload, timeout=10)
        if response.status_code != 200:
            raise ValueError(f"fake upstream control {path}: {response.text}")
        return response.json()

    def stats(self) -> UpstreamStats:
        return UpstreamStats.from_json(self._control("GET", "/_fake/stats"))

    def configure(self, **changes: Any) -> UpstreamConfig:
        """Change :class:`UpstreamConfig` fields in the child; returns its new config."""
        UpstreamConfig().replace(**changes)  # the same errors as in-process, here
        if "error_rates" in changes:
            changes["error_rates"] = {str(k): v for k, v in changes["error_rates"].items()}
        data = self._control("POST", "/_fake/config", changes)["config"]
        return UpstreamConfig(**data)

    def reset_stats(self) -> None:
        self._control("POST", "/_fake/reset")

    def requests(self) -> list[RecordedRequest]:
        return [RecordedRequest(**r) for r in self._control("GET", "/_fake/requests")]

    def set_down(self, down: bool) -> None:
        self._control("POST", "/_fake/config", {"down": down})

    def down_for(self, seconds: float) -> None:
        self._control("POST", "/_fake/config", {"down_for": seconds})

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s)."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> UpstreamProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m overnight.testing.upstream",
        description="A fake OpenAI- and Gemini-compatible model server (see docs/testing.md). "
        "Prints one JSON line with url and control_url once listening.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=0, help="0: a free port")
    add("--control-port", type=int, default=0, help="0: a free port")
    add("--latency", type=float, dest="latency_s", help="seconds per request")
    add("--jitter", type=float, dest="jitter_s", help="extra uniform delay, seconds")
    add("--error-rate", action="append", default=[], metavar="STATUS=RATE", help="repeatable")
    add("--reset-rate", type=float, dest="reset_rate")
    add("--retry-after", type=float, dest="retry_after_s")
    add("--seed", type=int)
    add("--rpm", type=int, dest="requests_per_minute")
    add("--tpm", type=int, dest="tokens_per_minute")
    add("--max-concurrency", type=int, dest="max_concurrency")
    add("--tolerance", type=float, dest="limit_tolerance_s", help="rate window slack, s")
    add("--window", type=float, dest="window_s", help="rate window length, s (default 60)")
    add("--limit-mode", choices=["window", "bucket"], dest="limit_mode")
    add("--api-key", dest="api_key")
    add("--model", action="append", dest="models", help="serve only these (repeatable)")
    add("--embedding-dimensions", type=int, dest="embedding_dimensions")
    add("--max-embedding-inputs", type=int, dest="max_embedding_inputs")
    add("--options", default="{}", help="UpstreamConfig fields as JSON (applied last)")
    return parser


def _config_from_args(argv: Sequence[str] | None) -> tuple[UpstreamConfig, argparse.Namespace]:
    args = _parser().parse_args(argv)
    names = {f.name for f in dataclasses.fields(UpstreamConfig)}
    options = {k: v for k, v in vars(args).items() if k in names and v is not None}
    rates = {}
    for item in args.error_rate:
        status, _, rate = item.partition("=")
        rates[int(status)] = float(rate)
    if rates:
        options["error_rates"] = rates
    options.update(orjson.loads(args.options))
    return UpstreamConfig().replace(**options), args


async def _serve_forever(server: Server) -> None:
    await server.start()
    ready = {"url": f"http://{server.host}:{server.port}"}
    ready["control_url"] = f"http://{server.host}:{server.control_port}"
    sys.stdout.write(orjson.dumps(ready).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake upstream until SIGTERM or Ctrl-C."""
    try:
        config, args = _config_from_args(argv)
    except (TypeError, ValueError) as exc:
        sys.exit(f"fake upstream: {exc}")
    asyncio.run(_serve_forever(Server(config, args.host, args.port, args.control_port)))


if __name__ == "__main__":
    main()
