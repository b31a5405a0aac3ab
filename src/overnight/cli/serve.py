"""``overnight serve`` and ``overnight worker``: the API with embedded workers, or workers alone.

Shutdown is graceful: on SIGINT/SIGTERM the server stops accepting requests, workers
stop at their next micro-batch boundary and release their shards, so nothing waits
for a lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from rich.console import Console

from overnight.api.auth import is_loopback
from overnight.app import Services
from overnight.errors import ConfigError

if TYPE_CHECKING:
    from overnight.services.uploads import UploadService

log = logging.getLogger("overnight.serve")

SWEEP_SECONDS = 60.0


def check_bind(services: Services, host: str) -> None:
    """Refuse a non-loopback bind without API keys unless explicitly allowed."""
    if is_loopback(host) or services.settings.server.allow_unauthenticated:
        return
    raise ConfigError(
        f"refusing to serve on {host} without API keys: anyone who can reach it could read "
        "and run your batches. Create a key with `overnight keys create NAME`, bind to "
        "127.0.0.1, or set server.allow_unauthenticated = true (OVERNIGHT_SERVER__ALLOW_UNAUTHENTICATED=1)."
    )


async def serve(services: Services, host: str, port: int, console: Console) -> None:
    import uvicorn

    from overnight.api.gemini.upload import upload_service_for
    from overnight.api.server import create_app

    if not is_loopback(host) and await services.store.count_api_keys() == 0:
        check_bind(services, host)
    app = create_app(services)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    worker_task = None
    app.state.uploads = upload_service_for(services)
    sweep_task = asyncio.create_task(sweep_expired(services, app.state.uploads, stop))
    if services.settings.server.embedded_workers:
        worker_task = asyncio.create_task(services.worker().run(stop))
    console.print(f"Overnight serving on http://{host}:{port} (Ctrl-C to stop)")
    try:
        await server.serve()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await sweep_task
        if worker_task is not None:
            with contextlib.suppress(Exception):
                await worker_task


async def sweep_expired(services: Services, uploads: UploadService, stop: asyncio.Event) -> None:
    """Every ``SWEEP_SECONDS`` until ``stop``: delete files past their retention and
    abandoned upload sessions. A failed sweep is logged and retried next time."""
    while not stop.is_set():
        try:
            files = await services.files.sweep_expired()
            sessions = await uploads.sweep_expired()
            if files or sessions:
                log.info("expired %d files and %d upload sessions", files, sessions)
        except Exception:
            log.exception("expired-file sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SWEEP_SECONDS)


async def work(services: Services, console: Console) -> None:
    stop = asyncio.Event()
    console.print("Overnight worker running (Ctrl-C to stop)")
    try:
        await services.worker().run(stop)
    finally:
        stop.set()
