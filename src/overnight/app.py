"""The composition root: ``build_services(settings)`` builds everything once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from overnight.blobs.local import LocalBlobStore
from overnight.blobs.space import RESERVE_NAME, SpaceReserve
from overnight.catalog import ModelCatalog
from overnight.config import Settings
from overnight.engine.pool import BackendPool
from overnight.engine.worker import Worker, WorkerScope
from overnight.errors import ConfigError
from overnight.services.batches import BatchService
from overnight.services.files import FileService
from overnight.services.generation import GenerationService
from overnight.services.runs import RunService
from overnight.store.sql import SqlStore


@dataclass
class Services:
    settings: Settings
    store: SqlStore
    blobs: LocalBlobStore
    catalog: ModelCatalog
    pool: BackendPool
    files: FileService
    batches: BatchService
    generation: GenerationService
    runs: RunService

    def worker(self, scope: WorkerScope | None = None, **kwargs: object) -> Worker:
        """A worker over this process's store, blobs and started backends."""
        return Worker(
            queue=self.store.queue,
            blobs=self.blobs,
            pool=self.pool,
            settings=self.settings.engine,
            scope=scope or WorkerScope(),
            **kwargs,  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        await self.pool.close()
        await self.store.close()


async def build_services(settings: Settings) -> Services:
    """Open the store (applying migrations), the blob store, and wire the services."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data_dir {settings.data_dir}: {exc.strerror}") from None
    catalog = ModelCatalog(settings)
    store = await SqlStore.open(settings.resolved_database_url)
    blobs = LocalBlobStore(settings.resolved_blob_dir)
    pool = BackendPool(catalog, settings.resolved_model_cache_dir)
    # SQLite writes even to delete: keep room for that on its disk.
    reserve = SpaceReserve(store.sqlite_dir / RESERVE_NAME) if store.sqlite_dir else None
    if reserve is not None:
        await asyncio.to_thread(reserve.keep)
    files = FileService(
        store.files, blobs, retention_s=settings.server.file_retention_hours * 3600, reserve=reserve
    )
    batches = BatchService(
        store.batches, blobs, catalog, files, expiry_s=settings.engine.batch_expiry_hours * 3600
    )
    generation = GenerationService(catalog, pool)
    runs = RunService(catalog, files, batches)
    return Services(settings, store, blobs, catalog, pool, files, batches, generation, runs)
