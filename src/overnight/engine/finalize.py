"""Finalize: concatenate shard outputs, in input order, into the responses file.

A RUNNING batch whose shards are all DONE becomes SUCCEEDED with a GENERATED
responses file. A cancelled, expired or failed batch keeps whatever shards finished
as a *partial* responses file (Gemini gives you nothing; we keep the work).
The file row, the output link and the state change commit in one transaction.
"""

from __future__ import annotations

import asyncio
import time

from overnight.blobs.base import BlobStore
from overnight.blobs.keys import responses_key, shards_prefix
from overnight.domain.batches import Batch, BatchState, ShardState
from overnight.domain.files import File, responses_file_id
from overnight.store.base import WorkQueue

COPY_CHUNK = 1 << 20


def output_file_id(batch_id: str) -> str:
    """A name requested uploads cannot take (see ``domain.files``)."""
    return responses_file_id(batch_id)


def _concatenate(blobs: BlobStore, target: str, sources: list[str]) -> tuple[int, str]:
    writer = blobs.open_write(target)
    try:
        for key in sources:
            with blobs.open_read(key) as f:
                while chunk := f.read(COPY_CHUNK):
                    writer.write(chunk)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


async def finalize_batch(
    queue: WorkQueue,
    blobs: BlobStore,
    batch: Batch,
    owner: str,
    *,
    retention_s: float | None = None,
) -> bool:
    """Build the output of a leased batch and record it. False if we lost the race."""
    now = time.time()
    target = BatchState.SUCCEEDED if batch.state is BatchState.RUNNING else None
    output: File | None = None
    sources: list[str] = []
    if batch.admitted:
        shards = await queue.list_shards(batch.id)
        sources = [s.output_blob for s in shards if s.state is ShardState.DONE and s.output_blob]
        if sources or target is not None:
            key = responses_key(batch.id)
            size, digest = await asyncio.to_thread(_concatenate, blobs, key, sources)
            output = File.generated(
                id=output_file_id(batch.id),
                tenant=batch.tenant,
                display_name=f"{batch.name} responses",
                size_bytes=size,
                sha256=digest,
                blob_key=key,
                now=now,
                retention_s=retention_s,
            )
    won = await queue.finalize(
        batch.id, owner, now=now, output=output, target=target, done_shards=len(sources)
    )
    if won and output is not None:
        # The responses file now holds every shard's lines; the pieces can go.
        await asyncio.to_thread(blobs.delete, shards_prefix(batch.id))
    return won
