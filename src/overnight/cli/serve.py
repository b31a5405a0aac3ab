"""``overnight serve`` and ``overnight worker``: the API with embedded workers, or workers alone.

Shutdown is graceful: on SIGINT/SIGTERM the server stops accepting requests, workers
stop at their next micro-batch boundary and release their shards, so nothing waits
for a lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

from rich.console import Console

from overnight.api.auth import is_loopback
from overnight.app import Runtime
from overnight.errors import ConfigError
from overnight.services.container import ServiceSet

log = logging.getLogger("overnight.serve")

SWEEP_SECONDS = 60.0


def check_bind(services: ServiceSet, host: str) -> None:
    """Refuse a non-loopback bind without API keys unless explicitly allowed, and then
    say loudly (on stderr and in the log) that anyone who reaches the port is trusted."""
    if is_loopback(host):
        return
    if services.settings.server.allow_unauthenticated:
        warning = (
            f"serving on {host} without API keys (server.allow_unauthenticated): anyone who "
            "can reach this port can read, run, cancel and delete every batch and file. "
            "Create a key with `overnight keys create NAME` to require one."
        )
        log.warning(warning)
        Console(stderr=True).print(f"[bold red]WARNING:[/] {warning}", highlight=False)
        return
    raise ConfigError(
        f"refusing to serve on {host} without API keys: anyone who can reach it could read "
        "and run your batches. Create a key with `overnight keys create NAME`, bind to "
        "127.0.0.1, or set server.allow_unauthenticated = true (OVERNIGHT_SERVER__ALLOW_UNAUTHENTICATED=1)."
    )


async def serve(runtime: Runtime, host: str, port: int, console: Console) -> None:
    import uvicorn

    from overnight.api.server import create_app

    services = runtime.services
    if not is_loopback(host) and not await services.keys.any_keys():
        check_bind(services, host)
    app = create_app(services, bind_host=host)
    # Forwarded headers are believed only from server.trusted_proxies (api/guard.py).
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", proxy_headers=False
    )
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    worker_task = None
    sweep_task = asyncio.create_task(sweep_expired(services, stop))
    # Webhook events leave through the store's outbox (engine/dispatcher.py).
    webhook_task = asyncio.create_task(runtime.webhook_dispatcher().run(stop))
    if services.settings.server.embedded_workers:
        worker = runtime.worker()
        app.state.health = worker.health.report
        worker_task = asyncio.create_task(worker.run(stop))
        worker_task.add_done_callback(_log_worker_end)
    console.print(f"Overnight serving on http://{host}:{port} (Ctrl-C to stop)")
    try:
        await server.serve()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await sweep_task
        with contextlib.suppress(Exception):
            await webhook_task
        if worker_task is not None:
            with contextlib.suppress(Exception):
                await worker_task


def _log_worker_end(task: asyncio.Task[None]) -> None:
    """Workers contain their errors; if the whole task dies anyway, say so at once."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the embedded workers stopped", exc_info=task.exception())


async def sweep_expired(services: ServiceSet, stop: asyncio.Event) -> None:
    """Every ``SWEEP_SECONDS`` until ``stop``: delete files past their retention and
    abandoned upload sessions. A failed sweep is logged and retried next time."""
    while not stop.is_set():
        try:
            files = await services.files.sweep_expired()
            sessions = await services.uploads.sweep_expired()
            if files or sessions:
                log.info("expired %d files and %d upload sessions", files, sessions)
        except Exception:
            log.exception("expired-file sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SWEEP_SECONDS)


async def work(
    runtime: Runtime,
    console: Console,
    *,
    health_host: str = "0.0.0.0",
    health_port: int | None = None,
) -> None:
    """Run workers until Ctrl-C/SIGTERM. Errors while running never end it (see
    ``Worker.run``); with ``health_port``, GET /healthz reports whether work moves."""
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)  # drain
    worker = runtime.worker()
    health_task = None
    if health_port is not None:
        listener = _listen(health_host, health_port)
        health_task = asyncio.create_task(serve_health(worker.health.report, listener))
    console.print("Overnight worker running (Ctrl-C to stop)")
    try:
        await worker.run(stop)
    finally:
        stop.set()
        if health_task is not None:
            health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health_task


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket for the health endpoint; a port in use is a ConfigError."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        raise ConfigError(f"cannot serve health checks on {host}:{port}: {exc.strerror}") from None
    return sock


async def serve_health(report: Callable[[], dict[str, Any]], listener: socket.socket) -> None:
    """Serve ``report()`` at GET /healthz: 200 when ok, 503 when degraded (probes)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from overnight import __version__

    async def healthz(_: Request) -> JSONResponse:
        body = {**report(), "version": __version__}
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    class HealthServer(uvicorn.Server):
        def capture_signals(self) -> contextlib.nullcontext[None]:  # type: ignore[override]
            return contextlib.nullcontext()  # signals stop the worker, not just this

    app = Starlette(routes=[Route("/healthz", healthz)])
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    await HealthServer(config).serve(sockets=[listener])
