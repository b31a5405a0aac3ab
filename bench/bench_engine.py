"""Engine overhead: requests/s end to end on the fake backend.

Target (issue 2): at least 5,000 requests/s. The path measured is the whole of
``overnight run`` minus process start-up: import the input into the blob store,
admission, shard leasing and execution, output writing, commits, finalize, and the
copy of the results to the output path.

    .venv/bin/python bench/bench_engine.py --requests 100000
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


def write_input(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            body = {
                "contents": [
                    {
                        "role": "user",
                        "parts": [{"text": f"Classify review {i}: great value, would buy again."}],
                    }
                ],
                "generationConfig": {"maxOutputTokens": 16},
            }
            f.write(json.dumps({"key": f"r{i}", "request": body}) + "\n")


async def measure(n: int, database_url: str | None) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="overnight-bench-"))
    src = root / "in.jsonl"
    write_input(src, n)
    settings = scratch_settings(
        root / "data",
        database_url=database_url,
        models={
            "echo": {"backend": "fake", "max_batch_size": 64, "options": {"max_batch_size": 64}}
        },
        engine={"shard_size": 1000},
    )
    runtime = await build_runtime(settings)
    started = time.perf_counter()
    summary = await run_file(
        runtime,
        RunRequest(src, root / "out.jsonl", "echo", None, restart=False, show_progress=False),
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
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a scratch dir")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.database_url))
    target = 5000
    print(
        f"engine overhead (fake backend): {result['requests']} requests in {result['wall_s']:.2f} s"
    )
    print(
        f"  {result['requests_per_s']:,.0f} requests/s  (target ≥ {target:,}: "
        f"{'PASS' if result['requests_per_s'] >= target else 'FAIL'}, ratio {result['requests_per_s'] / target:.2f}×)"
    )
    print(f"  peak RSS {result['peak_rss_mb']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
