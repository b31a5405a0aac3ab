"""Throughput of the transformers backend with a CPU-bound neighbour, against a quiet machine.

The bundled SmolLM2-135M-Instruct (``--dtype``, default ``auto``: bfloat16 where the CPU
has ``avx512_bf16``, float32 elsewhere), ``--requests`` chat prompts (those of
bench_generate.py), at most ``--max-tokens`` new tokens each, greedy, batch 64, through
``TransformersBackend.generate``. Each mode below runs in its own worker process (an
OpenMP wait policy must be set before torch starts), loaded once:

- ``torch``: the old behaviour, torch's own thread count (here: as many as it picks on
  start, pinned with the ``threads`` option);
- ``auto``: the default now, ``threads = "auto"`` (backends/threads.py);
- ``1``, ``2``, …: that many threads, pinned;
- any of them with ``+passive``: ``OMP_WAIT_POLICY=PASSIVE`` in the worker's environment.

Each round runs every mode quiet, then with one neighbour, back to back (the order of the
modes, and of quiet and loaded, alternates from round to round). The neighbour is a
subprocess running a pure Python busy loop (``while True: pass``): one thread that never
blocks, so it keeps one core busy for as long as the scheduler lets it; its own CPU use
is measured and printed. So is the CPU the rest of the machine used during each run
(``/proc/stat`` on our CPUs minus the worker's and the neighbour's own time), since a
quiet run is only as quiet as the machine.

    .venv/bin/python bench/bench_contention.py --rounds 3 --out bench-contention.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
NEIGHBOUR = "while True: pass"


def worker(mode: str, requests: int, max_tokens: int, dtype: str, cache_dir: Path) -> None:
    """Load the model for one mode, then run the workload once per line read from stdin."""
    import asyncio

    import torch

    sys.path.insert(0, str(HERE))
    from bench_generate import build_prompts
    from overnight.backends.threads import CpuMeter, allowed_cpus
    from overnight.backends.transformers import TransformersBackend
    from overnight.config import builtin_models
    from overnight.domain.requests import GenerateRequest
    from overnight.domain.results import GenerateResult

    changes: list[int] = []
    set_threads = torch.set_num_threads

    def traced(nthreads: int) -> None:  # the backend looks torch.set_num_threads up on load
        changes.append(nthreads)
        set_threads(nthreads)

    torch.set_num_threads = traced
    threads = mode.removesuffix("+passive")
    option: str | int = (
        torch.get_num_threads()
        if threads == "torch"
        else "auto"
        if threads == "auto"
        else int(threads)
    )
    name = "smollm2-135m-instruct"
    settings = builtin_models()[name].model_copy(
        update={
            "max_batch_size": 64,
            "max_output_tokens": max_tokens,
            "dtype": dtype,
            "options": {"threads": option},
        }
    )
    backend = TransformersBackend(name, settings, cache_dir)
    asyncio.run(backend.start())
    body = {"generationConfig": {"maxOutputTokens": max_tokens}}
    batch = [
        GenerateRequest.model_validate(
            {"contents": [{"role": "user", "parts": [{"text": p}]}], **body}
        )
        for p in build_prompts(requests)
    ]
    asyncio.run(backend.generate(batch[:8]))  # warm-up
    meter = CpuMeter(allowed_cpus())
    ready = {"ready": mode, "option": option, "dtype": backend.capabilities.extra["dtype"]}
    print(json.dumps(ready), flush=True)
    for _ in sys.stdin:
        changes.clear()
        meter.others()
        start, cpu = time.perf_counter(), time.process_time()
        results = asyncio.run(backend.generate(batch))
        seconds = time.perf_counter() - start
        report = {
            "tokens": sum(r.candidates_tokens for r in results if isinstance(r, GenerateResult)),
            "seconds": seconds,
            "cpu_s": time.process_time() - cpu,
            "others": meter.others(),
            "thread_changes": changes[:20],
            "threads_at_end": backend.governor.threads if backend.governor else None,
        }
        print(json.dumps(report), flush=True)
    asyncio.run(backend.close())


class Worker:
    """One mode's worker process, fed one line per run."""

    def __init__(self, mode: str, args: argparse.Namespace) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if mode.endswith("+passive"):
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        command = [sys.executable, __file__, "--worker", mode, "--requests", str(args.requests)]
        command += ["--max-tokens", str(args.max_tokens), "--dtype", args.dtype]
        command += ["--cache-dir", str(args.cache_dir)]
        self.mode = mode
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.ready = self._read()

    def run(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)

    def _read(self) -> dict[str, Any]:
        out = self.process.stdout
        assert out is not None
        for line in out:
            if line.startswith("{"):
                found: dict[str, Any] = json.loads(line)
                return found
        raise RuntimeError(f"worker {self.mode} exited ({self.process.wait()})")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(worker: Worker, loaded: bool) -> dict[str, Any]:
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if loaded else None
    try:
        if neighbour:
            time.sleep(0.5)  # let it start spinning
            start_cpu, start = cpu_seconds(neighbour.pid), time.perf_counter()
        run = worker.run()
        if neighbour:
            run["neighbour_cpus"] = (cpu_seconds(neighbour.pid) - start_cpu) / (
                time.perf_counter() - start
            )
    finally:
        if neighbour:
            neighbour.kill()
            neighbour.wait()
    run["tokens_per_s"] = run["tokens"] / run["seconds"]
    # /proc/stat's others, less the neighbour: what the rest of the machine used
    run["background_cpus"] = max(0.0, (run["others"] or 0.0) - run.get("neighbour_cpus", 0.0))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes", default="torch,auto", help="comma-separated (default torch,auto)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="quiet+loaded pairs per mode")
    parser.add_argument("--requests", type=int, default=64, help="prompts per run (default 64)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16 or float32")
    parser.add_argument("--cache-dir", type=Path, default=None, help="converted-weights cache")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cache_dir = args.cache_dir or Path(tempfile.gettempdir()) / "overnight-bench-cache"
    if args.worker:
        worker(args.worker, args.requests, args.max_tokens, args.dtype, args.cache_dir)
        return

    modes = args.modes.split(",")
    workers = {mode: Worker(mode, args) for mode in modes}
    for mode, w in workers.items():
        print(f"  {mode}: threads option {w.ready['option']!r}, {w.ready['dtype']}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    try:
        for turn in range(args.rounds):
            order = modes if turn % 2 == 0 else modes[::-1]
            for mode in order:
                pair = {}
                for loaded in (False, True) if turn % 2 == 0 else (True, False):
                    run = measure(workers[mode], loaded)
                    pair["loaded" if loaded else "quiet"] = run
                    print(
                        f"  round {turn + 1} {mode:>14} {'loaded' if loaded else 'quiet':6} "
                        f"{run['tokens']:5d} tokens {run['seconds']:6.1f} s "
                        f"{run['tokens_per_s']:6.1f} tok/s  neighbour "
                        f"{run.get('neighbour_cpus', 0.0):.2f} CPU, rest of machine "
                        f"{run['background_cpus']:.2f} CPU, threads set {run['thread_changes']}",
                        flush=True,
                    )
                pair["ratio"] = pair["loaded"]["tokens_per_s"] / pair["quiet"]["tokens_per_s"]
                runs[mode].append(pair)
    finally:
        for w in workers.values():
            w.close()

    print(f"\n{'mode':>14} {'quiet tok/s':>12} {'loaded tok/s':>13} {'loaded/quiet':>13}   rounds")
    summary = {}
    for mode, pairs in runs.items():
        quiet = statistics.median(p["quiet"]["tokens_per_s"] for p in pairs)
        loaded = statistics.median(p["loaded"]["tokens_per_s"] for p in pairs)
        ratios = [p["ratio"] for p in pairs]
        summary[mode] = {"quiet": quiet, "loaded": loaded, "ratio": statistics.median(ratios)}
        each = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"{mode:>14} {quiet:12.1f} {loaded:13.1f} {summary[mode]['ratio']:13.2f}   {each}")
    if "auto" in summary:
        verdict = "PASS" if summary["auto"]["ratio"] >= 0.4 else "FAIL"
        print(f"auto: loaded/quiet {summary['auto']['ratio']:.2f} (target >= 0.4: {verdict})")
    if args.out:
        report = {
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "dtype": next(iter(workers.values())).ready["dtype"],
            "cpus": sorted(os.sched_getaffinity(0)),
            "summary": summary,
            "runs": runs,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
