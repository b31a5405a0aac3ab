"""A 10-second PostgreSQL outage in the middle of a 10,000-request batch.

``overnight serve`` and two ``overnight worker`` processes share one PostgreSQL
database, reached through a TCP proxy that cuts every connection and refuses new
ones for 10 s. Nobody is restarted: the batch succeeds, every key answered exactly
once, and ``/healthz`` (the server's, and a worker's ``--health-port``) says
degraded during the outage and ok after.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from tests.faults import TcpProxy
from tests.helpers import read_jsonl, request, write_jsonl
from tests.serving import free_port, running_server

N = 10_000
MODELS = """
[engine]
shard_size = 100
[models.slow]
backend = "fake"
options = { latency_s = 0.1, max_batch_size = 25 }
"""


def overnight(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overnight.cli.main", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def running_worker(workdir: Path, name: str, health_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``overnight worker`` in ``workdir``; stopped with SIGTERM (it drains)."""
    log = (workdir / f"{name}.log").open("w")
    health = ["--health-port", str(health_port), "--health-host", "127.0.0.1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight.cli.main", "worker", "-d", "data", *health],
        cwd=workdir,
        env={**os.environ, "OVERNIGHT_ENGINE__POLL_SECONDS": "0.05"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{name} did not stop within 30 s of SIGTERM") from None
        finally:
            log.close()
        assert code == 0, f"{name} exited {code}:\n{(workdir / f'{name}.log').read_text()}"


def health(url: str) -> tuple[int, str]:
    try:
        res = httpx.get(url, timeout=2)
    except httpx.HTTPError as exc:
        return 0, str(exc)
    return res.status_code, res.json().get("reason", res.json()["status"])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.postgres
def test_batch_survives_a_ten_second_database_outage(tmp_path: Path, pg_url: str) -> None:
    proxy = TcpProxy.to_url(pg_url)
    workdir = tmp_path / "site"
    config = f"database_url = {proxy.url(pg_url)!r}\n{MODELS}"
    workdir.mkdir()
    write_jsonl(
        workdir / "in.jsonl",
        ({"key": f"k{i}", "request": request(f"n {i}")} for i in range(N)),
    )
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        stack.callback(proxy.close)
        base = stack.enter_context(running_server(workdir, config=config))
        for i, port in enumerate(ports):
            stack.enter_context(running_worker(workdir, f"worker{i}", port))
        probes = [f"{base}/healthz", *(f"http://127.0.0.1:{p}/healthz" for p in ports)]
        wait_for(lambda: all(health(p)[0] == 200 for p in probes), 60, "workers to start")

        submitted = overnight(
            "submit", "in.jsonl", "--model", "slow", "--server", base, cwd=workdir
        )
        assert submitted.returncode == 0, submitted.stderr
        name = submitted.stdout.strip().splitlines()[-1]

        def done_count() -> int:
            stats = httpx.get(f"{base}/v1beta/{name}").json()["metadata"].get("batchStats", {})
            return int(stats.get("successfulRequestCount", 0))

        wait_for(lambda: done_count() >= N // 10, 120, "a tenth of the batch")
        assert done_count() < N // 2, "the batch ran too fast to be cut in the middle"
        seen: dict[str, set[int]] = {p: set() for p in probes}
        with proxy.outage(10):
            time.sleep(3)  # the workers notice at their next store call
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                for probe in probes:
                    code, reason = health(probe)
                    seen[probe].add(code)
                    if code == 503:
                        assert "cannot use the database" in reason, reason
                time.sleep(0.2)
        assert all(503 in codes for codes in seen.values()), seen

        wait_for(lambda: all(health(p)[0] == 200 for p in probes), 90, "health to recover")
        op = {}

        def finished() -> bool:
            nonlocal op
            op = httpx.get(f"{base}/v1beta/{name}").json()
            return bool(op.get("done"))

        wait_for(finished, 180, "the batch to finish")
        meta = op["metadata"]
        assert meta["state"] == "BATCH_STATE_SUCCEEDED", op
        assert meta["batchStats"]["successfulRequestCount"] == str(N), meta["batchStats"]
        assert "failedRequestCount" not in meta["batchStats"] or (
            meta["batchStats"]["failedRequestCount"] == "0"
        )
        got = overnight("results", name, "-o", "out.jsonl", "--server", base, cwd=workdir)
        assert got.returncode == 0, got.stderr
        keys = [line["key"] for line in read_jsonl(workdir / "out.jsonl")]
        assert sorted(keys) == sorted(f"k{i}" for i in range(N))  # each exactly once
        assert proxy.accepted > 0
        logs = "".join((workdir / f"worker{i}.log").read_text() for i in range(2))
        assert "degraded" in logs and "recovered after" in logs


def test_worker_exits_non_zero_only_when_it_cannot_start(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    (tmp_path / "overnight.toml").write_text(
        f'database_url = "postgresql://postgres@127.0.0.1:{port}/none"\n'
    )
    res = overnight("worker", "-d", "data", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "error:" in res.stderr and str(port) in res.stderr

    (tmp_path / "fresh").mkdir()  # SQLite: starts fine, but its health port is taken
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        args = ("--health-port", str(busy), "--health-host", "127.0.0.1")
        res = overnight("worker", "-d", "data", *args, cwd=tmp_path / "fresh")
    assert res.returncode == 2, res.stderr
    assert f"cannot serve health checks on 127.0.0.1:{busy}" in res.stderr
