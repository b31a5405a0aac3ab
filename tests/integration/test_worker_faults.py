"""Worker liveness under faults: each fault hits while another tenant's batch runs.

The fault is contained (its batch FAILED with a message, or waited out), the log
names the batch, the other batch finishes, and no worker is restarted: one
``Worker.run`` serves the whole test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import fake_settings
from tests.faults import TcpProxy
from tests.helpers import mounted_tmpfs, output_lines, request, write_jsonl

from overnight.app import Runtime, build_runtime
from overnight.backends.fake import FakeBackend
from overnight.config import Settings
from overnight.domain.batches import Batch, BatchKind, BatchState
from overnight.domain.requests import GenerateRequest
from overnight.engine.finalize import output_file_id
from overnight.engine.worker import Worker
from overnight.errors import BackendError

SLOW = {"latency_s": 0.03, "max_batch_size": 2}


def settings_for(tmp_path: Path, database_url: str, **engine: Any) -> Settings:
    engine = {"shard_size": 2, "backoff_seconds": 0.1, "backoff_max_seconds": 0.5, **engine}
    settings = fake_settings(tmp_path, database_url, **engine)
    settings.models["slow"] = settings.models["echo"].model_copy(update={"options": SLOW})
    return settings


async def submit(runtime: Runtime, tenant: str, name: str, n: int, model: str = "slow") -> Batch:
    src = write_jsonl(
        runtime.settings.data_dir.parent / f"{name}.jsonl",
        ({"key": f"{name}-{i}", "request": request(f"{name} {i}")} for i in range(n)),
    )
    file = await runtime.services.files.import_path(tenant, src)
    return await runtime.services.batches.create_from_file(
        tenant, model=model, kind=BatchKind.GENERATE, file_id=file.id
    )


@asynccontextmanager
async def working(runtime: Runtime, loops: int = 2) -> AsyncIterator[Worker]:
    """One unscoped worker for the whole test; it must still be running at the end."""
    stop = asyncio.Event()
    worker = runtime.worker()
    task = asyncio.create_task(worker.run(stop, concurrency=loops))
    try:
        yield worker
        assert not task.done(), "the worker stopped on its own"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(check: Callable[[], Any], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.02)


async def finished(runtime: Runtime, *batches: Batch, timeout: float = 60) -> list[Batch]:
    async def all_final() -> bool:
        return all([(await runtime.services.batches.get(None, b.id)).finalized for b in batches])

    await until(all_final, timeout, f"{[b.name for b in batches]} to finish")
    return [await runtime.services.batches.get(None, b.id) for b in batches]


async def progressed(runtime: Runtime, batch: Batch, at_least: int) -> None:
    async def check() -> bool:
        return (await runtime.services.batches.get(None, batch.id)).done_count >= at_least

    await until(check, 30, f"{batch.name} to answer {at_least} requests")


async def assert_every_key_once(runtime: Runtime, batch: Batch, name: str, n: int) -> None:
    assert batch.state is BatchState.SUCCEEDED, batch
    assert (batch.succeeded_count, batch.failed_count) == (n, 0)
    keys = [line["key"] for line in await output_lines(runtime, batch)]
    assert keys == [f"{name}-{i}" for i in range(n)]


# ------------------------------------------------------------ batch-scoped faults


def test_input_deleted_mid_run_fails_only_that_batch(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        runtime = await build_runtime(settings_for(tmp_path, database_url))
        poisoned = await submit(runtime, "alice", "a", 60)
        other = await submit(runtime, "bob", "b", 20)
        async with working(runtime):
            await progressed(runtime, poisoned, 4)
            input_file = await runtime.services.files.get("alice", poisoned.input_file_id or "")
            runtime.blobs.delete(input_file.blob_key)  # behind Overnight's back
            poisoned, other = await finished(runtime, poisoned, other)
        assert poisoned.state is BatchState.FAILED
        assert poisoned.error is not None
        assert f"the input file files/{input_file.id} was deleted while the batch ran" in (
            poisoned.error
        )
        assert "create the batch again from a new upload" in poisoned.error
        assert 4 <= poisoned.succeeded_count < 60  # the finished shards are kept
        await assert_every_key_once(runtime, other, "b", 20)
        failing = [r for r in caplog.records if "failing the batch" in r.getMessage()]
        assert failing and poisoned.id in failing[0].getMessage()
        await runtime.close()

    asyncio.run(go())


def test_finalize_failure_fails_only_that_batch(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        runtime = await build_runtime(settings_for(tmp_path, database_url))
        poisoned = await submit(runtime, "alice", "a", 6, model="echo")
        other = await submit(runtime, "bob", "b", 6, model="echo")
        # A file row already holds the id the responses file is to get.
        some = await runtime.services.files.get("alice", poisoned.input_file_id or "")
        squatter = dataclasses.replace(some, id=output_file_id(poisoned.id))
        await runtime.store.files.create_file(squatter)
        async with working(runtime):
            poisoned, other = await finished(runtime, poisoned, other)
            late = await submit(runtime, "bob", "c", 4, model="echo")
            (late,) = await finished(runtime, late)
        assert poisoned.state is BatchState.FAILED and poisoned.output_file_id is None
        assert poisoned.error is not None and "already exists" in poisoned.error
        assert "create the batch again" in poisoned.error
        await assert_every_key_once(runtime, other, "b", 6)
        await assert_every_key_once(runtime, late, "c", 4)
        failing = [r for r in caplog.records if "failing the batch" in r.getMessage()]
        assert failing and f"finalization of batches/{poisoned.id}" in failing[0].getMessage()
        await runtime.close()

    asyncio.run(go())


class Exploding:
    """A backend whose generate raises a plain RuntimeError: a bug, not a backend error."""

    def __init__(self) -> None:
        self.inner = FakeBackend("boom")
        self.capabilities = self.inner.capabilities

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[object]:
        raise RuntimeError("the kernel fell over")


def test_unexpected_error_is_logged_contained_and_others_run(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        settings = settings_for(tmp_path, database_url, max_shard_attempts=2)
        settings.models["boom"] = settings.models["echo"]
        runtime = await build_runtime(settings)
        runtime.pool.add("boom", Exploding())  # type: ignore[arg-type]
        broken = await submit(runtime, "alice", "a", 3, model="boom")
        other = await submit(runtime, "bob", "b", 10, model="echo")
        async with working(runtime):
            broken, other = await finished(runtime, broken, other)
        await assert_every_key_once(runtime, other, "b", 10)
        # Each shard failed twice (max_shard_attempts), then its lines got the error.
        assert broken.state is BatchState.SUCCEEDED
        assert (broken.succeeded_count, broken.failed_count) == (0, 3)
        lines = await output_lines(runtime, broken)
        assert all("the kernel fell over" in line["error"]["message"] for line in lines)
        assert [s.attempts for s in await runtime.store.queue.list_shards(broken.id)] == [2, 2]
        logged = [r for r in caplog.records if r.exc_info and broken.id in r.getMessage()]
        assert logged, "the error was not logged with its batch"
        assert logged[0].getMessage().startswith(f"batches/{broken.id} shard ")
        assert "RuntimeError" in caplog.text
        await runtime.close()

    asyncio.run(go())


class FailsOnce:
    """The first call fails with a non-transient backend error; later calls work."""

    def __init__(self) -> None:
        self.inner = FakeBackend("echo")
        self.capabilities = self.inner.capabilities
        self.failed = False

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[object]:
        if not self.failed:
            self.failed = True
            raise BackendError("out of memory, once")
        return list(await self.inner.generate(requests))


def test_leases_lost_to_crashes_are_not_failed_attempts(tmp_path: Path, database_url: str) -> None:
    async def go() -> None:
        runtime = await build_runtime(settings_for(tmp_path, database_url, max_shard_attempts=3))
        batch = await submit(runtime, "alice", "a", 2, model="echo")
        assert await runtime.worker().step()  # admission
        for crash in range(3):  # three workers on other hosts die holding the shard
            now = time.time()
            owner = f"elsewhere:{crash}:x"
            assert await runtime.store.queue.lease_shard(
                owner, f"t{crash}", now=now, lease_until=now + 60
            )
            await runtime.store.queue.release_owner(owner)
        backend = FailsOnce()
        runtime.pool.add("echo", backend)  # type: ignore[arg-type]
        async with working(runtime):
            (batch,) = await finished(runtime, batch)
        assert backend.failed
        await assert_every_key_once(runtime, batch, "a", 2)  # retried, not answered with errors
        assert [s.attempts for s in await runtime.store.queue.list_shards(batch.id)] == [1]
        await runtime.close()

    asyncio.run(go())


def test_a_loop_that_dies_is_restarted(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        runtime = await build_runtime(settings_for(tmp_path, database_url))
        batch = await submit(runtime, "alice", "a", 4, model="echo")
        stop = asyncio.Event()
        worker = runtime.worker()
        real_loop = worker._loop
        deaths = 0

        async def dies_once(stop: asyncio.Event) -> None:
            nonlocal deaths
            if deaths == 0:
                deaths += 1
                raise RuntimeError("a bug in the loop itself")
            await real_loop(stop)

        worker._loop = dies_once  # type: ignore[method-assign]
        task = asyncio.create_task(worker.run(stop, concurrency=1))
        (batch,) = await finished(runtime, batch)
        assert not task.done()
        stop.set()
        await task
        await assert_every_key_once(runtime, batch, "a", 4)
        assert "worker loop 0 of worker" in caplog.text and "died; restarting" in caplog.text
        assert "a bug in the loop itself" in caplog.text
        await runtime.close()

    asyncio.run(go())


# ------------------------------------------------------------- infrastructure


async def watch_health(worker: Worker, seen: list[str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        report = worker.health.report()
        seen.append(report["status"] if report["status"] == "ok" else report["reason"])
        await asyncio.sleep(0.05)


def test_database_outage_is_waited_out(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: connections cut and refused for 3 s. SQLite: the database locked
    by another process for 3 s. The batch succeeds, each key once, no restart."""
    on_sqlite = database_url.startswith("sqlite")
    proxy = None if on_sqlite else TcpProxy.to_url(database_url)
    url = database_url if proxy is None else proxy.url(database_url)

    async def go() -> None:
        runtime = await build_runtime(settings_for(tmp_path, url, stall_seconds=1.0))
        first = await submit(runtime, "alice", "a", 100)
        second = await submit(runtime, "bob", "b", 20)
        seen: list[str] = []
        watching = asyncio.Event()
        async with working(runtime) as worker:
            watcher = asyncio.create_task(watch_health(worker, seen, watching))
            await progressed(runtime, first, 6)
            await asyncio.to_thread(outage, 3.0)
            await until(lambda: ok(worker), 20, "the workers to recover")
            first, second = await finished(runtime, first, second)
            watching.set()
            await watcher
        await assert_every_key_once(runtime, first, "a", 100)
        await assert_every_key_once(runtime, second, "b", 20)
        degraded = [s for s in seen if s != "ok"]
        assert degraded, "health never said degraded during the outage"
        if on_sqlite:
            assert any("a database call has been waiting for" in s for s in degraded), degraded
        else:
            assert any("workers cannot use the database since" in s for s in degraded), degraded
            assert "retrying in" in caplog.text
        assert seen[-1] == "ok"
        assert "degraded:" in caplog.text and "recovered after" in caplog.text
        await runtime.close()

    async def ok(worker: Worker) -> bool:
        return bool(worker.health.report()["status"] == "ok")

    def outage(seconds: float) -> None:
        if proxy is not None:
            with proxy.outage(seconds):
                pass
            return
        path = database_url.removeprefix("sqlite:///")
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        locker.execute("COMMIT")
        locker.close()

    try:
        asyncio.run(go())
    finally:
        if proxy is not None:
            assert proxy.accepted > 0
            proxy.close()


