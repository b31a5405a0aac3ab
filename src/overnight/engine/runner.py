"""Running one shard: read its byte range, parse, call the backend, write the output.

The requests of a shard are sorted by size and sent to the backend in micro-batches
of its preferred size (length bucketing keeps padding low). Between micro-batches
the runner asks ``should_stop`` whether to give up (batch cancelled or expired,
lease lost, shutdown). Results are written in input order, one line per non-blank
input line: ``{"key", "response"}`` or ``{"key", "error"}``, plus ``metadata`` when
the input line had one. The output is published atomically under a key that names
the lease, so a stale worker can never overwrite the output a commit recorded.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from overnight.backends.base import LIVE_PROGRESS, Backend
from overnight.blobs.base import BlobStore
from overnight.blobs.keys import shard_output_key
from overnight.domain.batches import Batch, BatchKind, Shard, ShardOutcome, Usage
from overnight.domain.capabilities import check_embed, check_generate
from overnight.domain.file_parts import (
    TenantFileReader,
    has_file_parts,
    reader_for,
    resolve_file_parts,
)
from overnight.domain.generation import apply_defaults
from overnight.domain.lines import LineError, RequestLine, parse_line
from overnight.domain.requests import EmbedRequest, GenerateRequest, GenerationConfig
from overnight.domain.results import EmbedResult, GenerateResult
from overnight.engine.admission import iter_lines
from overnight.errors import (
    BlobError,
    InvalidArgument,
    NotFound,
    OvernightError,
    RequestRejected,
    StorageFull,
)

T = TypeVar("T")
ProgressFn = Callable[[int, int], None]  # (requests finished, tokens generated)


class ShardAbandoned(Exception):
    """The runner stopped at a micro-batch boundary; the shard must be released."""


@dataclass(slots=True)
class _Slot:
    key: str
    line_no: int
    metadata: Any = None
    request: GenerateRequest | EmbedRequest | None = None
    body: dict[str, Any] | None = None  # the wire response
    error: OvernightError | None = None
    size: int = 0


def read_shard(
    blobs: BlobStore, key: str, shard: Shard, max_line: int
) -> list[tuple[int, bytes | None]]:
    """The shard's non-blank lines as ``(line_no, raw)``; raw None for an oversize line."""
    out: list[tuple[int, bytes | None]] = []
    with blobs.open_read(key) as f:
        f.seek(shard.byte_start)
        line_no = shard.first_line - 1
        for _, raw, _ in iter_lines(f, max_line, end=shard.byte_end):
            line_no += 1
            if raw is None or not raw.isspace():
                out.append((line_no, raw))
    return out


def _parse(lines: list[tuple[int, bytes | None]], batch: Batch, max_line: int) -> list[_Slot]:
    slots = []
    for line_no, raw in lines:
        if raw is None:
            err = LineError(
                line_no,
                f"longer than {max_line} bytes (engine.shard_max_bytes)",
                inline=batch.inline,
            )
            slots.append(_Slot(err.key, line_no, error=err))
            continue
        try:
            parsed: RequestLine = parse_line(raw, line_no, batch.kind, inline=batch.inline)
        except LineError as exc:
            slots.append(_Slot(exc.key, line_no, exc.metadata, error=exc))
            continue
        slots.append(_Slot(parsed.key, line_no, parsed.metadata, parsed.request, size=len(raw)))
    return slots


@dataclass
class _LiveProgress:
    """Passes what a backend reports during a call on, and counts it."""

    on_progress: ProgressFn
    requests: int = 0
    tokens: int = 0

    def __call__(self, requests: int, tokens: int) -> None:
        self.requests += requests
        self.tokens += tokens
        self.on_progress(requests, tokens)

    def settle(self, requests: int, tokens: int) -> None:
        """The call returned with these totals: report what the backend did not."""
        self.on_progress(max(0, requests - self.requests), max(0, tokens - self.tokens))


