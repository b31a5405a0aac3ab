"""Small helpers shared by tests (no fixtures here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overnight.app import Runtime
from overnight.domain.batches import Batch
from overnight.engine.worker import Worker, WorkerScope


def request(text: str, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return body


def write_jsonl(path: Path, lines: Iterable[Any]) -> Path:
    with path.open("w") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line))
            f.write("\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def drive(
    runtime: Runtime, batch_id: str, *, workers: int = 1, timeout: float = 60, **kwargs: Any
) -> Batch:
    """Run workers scoped to one batch until it is finalized; return the batch."""
    stop = asyncio.Event()
    pool = [runtime.worker(WorkerScope(batch_id=batch_id), **kwargs) for _ in range(workers)]
    tasks = [asyncio.create_task(w.run(stop)) for w in pool]
    deadline = time.monotonic() + timeout
    try:
        while True:
            batch = await runtime.services.batches.get(None, batch_id)
            if batch.finalized:
                return batch
            for task in tasks:
                if task.done():
                    task.result()  # surface a crashed worker
            if time.monotonic() > deadline:
                raise AssertionError(f"batch {batch_id} not finished in {timeout}s: {batch}")
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def output_lines(runtime: Runtime, batch: Batch) -> list[dict[str, Any]]:
    assert batch.output_file_id, f"batch has no output: {batch}"
    file = await runtime.services.files.get(None, batch.output_file_id)
    return read_jsonl(runtime.blobs.path(file.blob_key))


def new_worker(runtime: Runtime, batch_id: str, **kwargs: Any) -> Worker:
    return runtime.worker(WorkerScope(batch_id=batch_id), **kwargs)


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"20m"``) mounted at ``path``: a small disk that really fills.

    Skips the test, saying why, where mounting is not permitted (not root, no
    CAP_SYS_ADMIN, no ``mount`` command).
    """
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a full-disk test mounts a small tmpfs, which needs root")
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("a full-disk test mounts a small tmpfs, and there is no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
