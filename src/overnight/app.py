"""The composition root: ``build_runtime(settings)`` builds everything once.

A ``Runtime`` is one process's wiring: the store, the blob store, the started-backend
pool and the ``ServiceSet`` over them. The API receives only ``runtime.services``;
``runtime.worker()`` builds a worker over the same store, blobs and pool. Nothing
here runs at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from overnight.backends.pool import BackendPool
from overnight.blobs.local import LocalBlobStore
from overnight.blobs.space import RESERVE_NAME, SpaceReserve
from overnight.catalog import ModelCatalog
from overnight.config import Settings
from overnight.engine.worker import Worker, WorkerScope
from overnight.errors import ConfigError
from overnight.services.batches import BatchService
from overnight.services.container import ServiceSet
from overnight.services.files import FileService
from overnight.services.generation import GenerationService
from overnight.services.keys import KeyService
from overnight.services.runs import RunService
from overnight.services.uploads import UploadService
from overnight.services.webhooks import WebhookService

if TYPE_CHECKING:
    from overnight.engine.dispatcher import WebhookDispatcher
from overnight.store.sql import SqlStore


@dataclass
class Runtime:
    """One process's store, blobs, started backends and services. ``close`` when done."""

    settings: Settings
    store: SqlStore
    blobs: LocalBlobStore
    pool: BackendPool
    services: ServiceSet

    def worker(self, scope: WorkerScope | None = None, **kwargs: object) -> Worker:
        """A worker over this process's store, blobs and started backends."""
        return Worker(
            queue=self.store.queue,
            blobs=self.blobs,
            pool=self.pool,
            settings=self.settings.engine,
            scope=scope or WorkerScope(),
            read_file=self.services.files.read_part,
            **kwargs,  # type: ignore[arg-type]
        )

    def webhook_dispatcher(self) -> WebhookDispatcher:
        """A dispatcher delivering this store's webhook outbox (``overnight serve``).

        Imported here: its HTTP client and signer cost a batch-only process ~0.25 s.
        """
        from overnight.engine.dispatcher import WebhookDispatcher

        return WebhookDispatcher(self.store.outbox, self.settings.webhooks)

    async def close(self) -> None:
        await self.pool.close()
        await self.store.close()


async def build_runtime(settings: Settings) -> Runtime:
    """Open the store (applying migrations) and the blob store, and wire the services.

    Raises ``ConfigError`` when ``data_dir`` cannot be created, ``StoreError`` when the
    database cannot be opened. Backends start later, on first use.
    """
    _make_data_dir(settings)
    catalog = ModelCatalog(settings)
    store = await SqlStore.open(settings.resolved_database_url)
    blobs = LocalBlobStore(settings.resolved_blob_dir)
    pool = BackendPool(catalog, settings.resolved_model_cache_dir)
    # SQLite writes even to delete: keep room for that on its disk.
    reserve = SpaceReserve(store.sqlite_dir / RESERVE_NAME) if store.sqlite_dir else None
    if reserve is not None:
        await asyncio.to_thread(reserve.keep)
    server = settings.server
    retention_s = server.file_retention_hours * 3600
    files = FileService(store.files, blobs, retention_s=retention_s, reserve=reserve)
    uploads = UploadService(
        store.uploads,
        blobs,
        max_bytes=server.max_upload_bytes,
        session_s=server.upload_session_minutes * 60,
        retention_s=retention_s,
    )
    batches = BatchService(
        store.batches, blobs, catalog, files, expiry_s=settings.engine.batch_expiry_hours * 3600
    )
    services = ServiceSet(
        settings=settings,
        catalog=catalog,
        files=files,
        uploads=uploads,
        batches=batches,
        generation=GenerationService(catalog, pool, files.read_part),
        runs=RunService(catalog, files, batches),
        keys=KeyService(store.keys),
        webhooks=WebhookService(store.webhooks, settings.webhooks),
    )
    return Runtime(settings, store, blobs, pool, services)


@contextlib.asynccontextmanager
async def open_keys(settings: Settings) -> AsyncIterator[KeyService]:
    """Just the key service over the configured store (``overnight keys``): no blob
    store, no backends."""
    _make_data_dir(settings)
    store = await SqlStore.open(settings.resolved_database_url)
    try:
        yield KeyService(store.keys)
    finally:
        await store.close()


def _make_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data_dir {settings.data_dir}: {exc.strerror}") from None
