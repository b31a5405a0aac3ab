"""Batch use-cases: create (from a file or inline), get, list, cancel, delete."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import orjson

from overnight.blobs.base import BlobStore
from overnight.catalog import ModelCatalog
from overnight.domain.batches import Batch, BatchKind, BatchState, Usage
from overnight.errors import FailedPrecondition, InvalidArgument, NotFound
from overnight.services.files import FileService
from overnight.services.ids import new_id
from overnight.store.sql import SqlStore


class BatchService:
    def __init__(
        self,
        store: SqlStore,
        blobs: BlobStore,
        catalog: ModelCatalog,
        files: FileService,
        *,
        expiry_s: float,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.files = files
        self.expiry_s = expiry_s

    async def create_from_file(
        self,
        tenant: str,
        *,
        model: str,
        kind: BatchKind,
        file_id: str,
        display_name: str = "",
        ref: str | None = None,
        annotations: dict[str, Any] | None = None,
    ) -> Batch:
        """A batch over an uploaded JSONL file. Raises NotFound / InvalidArgument."""
        entry = self.catalog.resolve_for(model, kind)
        file = await self.files.get(tenant, file_id)
        return await self._create(
            tenant,
            model,
            entry.name,
            kind,
            display_name,
            file.id,
            file.blob_key,
            False,
            ref,
            annotations,
        )

    async def create_inline(
        self,
        tenant: str,
        *,
        model: str,
        kind: BatchKind,
        requests: Sequence[dict[str, Any]],
        display_name: str = "",
    ) -> Batch:
        """A batch over inline requests: written out as JSONL first, then one path.

        Each item is ``{"request": {...}, "metadata": {...}?}``; the key is its index.
        """
        entry = self.catalog.resolve_for(model, kind)
        if not requests:
            raise InvalidArgument("the batch holds no requests")
        batch_id = new_id()
        key = f"batches/{batch_id}/input.jsonl"

        def write() -> None:
            writer = self.blobs.open_write(key)
            try:
                for i, item in enumerate(requests):
                    line = {"key": str(i), "request": item.get("request")}
                    if item.get("metadata") is not None:
                        line["metadata"] = item["metadata"]
                    writer.write(orjson.dumps(line) + b"\n")
                writer.commit()
            except BaseException:
                writer.abort()
                raise

        await asyncio.to_thread(write)
        return await self._create(
            tenant, model, entry.name, kind, display_name, None, key, True, None, None, batch_id
        )

    async def _create(
        self,
        tenant: str,
        model: str,
        resolved: str,
        kind: BatchKind,
        display_name: str,
        input_file_id: str | None,
        input_blob: str,
        inline: bool,
        ref: str | None,
        annotations: dict[str, Any] | None,
        batch_id: str | None = None,
    ) -> Batch:
        now = time.time()
        name = model if model.startswith("models/") else f"models/{model}"
        batch = Batch(
            id=batch_id or new_id(),
            tenant=tenant,
            kind=kind,
            model=name,
            model_resolved=resolved,
            display_name=display_name,
            state=BatchState.PENDING,
            input_file_id=input_file_id,
            inline=inline,
            output_file_id=None,
            request_count=0,
            succeeded_count=0,
            failed_count=0,
            usage=Usage(),
            create_time=now,
            update_time=now,
            end_time=None,
            expire_time=now + self.expiry_s,
            error=None,
            ref=ref,
            admitted=False,
            finalized=False,
        )
        await self.store.create_batch(batch, input_blob, annotations)
        return batch

    async def get(self, tenant: str | None, batch_id: str) -> Batch:
        return await self.store.get_batch(batch_id.removeprefix("batches/"), tenant)

    async def cancel(self, tenant: str | None, batch_id: str) -> Batch:
        """Cancel a PENDING or RUNNING batch. Work already done stays downloadable."""
        batch = await self.get(tenant, batch_id)
        if batch.state.terminal:
            if batch.state is BatchState.CANCELLED:
                return batch
            raise FailedPrecondition(
                f"{batch.name} is already {batch.state.value} and cannot be cancelled"
            )
        await self.store.transition(batch.id, BatchState.CANCELLED, now=time.time())
        return await self.get(tenant, batch.id)

    async def delete(self, tenant: str | None, batch_id: str) -> None:
        """Delete a batch and its generated outputs (not the user's input file)."""
        batch = await self.store.delete_batch(batch_id.removeprefix("batches/"), tenant)
        if batch.output_file_id:
            with contextlib.suppress(NotFound):
                await self.files.delete(None, batch.output_file_id)
        await asyncio.to_thread(self.blobs.delete, f"batches/{batch.id}/")
