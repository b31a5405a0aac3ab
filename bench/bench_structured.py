"""Constrained vs unconstrained batched generation on the transformers backend.

The same prompts, batch size and token budget run twice through
``TransformersBackend.generate``, greedy:

(u) free text;
(s) structured output: ``responseMimeType: application/json`` with a sentiment
    ``responseSchema`` (``label`` enum, ``confidence`` number, then a free-text
    ``reason`` string with ``minLength: 400``, so answers run to the token budget
    instead of closing after a few words).

Two ratios are printed: generated tokens/s, the issue's measure, and decoding steps/s
(one step is one forward pass of the whole batch; a batch runs as many steps as its
longest row). Free-text rows often stop early at EOS while their batch runs on, which
lowers (u)'s tokens/s; steps/s does not depend on answer lengths, so it isolates the
per-step cost of the grammar. The verdict uses the lower of the two. It also prints the
time (s) spent inside the grammar mask itself, and its share of (s)'s time: on a shared
machine the two runs' wall times wander, but that share does not.

Throughput is generated tokens per second (EOS not counted), so the comparison is
about the per-step cost of the grammar (xgrammar's batched bitmask fill and apply),
not about answer lengths. After a warm-up (which also compiles the schema once), the
two take turns ``--repeat`` times and the median run of each counts. The target
(issue 5) is (s)/(u) >= 80%.

    .venv/bin/python bench/bench_structured.py --requests 64 --batch-size 64 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_generate import build_prompts

SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "label": {"type": "STRING", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "NUMBER"},
        # minLength keeps rows generating up to the token budget, as free text does
        "reason": {"type": "STRING", "minLength": 400, "description": "why, in detail"},
    },
    "required": ["label", "confidence", "reason"],
    "propertyOrdering": ["label", "confidence", "reason"],
}


def build_requests(prompts: list[str], max_tokens: int, constrained: bool) -> list[Any]:
    from overnight.domain.requests import GenerateRequest

    config: dict[str, Any] = {"maxOutputTokens": max_tokens}
    if constrained:
        config |= {"responseMimeType": "application/json", "responseSchema": SCHEMA}
    return [
        GenerateRequest.model_validate(
            {
                "contents": [
                    {"role": "user", "parts": [{"text": f"What is the sentiment of: {p}"}]}
                ],
                "generationConfig": config,
            }
        )
        for p in prompts
    ]


MASK_SECONDS = [0.0]


def time_the_mask() -> None:
    """Count the seconds spent in ``GrammarMask`` (accept, fill, apply) across runs.

    On a shared machine the two runs' wall times wander; the share of (s)'s own time
    spent masking does not, and bounds what the grammar costs.
    """
    from overnight.backends import decoding

    call = decoding.GrammarMask.__call__

    def timed(self: Any, input_ids: Any, scores: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(self, input_ids, scores)
        finally:
            MASK_SECONDS[0] += time.perf_counter() - start

    decoding.GrammarMask.__call__ = timed  # type: ignore[method-assign]


def bench(backend: Any, requests: list[Any], batch: int) -> tuple[int, float, int, int]:
    """Tokens, seconds, decoding steps and how many answers parsed as JSON."""
    start = time.perf_counter()
    results = asyncio.run(backend.generate(requests))
    elapsed = time.perf_counter() - start
    parsed = 0
    for result in results:
        try:
            json.loads(result.candidates[0].text)
            parsed += 1
        except ValueError:
            pass
    # A row ended by EOS ran one step more than its token count. Rows are batched in
    # prompt-length order, so per-batch step counts are known exactly only for one batch.
    lengths = [c.token_count + (c.finish_reason == "STOP") for r in results for c in r.candidates]
    steps = max(lengths) * -(-len(lengths) // batch)
    return sum(r.candidates_tokens for r in results), elapsed, steps, parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="prompts per run (default 64)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per batch")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; median kept")
    parser.add_argument("--cache-dir", type=Path, default=None, help="converted-weights cache")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from overnight.backends.transformers import TransformersBackend
    from overnight.config import builtin_models

    settings = builtin_models()["smollm2-135m-instruct"].model_copy(
        update={"max_batch_size": args.batch_size, "max_output_tokens": args.max_tokens}
    )
    cache_dir = args.cache_dir or Path(tempfile.gettempdir()) / "overnight-bench-cache"
    backend = TransformersBackend("smollm2-135m-instruct", settings, cache_dir)
    asyncio.run(backend.start())

    prompts = build_prompts(args.requests)
    requests = {
        "u": build_requests(prompts, args.max_tokens, constrained=False),
        "s": build_requests(prompts, args.max_tokens, constrained=True),
    }
    warm = min(8, args.requests)
    for key in ("u", "s"):  # warm-up; (s) also builds the tokenizer info and compiles once
        bench(backend, requests[key][:warm], args.batch_size)

    time_the_mask()
    masked = {"u": 0.0, "s": 0.0}
    timings: dict[str, list[tuple[int, float, int, int]]] = {"u": [], "s": []}
    for turn in range(args.repeat):
        for key in ("u", "s") if turn % 2 == 0 else ("s", "u"):
            before = MASK_SECONDS[0]
            tokens, seconds, steps, parsed = bench(backend, requests[key], args.batch_size)
            masked[key] += MASK_SECONDS[0] - before
            print(f"  run {key}: {tokens} tokens, {steps} steps in {seconds:.2f} s", flush=True)
            timings[key].append((tokens, seconds, steps, parsed))
    asyncio.run(backend.close())

    rows = {k: sorted(v, key=lambda run: run[1])[(len(v) - 1) // 2] for k, v in timings.items()}
    rate = {k: run[0] / run[1] for k, run in rows.items()}
    step_rate = {k: run[2] / run[1] for k, run in rows.items()}
    labels = {"u": "(u) unconstrained", "s": "(s) responseSchema (sentiment + reason)"}
    print(
        f"{args.requests} prompts, batch {args.batch_size}, up to {args.max_tokens} new tokens, "
        f"median of {args.repeat}"
    )
    print(
        f"{'':42} {'tokens':>7} {'steps':>6} {'seconds':>8} {'tok/s':>7} {'steps/s':>8} {'JSON':>6}"
    )
    for key, (tokens, seconds, steps, parsed) in rows.items():
        print(
            f"{labels[key]:42} {tokens:7d} {steps:6d} {seconds:8.2f} {rate[key]:7.1f} "
            f"{step_rate[key]:8.2f} {parsed:>3}/{args.requests}"
        )
    ratio, step_ratio = rate["s"] / rate["u"], step_rate["s"] / step_rate["u"]
    share = masked["s"] / sum(run[1] for run in timings["s"])
    per_step = 1000 * masked["s"] / sum(run[2] for run in timings["s"])
    print(
        f"time in the grammar mask (accept + fill + apply): {masked['s']:.2f} s, "
        f"{share:.1%} of (s)'s time, {per_step:.1f} ms per step"
    )
    verdict = "PASS" if min(ratio, step_ratio) >= 0.8 else "FAIL"
    print(
        f"constrained / unconstrained: tokens/s {ratio:.1%}, steps/s {step_ratio:.1%} "
        f"(target >= 80%: {verdict})"
    )
    if args.out:
        report = {
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "batch_size": args.batch_size,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "repeat": args.repeat,
            "all_runs": {
                k: [{"tokens": t, "seconds": s, "steps": n, "parsed": p} for t, s, n, p in v]
                for k, v in timings.items()
            },
            "tokens_per_s": rate,
            "steps_per_s": step_rate,
            "tokens_ratio": ratio,
            "steps_ratio": step_ratio,
            "mask_seconds": masked["s"],
            "mask_share": share,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
