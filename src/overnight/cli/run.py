"""``overnight run``: process one JSONL file locally, resumably.

``runtime.services.runs`` finds the batch of an interrupted run of the same input,
model and kind, or imports the input and creates one; this module drives it to the
end with a progress bar and writes the output. Committed shards are never redone.
Leases held by a killed run are freed at once (their process is gone), so a rerun
does not wait for them to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from rich.console import Console
from rich.markup import escape

from overnight.app import Runtime
from overnight.cli.progress import RunProgress
from overnight.domain.batches import Batch, BatchKind, BatchState
from overnight.engine.worker import WorkerScope
from overnight.errors import FailedPrecondition, OvernightError
from overnight.services.container import ServiceSet


@dataclass(frozen=True)
class RunRequest:
    input: Path
    output: Path
    model: str | None
    kind: BatchKind | None
    restart: bool
    show_progress: bool


@dataclass(frozen=True)
class RunSummary:
    batch: Batch
    wall_s: float
    output: Path
    processed: int = 0  # requests this invocation ran (the rest were done before a resume)
    generated_tokens: int = 0
    load_s: float = 0.0  # model start-up, excluded from the rates


async def run_file(runtime: Runtime, req: RunRequest, console: Console) -> RunSummary:
    """Run (or resume) ``req.input`` to completion and write ``req.output``."""
    started = time.monotonic()
    services = runtime.services
    run = await services.runs.resume_or_create(
        req.input, model=req.model, kind=req.kind, restart=req.restart
    )
    batch = run.batch
    if run.resumed:
        console.print(
            f"Resuming batch {batch.id}: {batch.done_count} of {batch.request_count or '?'} "
            "requests already done."
        )
    processed = generated = 0
    load_s = 0.0
    if not batch.finalized:
        if not runtime.pool.loaded(batch.model_resolved):
            loading = time.monotonic()
            label = f"Loading model {batch.model_resolved}"
            with console.status(f"{label} (the first run converts and caches weights)…") as spinner:
                await runtime.pool.get(
                    batch.model_resolved,
                    on_status=lambda message: spinner.update(f"{label}: {message}…"),
                )
            load_s = time.monotonic() - loading
        with RunProgress(console, enabled=req.show_progress) as progress:
            finalized = asyncio.Event()
            worker = runtime.worker(
                WorkerScope(batch_id=batch.id),
                on_progress=progress.on_progress,
                on_finalized=lambda _: finalized.set(),
            )
            await worker.reap()  # free leases a killed run left behind
            base_done = batch.done_count
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                batch = await _follow(services, batch, task, finalized, progress, base_done)
            finally:
                stop.set()
                await task
            processed, generated = progress.requests, progress.tokens
    if batch.output_file_id is None:
        raise FailedPrecondition(
            f"batch {batch.id} ended {batch.state.value} without results: {batch.error or 'no reason recorded'}"
        )
    output = await services.files.get(batch.tenant, batch.output_file_id)
    await services.files.copy_to(output, req.output)
    if batch.state is not BatchState.SUCCEEDED:
        raise FailedPrecondition(
            f"batch {batch.id} ended {batch.state.value}: {batch.error}; partial results are in {req.output}"
        )
    wall = time.monotonic() - started
    return RunSummary(batch, wall, req.output, processed, generated, load_s)


async def _follow(
    services: ServiceSet,
    batch: Batch,
    task: asyncio.Task[None],
    finalized: asyncio.Event,
    progress: RunProgress,
    base_done: int,
) -> Batch:
    """Draw progress until the batch is finalized (or the worker stops); return it.

    The worker counts progress in memory and says when it has finalized the batch, so
    this reads the store only to learn the request count after admission and, once
    every two seconds, to notice a batch finalized elsewhere (another worker, a cancel).
    """
    last_read = -math.inf
    while True:
        if finalized.is_set() or task.done() or time.monotonic() - last_read >= 2.0:
            finalized.clear()
            batch = await services.batches.get(None, batch.id)
            last_read = time.monotonic() if batch.admitted else -math.inf
            if batch.finalized or task.done():
                progress.update(done=batch.done_count, total=batch.request_count)
                return batch
        total = batch.request_count if batch.admitted else None
        progress.update(done=base_done + progress.requests, total=total)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finalized.wait(), 0.25)


def first_errors(path: Path, limit: int = 3) -> list[str]:
    """The first few error messages in a results file, for the summary."""
    found: list[str] = []
    with path.open("rb") as f:
        for raw in f:
            if b'"error"' not in raw:
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if "error" in line:
                found.append(f"{line.get('key')}: {line['error'].get('message')}")
                if len(found) >= limit:
                    break
    return found


def print_summary(console: Console, summary: RunSummary) -> None:
    b = summary.batch
    work = max(summary.wall_s - summary.load_s, 1e-9)
    console.print(
        f"[green]Done[/]: {b.succeeded_count} succeeded, "
        f"{'[red]' if b.failed_count else ''}{b.failed_count} failed{'[/]' if b.failed_count else ''} "
        f"of {b.request_count} requests"
    )
    console.print(
        f"Tokens: {b.usage.prompt_tokens} prompt + {b.usage.candidates_tokens} output "
        f"= {b.usage.total_tokens} total"
    )
    loading = f" (model start-up {summary.load_s:.1f} s)" if summary.load_s >= 0.05 else ""
    console.print(
        f"Wall time: {summary.wall_s:.1f} s{loading}; this run processed {summary.processed} "
        f"requests in {work:.1f} s ({summary.processed / work:.1f} req/s, "
        f"{summary.generated_tokens / work:.1f} output tok/s)"
    )
    for message in first_errors(summary.output):
        console.print(f"  [red]error[/] {escape(message)}")
    console.print(f"Results: {summary.output}")


__all__ = ["OvernightError", "RunRequest", "print_summary", "run_file"]
