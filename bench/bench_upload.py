"""Upload throughput and server memory for the resumable upload protocol.

Target: the unmodified ``google-genai`` SDK uploads a 1 GB file to ``overnight serve``
on loopback at ≥ 100 MB/s, and the server's resident memory grows by < 100 MB (the
body is streamed to disk, never held whole).

The server is a real ``overnight serve`` subprocess; its RSS is sampled every 20 ms
during the upload (psutil if installed, else ``/proc/<pid>/status``).

    .venv/bin/python bench/bench_upload.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

CONFIG = '[models.echo]\nbackend = "fake"\n'


def ensure_input(path: Path, size_mb: int) -> int:
    target = size_mb * 1024 * 1024
    if path.exists() and path.stat().st_size == target:
        return target
    line = (
        b'{"key": "k", "request": {"contents": [{"parts": [{"text": "' + b"x" * 180 + b'"}]}]}}\n'
    )
    block = line * (4 * 1024 * 1024 // len(line))
    with path.open("wb") as f:
        written = 0
        while written < target:
            piece = block[: target - written]
            f.write(piece)
            written += len(piece)
    return target


def rss_bytes(pid: int) -> int:
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status") from None


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_bytes(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "overnight.toml").write_text(CONFIG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight.cli.main", "serve", "--port", str(port), "-d", "data"],
        cwd=workdir,
        stdout=(workdir / "serve.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"overnight serve did not start:\n{(workdir / 'serve.log').read_text()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--input", type=Path, help="reuse this scratch input file")
    args = parser.parse_args()

    for var in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE"):
        os.environ.pop(var, None)
    from google import genai
    from google.genai import types

    scratch = Path(tempfile.mkdtemp(prefix="overnight-upload-"))
    src = args.input or Path(tempfile.gettempdir()) / f"overnight-bench-upload-{args.size_mb}.jsonl"
    size = ensure_input(src, args.size_mb)
    proc, base = start_server(scratch / "serve")
    try:
        client = genai.Client(api_key="bench", http_options={"base_url": base})
        config = types.UploadFileConfig(mime_type="jsonl")
        warm = scratch / "warm.jsonl"
        warm.write_bytes(b"{}\n" * 1000)
        client.files.upload(file=warm, config=config)  # imports and first-request setup
        baseline = rss_bytes(proc.pid)
        sampler = RssSampler(proc.pid)
        sampler.start()
        began = time.perf_counter()
        file = client.files.upload(file=src, config=config)
        elapsed = time.perf_counter() - began
        sampler.done.set()
        sampler.join()
        assert file.size_bytes == size, file
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    mb = size / 1e6
    growth = (sampler.peak - baseline) / 2**20
    print(f"uploaded {mb:.0f} MB in {elapsed:.2f} s: {mb / elapsed:.0f} MB/s (target ≥ 100)")
    print(
        f"server RSS: {baseline / 2**20:.0f} MiB before, peak {sampler.peak / 2**20:.0f} MiB, "
        f"growth {growth:.1f} MiB (target < 100)"
    )
    ok = mb / elapsed >= 100 and growth < 100
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
