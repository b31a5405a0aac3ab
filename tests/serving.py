"""Run a real ``overnight serve`` subprocess on loopback for acceptance tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

FAKE_MODELS = """
[models.echo]
backend = "fake"
options = { max_batch_size = 16 }
[models.slow-echo]
backend = "fake"
options = { latency_s = 0.2, max_batch_size = 4 }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(
    workdir: Path,
    *,
    config: str = FAKE_MODELS,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[str]:
    """Start ``overnight serve`` in ``workdir``; yield its base URL; stop it (SIGINT)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "overnight.toml").write_text(config)
    port = free_port()
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight.cli.main", "serve", "--port", str(port), "-d", "data"],
        cwd=workdir,
        env={**os.environ, "OVERNIGHT_ENGINE__POLL_SECONDS": "0.05", **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(
                f"overnight serve did not start:\n{(workdir / 'serve.log').read_text()}"
            )
        time.sleep(0.1)
    try:
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("overnight serve did not stop within 30 s of SIGINT") from None
        log.close()
