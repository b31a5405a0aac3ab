"""Upstream throughput: does the traffic layer keep a slow server saturated?

Target (issue 4): with ``max_concurrency = 32`` against an upstream that takes 50 ms a
call, at least 90% of 32 / 0.05 = 640 requests/s. The upstream is the fake
(``overnight.testing.upstream``) in its own process; the path measured is the whole of
``overnight run`` minus process start-up, through the ``openai`` backend.

    .venv/bin/python bench/bench_upstream.py --requests 6000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console

from _common import peak_rss_mb, scratch_settings
from overnight.app import build_runtime
from overnight.cli.run import RunRequest, run_file
from overnight.testing.upstream import FakeUpstream


def write_input(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            body = {
                "contents": [{"role": "user", "parts": [{"text": f"Summarize item {i}."}]}],
                "generationConfig": {"maxOutputTokens": 16},
            }
            f.write(json.dumps({"key": f"r{i}", "request": body}) + "\n")


async def measure(n: int, url: str, concurrency: int, backend: str) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="overnight-bench-"))
    src = root / "in.jsonl"
    write_input(src, n)
    settings = scratch_settings(
        root / "data",
        models={
            "up": {
                "backend": backend,
                "base_url": f"{url}/v1" if backend == "openai" else url,
                "max_concurrency": concurrency,
            }
        },
        engine={"shard_size": 512},
    )
    runtime = await build_runtime(settings)
    started = time.perf_counter()
    summary = await run_file(
        runtime,
        RunRequest(src, root / "out.jsonl", "up", None, restart=False, show_progress=False),
        Console(quiet=True),
    )
    wall = time.perf_counter() - started
    await runtime.close()
    assert summary.batch.succeeded_count == n, summary.batch
    return {"requests": n, "wall_s": wall, "requests_per_s": n / wall, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05, help="upstream seconds per call")
    parser.add_argument("--backend", choices=["openai", "gemini"], default="openai")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with FakeUpstream.spawn(latency_s=args.latency, max_concurrency=args.concurrency) as up:
        result = asyncio.run(measure(args.requests, up.url, args.concurrency, args.backend))
        stats = up.stats()
    ceiling = args.concurrency / args.latency
    ratio = result["requests_per_s"] / ceiling
    result.update(ceiling=ceiling, ratio=ratio, max_in_flight=stats.max_in_flight)
    print(
        f"upstream throughput ({args.backend} backend, max_concurrency {args.concurrency}, "
        f"{args.latency * 1000:.0f} ms upstream): {args.requests} requests in {result['wall_s']:.2f} s"
    )
    print(
        f"  {result['requests_per_s']:,.0f} requests/s = {ratio:.1%} of the {ceiling:,.0f}/s "
        f"ceiling (target ≥ 90%: {'PASS' if ratio >= 0.9 else 'FAIL'})"
    )
    print(
        f"  upstream saw at most {stats.max_in_flight} calls in flight; "
        f"violations {stats.violations or 'none'}"
    )
    print(f"  peak RSS {result['peak_rss_mb']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
