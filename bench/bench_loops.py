"""How many of the bundled model's answers end in a repetition loop (issue 13).

Runs the seed articles' requests (``SEED_REQUESTS``: the two articles in shared/seeds,
as they write them, most with no generationConfig) and the demo file
(``src/overnight/samples/demo.jsonl``, what ``make demo`` runs) through the bundled
SmolLM2-135M-Instruct on the transformers backend, ``--samples`` times each, the way a
batch runs them: the model's default generation settings fill what a request leaves
unset, and a request that samples without a seed gets one derived from its key
(``domain.generation``). Sample 0 uses the keys as written, so it is exactly what
``make demo`` answers; sample ``i`` appends ``#i`` to each key.

An answer ends in a loop when it runs into its token limit repeating the same piece of
text (``overnight.testing.loops``). The target is none.

    .venv/bin/python bench/bench_loops.py                   # the model's defaults
    .venv/bin/python bench/bench_loops.py --greedy          # before: greedy decoding
    .venv/bin/python bench/bench_loops.py --set temperature=0.7 --set top_p=0.9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from overnight.catalog import ModelCatalog
from overnight.config import load_settings
from overnight.domain.generation import apply_defaults
from overnight.domain.requests import GenerateRequest, GenerationConfig
from overnight.testing.loops import repetition_loop

DEMO = Path(__file__).resolve().parents[1] / "src" / "overnight" / "samples" / "demo.jsonl"


def _ask(text: str, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"parts": [{"text": text}], "role": "user"}]}
    if config:
        body["generation_config"] = config
    return body


# The requests of shared/seeds/000_*.txt and 002_*.txt, keyed by where they appear.
SEED_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("inline-joke", _ask("Tell me a one-sentence joke.")),
    ("inline-sky", _ask("Why is the sky blue?")),
    ("000-request-1", _ask("Describe the process of photosynthesis.")),
    ("000-request-2", _ask("What are the main ingredients in a Margherita pizza?")),
    ("002-request-1", _ask("Describe photosynthesis.", temperature=0.7)),
    ("002-request-2", _ask("Ingredients of Margherita pizza?")),
    ("002-upload-1", _ask("Describe photosynthesis.")),
]


def requests(samples: int) -> list[tuple[str, str, GenerateRequest]]:
    """(group, key, request) for every sample of every seed and demo request."""
    demo = [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines() if line]
    out = []
    for i in range(samples):
        suffix = f"#{i}" if i else ""
        for key, body in SEED_REQUESTS:
            out.append(("seeds", key + suffix, GenerateRequest.model_validate(body)))
        for line in demo:
            request = GenerateRequest.model_validate(line["request"])
            out.append(("demo", line["key"] + suffix, request))
    return out


def _value(text: str) -> float | int:
    number = float(text)
    return int(number) if number.is_integer() and "." not in text else number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4, help="keys per request (default 4)")
    parser.add_argument(
        "--greedy", action="store_true", help="no sampling defaults (the old behaviour)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a default (temperature, top_p, top_k, presence_penalty, "
        "frequency_penalty, max_output_tokens)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="converted-weights cache")
    parser.add_argument("--show", action="store_true", help="print every answer's ending")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = asyncio.run(run(args))
    print(json.dumps(report["summary"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from overnight.backends.transformers import TransformersBackend

    with tempfile.TemporaryDirectory() as scratch:
        settings = load_settings(environ={}, overrides={"data_dir": scratch})
        entry = ModelCatalog(settings).resolve("models/gemini-2.5-flash")
        defaults = entry.generation_defaults
        if args.greedy:
            defaults = GenerationConfig(max_output_tokens=defaults.max_output_tokens)
        overrides = dict(item.split("=", 1) for item in args.set)
        defaults = defaults.model_copy(update={k: _value(v) for k, v in overrides.items()})
        cache = args.cache_dir or settings.resolved_model_cache_dir
        backend = TransformersBackend(entry.name, entry.settings, cache)
        await backend.start()
        todo = requests(args.samples)
        merged = [apply_defaults(request, defaults, seed_source=key) for _, key, request in todo]
        started = time.perf_counter()
        outcomes = await backend.generate(merged)
        seconds = time.perf_counter() - started
        await backend.close()
    answers = []
    for (group, key, _), outcome in zip(todo, outcomes, strict=True):
        if isinstance(outcome, Exception):
            raise outcome
        candidate = outcome.candidates[0]
        loop = repetition_loop(candidate.text, candidate.finish_reason)
        answers.append(
            {
                "group": group,
                "key": key,
                "finish": candidate.finish_reason,
                "tokens": candidate.token_count,
                "loop": loop,
                "ending": candidate.text[-120:],
            }
        )
        if args.show:
            print(
                f"{key:>18} {candidate.finish_reason:>10} {candidate.token_count:>4} "
                f"{'LOOP ' + repr(loop) if loop else ''}\n    …{candidate.text[-100:]!r}"
            )
    summary: dict[str, Any] = {
        "defaults": defaults.model_dump(exclude_none=True),
        "answers": len(answers),
        "seconds": round(seconds, 1),
        "tokens": sum(a["tokens"] for a in answers),
    }
    for group in ("seeds", "demo", "all"):
        picked = [a for a in answers if group in ("all", a["group"])]
        loops = sum(a["loop"] is not None for a in picked)
        summary[group] = {
            "answers": len(picked),
            "loops": loops,
            "loop_share": round(loops / len(picked), 3),
            "at_token_limit": sum(a["finish"] == "MAX_TOKENS" for a in picked),
            "mean_tokens": round(sum(a["tokens"] for a in picked) / len(picked), 1),
        }
    return {"summary": summary, "answers": answers}


if __name__ == "__main__":
    main()
