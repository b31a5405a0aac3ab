"""``overnight serve`` and ``overnight worker``: the API with embedded workers, or workers alone.

Shutdown is graceful: on SIGINT/SIGTERM the server stops accepting requests, workers
stop at their next micro-batch boundary and release their shards, so nothing waits
for a lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rich.console import Console

from overnight.api.auth import is_loopback
from overnight.app import Services
from overnight.errors import ConfigError

log = logging.getLogger("overnight.serve")


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

    from overnight.api.server import create_app

    if not is_loopback(host) and await services.store.count_api_keys() == 0:
        check_bind(services, host)
    app = create_app(services)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    worker_task = None
    if services.settings.server.embedded_workers:
        worker_task = asyncio.create_task(services.worker().run(stop))
    console.print(f"Overnight serving on http://{host}:{port} (Ctrl-C to stop)")
    try:
        await server.serve()
    finally:
        stop.set()
        if worker_task is not None:
            with contextlib.suppress(Exception):
                await worker_task


async def work(services: Services, console: Console) -> None:
    stop = asyncio.Event()
    console.print("Overnight worker running (Ctrl-C to stop)")
    try:
        await services.worker().run(stop)
    finally:
        stop.set()