def test_full_disk_is_waited_out(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The blob directory (a 2 MiB tmpfs) fills up mid-run and is freed again."""
    with mounted_tmpfs(tmp_path / "blobs", "2m") as blob_dir:

        async def go() -> None:
            settings = settings_for(tmp_path, database_url)
            settings.blob_url = str(blob_dir)
            runtime = await build_runtime(settings)
            first = await submit(runtime, "alice", "a", 60)
            second = await submit(runtime, "bob", "b", 10)
            seen: list[str] = []
            watching = asyncio.Event()
            async with working(runtime) as worker:
                watcher = asyncio.create_task(watch_health(worker, seen, watching))
                await progressed(runtime, first, 6)
                filler = blob_dir / "filler"
                await asyncio.to_thread(fill, filler)
                await until(lambda: is_full(worker), 20, "a worker to hit the full disk")
                await asyncio.sleep(0.5)  # several retries, all failing
                assert "cannot use the blob storage" in worker.health.report()["reason"]
                filler.unlink()
                first, second = await finished(runtime, first, second)
                watching.set()
                await watcher
            await assert_every_key_once(runtime, first, "a", 60)
            await assert_every_key_once(runtime, second, "b", 10)
            assert seen[-1] == "ok"
            assert "retrying in" in caplog.text
            await runtime.close()

        async def is_full(worker: Worker) -> bool:
            return worker.health.outage_since is not None

        asyncio.run(go())


def fill(path: Path) -> None:
    """Write zeros until the disk is full."""
    with path.open("wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):  # down to the last byte
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


@pytest.fixture(autouse=True)
def _log_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="overnight")
