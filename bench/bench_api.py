"""Control-call latency and a 1,000-request inline batch through the real SDK.

Targets:
- (a) with 1,000 batches in the store, ``batches.get`` and ``files.get`` over loopback
  HTTP answer with p50 < 5 ms (measured with a keep-alive httpx client, and through the
  ``google-genai`` SDK, which adds its own request building and response parsing);
- (b) an inline batch of 1,000 requests on the fake backend, created, polled to
  SUCCEEDED and read back through the SDK, end to end in < 2 s.

Both phases run a real ``overnight serve`` subprocess. Phase (a) runs it without
embedded workers so that the 1,000 batches stay PENDING and nothing else competes.

    .venv/bin/python bench/bench_api.py [--batches 1000] [--requests 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

CONFIG = """
[models.echo]
backend = "fake"
options = { max_batch_size = 64 }
[aliases]
"gemini-*" = "echo"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "overnight.toml").write_text(CONFIG)
    port = free_port()
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight.cli.main", "serve", "--port", str(port), "-d", "data"],
        cwd=workdir,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server did not start:\n{(workdir / 'serve.log').read_text()}")
        time.sleep(0.1)
    try:
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        log.close()


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"p50 {statistics.median(ms):6.2f} ms   p95 {p95:6.2f} ms   (n={len(ms)})"


def timed(fn: Callable[[], object], n: int) -> list[float]:
    for _ in range(20):  # warm up connections and caches
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def control_calls(workdir: Path, batches: int) -> None:
    from google import genai

    env = {"OVERNIGHT_SERVER__EMBEDDED_WORKERS": "false"}
    with server(workdir, env) as base, httpx.Client(base_url=base) as http:
        sdk = genai.Client(api_key="x", http_options={"base_url": base})
        upload_path = workdir / "in.jsonl"
        upload_path.write_text('{"key": "k", "request": {"contents": "hi"}}\n')
        uploaded = sdk.files.upload(file=str(upload_path), config={"mime_type": "jsonl"})
        body = {
            "batch": {
                "displayName": "bench",
                "inputConfig": {"requests": {"requests": [{"request": {"contents": "hi"}}]}},
            }
        }
        start = time.perf_counter()
        names = []
        for _ in range(batches):
            response = http.post("/v1/models/echo:batchGenerateContent", json=body)
            response.raise_for_status()
            names.append(response.json()["name"])
        created = time.perf_counter() - start
        print(
            f"created {batches} batches in {created:.2f} s ({created / batches * 1000:.2f} ms each)"
        )

        n = len(names)
        cycle = iter(names * 2)
        print("batches.get  httpx:", percentiles(timed(lambda: http.get(f"/v1/{next(cycle)}"), n)))
        cycle = iter(names * 2)
        print(
            "batches.get  SDK:  ",
            percentiles(timed(lambda: sdk.batches.get(name=next(cycle)), n)),
        )
        print(
            "files.get    httpx:",
            percentiles(timed(lambda: http.get(f"/v1/{uploaded.name}"), n)),
        )
        print(
            "files.get    SDK:  ",
            percentiles(timed(lambda: sdk.files.get(name=uploaded.name), n)),
        )
        print(
            "batches.list SDK (pageSize 50):",
            percentiles(timed(lambda: sdk.batches.list(config={"page_size": 50}), 100)),
        )


def inline_batch(workdir: Path, requests: int) -> float:
    from google import genai

    env = {"OVERNIGHT_ENGINE__POLL_SECONDS": "0.01"}
    with server(workdir, env) as base:
        sdk = genai.Client(api_key="x", http_options={"base_url": base})
        src = [
            {"contents": [{"parts": [{"text": f"question number {i}"}], "role": "user"}]}
            for i in range(requests)
        ]
        start = time.perf_counter()
        job = sdk.batches.create(model="models/gemini-2.5-flash", src=src)
        while not job.done:
            time.sleep(0.01)
            job = sdk.batches.get(name=job.name)
        texts = [r.response.text for r in job.dest.inlined_responses if r.response]
        elapsed = time.perf_counter() - start
        assert job.state.name == "JOB_STATE_SUCCEEDED", job.state
        assert len(texts) == requests and texts[-1] == f"echo: question number {requests - 1}"
        print(
            f"inline batch of {requests} requests: create → SUCCEEDED → results in "
            f"{elapsed:.2f} s (target < 2 s)"
        )
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        control_calls(Path(tmp) / "control", args.batches)
        inline_batch(Path(tmp) / "inline", args.requests)


if __name__ == "__main__":
    main()
