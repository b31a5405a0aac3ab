"""Admission throughput and bounded memory on a large input.

Target (issue 2): admitting a 1 GB input runs at ≥ 100 MB/s, and peak RSS stays
under 300 MB (no model weights are loaded here), whatever the file size.

The input is written once to a scratch dir (reused across runs), imported into the
blob store (streamed), then admitted by a real worker: one pass that cuts shards
and records them in the store. Each phase runs in this process, so its peak RSS is
the figure to compare with 300 MB.

    .venv/bin/python bench/bench_admission.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mb, scratch_settings
from overnight.app import build_runtime
from overnight.domain.batches import BatchKind


def ensure_input(path: Path, size_mb: int) -> int:
    target = size_mb * 1024 * 1024
    if path.exists() and path.stat().st_size >= target:
        return path.stat().st_size
    line_no = 0
    with path.open("w") as f:
        written = 0
        while written < target:
            body = {
                "contents": [
                    {
                        "role": "user",
                        "parts": [
                            {"text": f"Summarise document {line_no}: " + "lorem ipsum " * 12}
                        ],
                    }
                ]
            }
            line = json.dumps({"key": f"doc-{line_no}", "request": body}) + "\n"
            f.write(line)
            written += len(line)
            line_no += 1
    return path.stat().st_size


async def measure(src: Path, database_url: str | None) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="overnight-admit-"))
    settings = scratch_settings(
        root / "data",
        database_url=database_url,
        models={"echo": {"backend": "fake"}},
    )
    runtime = await build_runtime(settings)
    size = src.stat().st_size
    t0 = time.perf_counter()
    file = await runtime.services.files.import_path("bench", src)
    t1 = time.perf_counter()
    batch = await runtime.services.batches.create_from_file(
        "bench", model="echo", kind=BatchKind.GENERATE, file_id=file.id
    )
    worker = runtime.worker()
    await worker.step()  # exactly one unit of work: the admission of this batch
    t2 = time.perf_counter()
    batch = await runtime.services.batches.get(None, batch.id)
    shards = len(await runtime.store.queue.list_shards(batch.id))
    await runtime.close()
    assert batch.admitted, batch
    return {
        "bytes": size,
        "requests": batch.request_count,
        "shards": shards,
        "import_mb_per_s": size / 1e6 / (t1 - t0),
        "admission_mb_per_s": size / 1e6 / (t2 - t1),
        "admission_s": t2 - t1,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument(
        "--input",
        type=Path,
        default=Path(tempfile.gettempdir()) / "overnight-bench-admission.jsonl",
    )
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    ensure_input(args.input, args.size_mb)
    r = asyncio.run(measure(args.input, args.database_url))
    print(
        f"admission of {r['bytes'] / 1e6:,.0f} MB ({r['requests']:,} requests → {r['shards']:,} shards)"
    )
    print(f"  import (streamed copy into the blob store): {r['import_mb_per_s']:,.0f} MB/s")
    print(
        f"  admission: {r['admission_mb_per_s']:,.0f} MB/s in {r['admission_s']:.1f} s "
        f"(target ≥ 100 MB/s: ratio {r['admission_mb_per_s'] / 100:.2f}×)"
    )
    print(
        f"  peak RSS: {r['peak_rss_mb']:.0f} MiB (target < 300 MB: ratio {r['peak_rss_mb'] / 300:.2f} of the limit)"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
