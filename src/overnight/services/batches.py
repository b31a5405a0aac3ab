"""Batch use-cases: create (from a file or inline), get, list, cancel, delete."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import orjson

from overnight.blobs.base import BlobStore
from overnight.blobs.keys import batch_prefix, inline_input_key
from overnight.catalog import ModelCatalog
from overnight.domain.batches import Batch, BatchKind, BatchState
from overnight.domain.webhooks import WebhookConfig
from overnight.errors import FailedPrecondition, InvalidArgument, NotFound
from overnight.services.files import FileService
from overnight.services.ids import new_id
from overnight.store.base import BatchStore


class BatchService:
    def __init__(
        self,
        store: BatchStore,
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
        webhook_config: WebhookConfig | None = None,
    ) -> Batch:
        """A batch over an uploaded JSONL file. Raises NotFound / InvalidArgument."""
        entry = self.catalog.resolve_for(model, kind)
        file = await self.files.get(tenant, file_id)
        return await self._create(
            tenant,
            model=model,
            resolved=entry.name,
            kind=kind,
            display_name=display_name,
            input_file_id=file.id,
            input_blob=file.blob_key,
            ref=ref,
            annotations=annotations,
            webhook_config=webhook_config,
        )

    async def create_inline(
        self,
        tenant: str,
        *,
        model: str,
        kind: BatchKind,
        requests: Sequence[dict[str, Any]],
        display_name: str = "",
        webhook_config: WebhookConfig | None = None,
    ) -> Batch:
        """A batch over inline requests: written out as JSONL first, then one path.

        Each item is ``{"request": {...}, "metadata": {...}?}``; the key is its index.
        """
        entry = self.catalog.resolve_for(model, kind)
        if not requests:
            raise InvalidArgument("the batch holds no requests")
        batch_id = new_id()
        key = inline_input_key(batch_id)

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
        try:
            return await self._create(
                tenant,
                model=model,
                resolved=entry.name,
                kind=kind,
                display_name=display_name,
                input_blob=key,
                batch_id=batch_id,
                webhook_config=webhook_config,
            )
        except BaseException:
            await asyncio.to_thread(self.blobs.delete, batch_prefix(batch_id))
            raise

    async def _create(
        self,
        tenant: str,
        *,
        model: str,
        resolved: str,
        kind: BatchKind,
        display_name: str,
        input_blob: str,
        input_file_id: str | None = None,
        batch_id: str | None = None,
        ref: str | None = None,
        annotations: dict[str, Any] | None = None,
        webhook_config: WebhookConfig | None = None,
    ) -> Batch:
        """Record a PENDING batch over ``input_blob``: a file batch names its
        ``input_file_id``; an inline one (none) brings the ``batch_id`` its input was
        written under."""
        batch = Batch.new(
            id=batch_id or new_id(),
            tenant=tenant,
            kind=kind,
            model=model if model.startswith("models/") else f"models/{model}",
            model_resolved=resolved,
            display_name=display_name,
            input_file_id=input_file_id,
            inline=input_file_id is None,
            ref=ref,
            now=time.time(),
            expiry_s=self.expiry_s,
            webhook_config=webhook_config,
        )
        await self.store.create_batch(batch, input_blob, annotations)
        return batch

    async def get(self, tenant: str | None, batch_id: str) -> Batch:
        return await self.store.get_batch(batch_id.removeprefix("batches/"), tenant)

    async def find_by_ref(self, ref: str) -> tuple[Batch, dict[str, Any]] | None:
        """The batch created with ``ref`` and the annotations it was created with, or None."""
        batch = await self.store.find_batch_by_ref(ref)
        if batch is None:
            return None
        _, annotations = await self.store.batch_input(batch.id)
        return batch, annotations

    async def list_page(
        self, tenant: str, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[Batch]:
        """Newest first; ``after`` is the (create_time, id) of the previous page's last batch."""
        return await self.store.list_batches(tenant, limit=limit, after=after)

    async def inline_results(self, batch: Batch) -> list[dict[str, Any]]:
        """An inline batch's result lines, in input order, read from its responses file.

        Requests that never ran (a cancelled or expired batch keeps only the shards that
        finished) get a CANCELLED or DEADLINE_EXCEEDED error line, so that position
        ``i`` always answers request ``i``. Empty until the batch is finalized.
        """
        if not batch.inline or not batch.output_file_id:
            return []
        file = await self.files.get(batch.tenant, batch.output_file_id)
        found = await asyncio.to_thread(_read_lines, self.blobs, file.blob_key)
        by_index: dict[int, dict[str, Any]] = {}
        extra: list[dict[str, Any]] = []
        for line in found:
            key = line.get("key")
            if isinstance(key, str) and key.isdigit():
                by_index[int(key)] = line
            else:
                extra.append(line)
        count = max(batch.request_count, max(by_index, default=-1) + 1)
        status, code = (
            ("DEADLINE_EXCEEDED", 4) if batch.state is BatchState.EXPIRED else ("CANCELLED", 1)
        )
        missing = {
            "code": code,
            "message": f"not run: {batch.name} ended {batch.state.value} before this request ran",
            "status": status,
            "details": [],
        }
        lines = [by_index.get(i, {"key": str(i), "error": missing}) for i in range(count)]
        # A line the engine could not parse has no metadata; echo it from the input.
        unechoed = {i for i, line in enumerate(lines) if "error" in line and "metadata" not in line}
        if unechoed:
            input_key, _ = await self.store.batch_input(batch.id)
            found_meta = await asyncio.to_thread(_read_metadata, self.blobs, input_key, unechoed)
            for i, metadata in found_meta.items():
                lines[i] = {**lines[i], "metadata": metadata}
        return lines + extra

    async def cancel(self, tenant: str | None, batch_id: str) -> Batch:
        """Cancel a PENDING or RUNNING batch. Work already done stays downloadable.

        Raises ``FailedPrecondition`` naming the state of a batch that has already
        ended (cancelled included), as Gemini does, and ``NotFound``.
        """
        batch = await self.get(tenant, batch_id)
        if not batch.state.terminal:
            await self.store.transition(batch.id, BatchState.CANCELLED, now=time.time())
            batch = await self.get(tenant, batch.id)
            if batch.state is BatchState.CANCELLED:
                return batch
        raise FailedPrecondition(
            f"{batch.name} is already in state {batch.state.wire}, so it cannot be cancelled; "
            "only a PENDING or RUNNING batch can"
        )

    async def delete(self, tenant: str | None, batch_id: str) -> None:
        """Delete a batch and its generated outputs (not the user's input file).

        A batch still running is cancelled first, so that workers stop taking its shards.
        Works on a full disk (see ``FileService.freeing_space``).
        """
        current = await self.get(tenant, batch_id)
        free = self.files.freeing_space
        if not current.state.terminal:
            now = time.time()
            await free(lambda: self.store.transition(current.id, BatchState.CANCELLED, now=now))
        batch = await free(lambda: self.store.delete_batch(current.id, tenant))
        if batch.output_file_id:
            with contextlib.suppress(NotFound):
                await self.files.delete(batch.tenant, batch.output_file_id)
        await asyncio.to_thread(self.blobs.delete, batch_prefix(batch.id))
        await self.files.keep_reserve()


def _read_lines(blobs: BlobStore, key: str) -> list[dict[str, Any]]:
    with blobs.open_read(key) as f:
        return [orjson.loads(raw) for raw in f if raw.strip()]


def _read_metadata(blobs: BlobStore, key: str, wanted: set[int]) -> dict[int, Any]:
    """The ``metadata`` of the inline input lines numbered ``wanted`` (0-based)."""
    found: dict[int, Any] = {}
    last = max(wanted)
    with blobs.open_read(key) as f:
        for i, raw in enumerate(f):
            if i in wanted:
                with contextlib.suppress(orjson.JSONDecodeError):
                    line = orjson.loads(raw)
                    if isinstance(line, dict) and line.get("metadata") is not None:
                        found[i] = line["metadata"]
            if i >= last:
                break
    return found
