"""Run every benchmark in turn (each in its own process, for a clean peak RSS).

    .venv/bin/python bench/run_all.py            # or: make bench

Results are printed; docs/benchmarks.md records one run and the ratios to targets.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = [
    ["bench_engine.py", "--requests", "100000"],
    ["bench_admission.py", "--size-mb", "1024"],
    ["bench_upload.py", "--size-mb", "1024"],
    ["bench_api.py"],
    ["bench_generate.py"],
    ["bench_contention.py"],
    ["bench_structured.py"],
    ["bench_loops.py"],
    ["bench_upstream.py", "--requests", "20000"],
    ["race_vllm.py"],
]


def main() -> int:
    failed = 0
    for script, *args in BENCHES:
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / script), *args]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