async def run_shard(
    *,
    batch: Batch,
    shard: Shard,
    token: str,
    input_key: str,
    backend: Backend,
    blobs: BlobStore,
    max_line: int,
    should_stop: Callable[[], Awaitable[bool]],
    on_progress: ProgressFn | None = None,
    defaults: GenerationConfig | None = None,
    read_file: TenantFileReader | None = None,
) -> ShardOutcome:
    """Execute a leased shard and publish its output blob. Raises ``ShardAbandoned``.

    ``defaults`` (the model's, ``domain.generation``) fill the generationConfig fields
    a request leaves unset, after the request passed the capability check; a line
    that samples without a seed gets one derived from its key. ``read_file`` resolves
    ``fileData`` parts naming the batch tenant's files (``domain.file_parts``), per
    micro-batch, after the check; a file that cannot be read fails only its line.

    Every other error propagates, and the worker sorts it: a blob I/O failure
    arrives as ``BlobError``/``StorageFull`` (waited out), a transient backend error
    releases the shard, any other one counts as a failed attempt.
    """
    lines = await _blob_io(read_shard, blobs, input_key, shard, max_line)
    slots = _parse(lines, batch, max_line)
    caps = backend.capabilities
    check = check_generate if batch.kind is BatchKind.GENERATE else check_embed
    runnable: list[_Slot] = []
    for slot in slots:
        if slot.request is None:
            if on_progress:
                on_progress(1, 0)
            continue
        try:
            check(slot.request, caps)  # type: ignore[arg-type]
        except RequestRejected as exc:
            slot.error = LineError(slot.line_no, exc.message, slot.key, inline=batch.inline)
            if on_progress:
                on_progress(1, 0)
            continue
        if defaults is not None and isinstance(slot.request, GenerateRequest):
            slot.request = apply_defaults(slot.request, defaults, seed_source=slot.key)
        runnable.append(slot)

    runnable.sort(key=lambda s: s.size)
    step = max(1, caps.max_batch_size)
    usage = Usage()
    for i in range(0, len(runnable), step):
        if await should_stop():
            raise ShardAbandoned()
        chunk = runnable[i : i + step]
        if read_file is not None:
            chunk, requests = await _with_files(chunk, read_file, batch, on_progress)
            if not chunk:
                continue
        else:
            requests = [s.request for s in chunk]
        live = _LiveProgress(on_progress) if on_progress else None
        watching = LIVE_PROGRESS.set(live)
        try:
            if batch.kind is BatchKind.GENERATE:
                outcomes: list[Any] = await backend.generate(requests)
            else:
                outcomes = await backend.embed(requests)
        finally:
            LIVE_PROGRESS.reset(watching)
        if len(outcomes) != len(chunk):
            raise RuntimeError(
                f"backend {caps.model_version} returned {len(outcomes)} results for {len(chunk)} requests"
            )
        tokens = 0
        for slot, outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, GenerateResult | EmbedResult):
                slot.body = outcome.to_wire(f"{batch.id}-{slot.line_no}")
                used = Usage(outcome.prompt_tokens, outcome.candidates_tokens)
                usage = usage + used
                tokens += used.candidates_tokens
            elif isinstance(outcome, OvernightError):
                slot.error = outcome
            else:
                raise RuntimeError(
                    f"backend {caps.model_version} returned {type(outcome).__name__}"
                )
        if live:
            live.settle(len(chunk), tokens)

    output_key = shard_output_key(batch.id, shard.seq, token)
    succeeded = await _blob_io(_write_output, blobs, output_key, slots)
    return ShardOutcome(output_key, succeeded, len(slots) - succeeded, usage)


async def _with_files(
    chunk: list[_Slot], read_file: TenantFileReader, batch: Batch, on_progress: ProgressFn | None
) -> tuple[list[_Slot], list[Any]]:
    """The slots whose files could be read, and their requests with ``fileData`` parts
    resolved; the others get their error. Per micro-batch, and not kept on the slots,
    so at most one micro-batch of file bytes is in memory."""
    kept: list[_Slot] = []
    requests: list[Any] = []
    for slot in chunk:
        request = slot.request
        if isinstance(request, GenerateRequest) and has_file_parts(request):
            try:
                request = await resolve_file_parts(request, reader_for(read_file, batch.tenant))
            except (NotFound, InvalidArgument) as exc:
                slot.error = LineError(slot.line_no, exc.message, slot.key, inline=batch.inline)
                slot.error.status, slot.error.grpc_code = exc.status, exc.grpc_code  # type: ignore[misc]
                if on_progress:
                    on_progress(1, 0)
                continue
        kept.append(slot)
        requests.append(request)
    return kept, requests


async def fail_shard(
    batch: Batch,
    shard: Shard,
    token: str,
    input_key: str,
    blobs: BlobStore,
    max_line: int,
    error: BaseException,
) -> ShardOutcome:
    """Answer every line of a shard with ``error`` (malformed lines keep their own)."""
    lines = await _blob_io(read_shard, blobs, input_key, shard, max_line)
    slots = _parse(lines, batch, max_line)
    message = f"the model backend failed on every attempt at this request: {error}"
    failure = error if isinstance(error, OvernightError) else OvernightError(message)
    for slot in slots:
        if slot.error is None:
            slot.error = LineError(slot.line_no, message, slot.key, inline=batch.inline)
            slot.error.status, slot.error.grpc_code = failure.status, failure.grpc_code  # type: ignore[misc]
    output_key = shard_output_key(batch.id, shard.seq, token)
    succeeded = await _blob_io(_write_output, blobs, output_key, slots)
    return ShardOutcome(output_key, succeeded, len(slots) - succeeded, Usage())


async def _blob_io(fn: Callable[..., T], *args: Any) -> T:
    """Run blob I/O in a thread; an ``OSError`` becomes ``StorageFull`` or ``BlobError``.

    So the worker can tell the blob storage failing (wait it out) from a backend
    raising ``OSError`` (a failed attempt).
    """
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFull(f"the disk is full: {exc}") from exc
        raise BlobError(f"blob storage failed: {exc}") from exc


def _write_output(blobs: BlobStore, key: str, slots: list[_Slot]) -> int:
    succeeded = 0
    writer = blobs.open_write(key)
    try:
        buf = bytearray()
        for slot in slots:
            line: dict[str, Any] = {"key": slot.key}
            if slot.body is not None:
                line["response"] = slot.body
                succeeded += 1
            else:
                err = slot.error or OvernightError("no result was produced for this request")
                line["error"] = {**err.to_status(), "details": []}
            if slot.metadata is not None:
                line["metadata"] = slot.metadata
            buf += orjson.dumps(line)
            buf += b"\n"
            if len(buf) > 1 << 20:
                writer.write(bytes(buf))
                buf.clear()
        writer.write(bytes(buf))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return succeeded
