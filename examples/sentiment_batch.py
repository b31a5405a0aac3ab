"""Sentiment labeling at scale: a file batch of reviews, structured output, one tally.

Runs against a running ``overnight serve`` (or Gemini itself) with the google-genai SDK:

1. writes N synthetic product reviews (deterministic: the same N gives the same file)
   as a JSONL batch file, each request asking for
   ``{"label": "positive" | "negative" | "neutral", "confidence": number}`` through
   ``responseMimeType: application/json`` and a ``responseSchema``;
2. uploads it with ``client.files.upload`` and starts ``client.batches.create`` with
   ``src`` = the uploaded file's name;
3. polls ``client.batches.get`` until the job is done;
4. downloads the result file, parses every line's answer and tallies the labels.

    overnight serve &                    # in another terminal, or as a service
    python examples/sentiment_batch.py --reviews 1000 --base-url http://127.0.0.1:8000

It prints the tally and a one-line JSON summary (``--summary`` writes it to a file too),
and exits 1 if any answer failed to parse (an answer cut short by maxOutputTokens
counts as a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "label": {"type": "STRING", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "NUMBER", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "propertyOrdering": ["label", "confidence"],
}
INSTRUCTION = (
    "You label product reviews. Answer with the review's sentiment (positive, negative or "
    "neutral) and your confidence between 0 and 1."
)
DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}

PRODUCTS = [
    "headphones", "coffee maker", "running shoes", "phone case", "desk lamp", "backpack",
    "blender", "e-reader", "office chair", "water bottle", "keyboard", "tent", "toaster",
    "smartwatch", "frying pan", "vacuum cleaner", "novel", "board game", "jacket", "router",
]  # fmt: skip
OPENINGS = {
    "positive": [
        "I absolutely love this {p}.",
        "Best {p} I have ever owned.",
        "This {p} exceeded my expectations.",
        "Really happy with the {p}.",
        "Five stars for this {p}!",
    ],
    "negative": [
        "This {p} is a complete waste of money.",
        "I regret buying this {p}.",
        "The {p} broke after two days.",
        "Very disappointed with the {p}.",
        "One star. The {p} does not work.",
    ],
    "neutral": [
        "The {p} is okay, nothing special.",
        "It's an average {p}.",
        "The {p} does what it says, no more, no less.",
        "Mixed feelings about this {p}.",
        "The {p} arrived on time. It is fine.",
    ],
}
DETAILS = {
    "positive": [
        "The quality is excellent and it was easy to set up.",
        "Works perfectly and looks great.",
        "Fast delivery and it feels very sturdy.",
        "My whole family uses it every day.",
        "Worth every penny.",
    ],
    "negative": [
        "It stopped working and support never answered.",
        "Cheap plastic, and it arrived scratched.",
        "The instructions were useless and it keeps failing.",
        "Returned it the same week.",
        "Loud, slow and overpriced.",
    ],
    "neutral": [
        "The price is fair for what you get.",
        "Some features are good, others less so.",
        "I have used it twice so far.",
        "The color is a bit different from the photos.",
        "Setup took about ten minutes.",
    ],
}


def reviews(count: int, seed: int = 2024) -> list[tuple[str, str]]:
    """``count`` (review text, intended sentiment) pairs, the same for the same arguments."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        sentiment = rng.choice(sorted(OPENINGS))
        product = rng.choice(PRODUCTS)
        parts = [rng.choice(OPENINGS[sentiment]).format(p=product)]
        parts += rng.sample(DETAILS[sentiment], k=rng.randint(1, 2))
        stars = {"positive": (4, 5), "negative": (1, 2), "neutral": (3, 3)}[sentiment]
        if rng.random() < 0.5:
            parts.append(f"{rng.randint(*stars)}/5.")
        out.append((" ".join(parts), sentiment))
    return out


def write_requests(path: Path, items: list[tuple[str, str]], max_tokens: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, (text, _) in enumerate(items):
            request = {
                "systemInstruction": {"parts": [{"text": INSTRUCTION}]},
                "contents": [{"role": "user", "parts": [{"text": f"Review: {text}"}]}],
                "generationConfig": {
                    "responseMimeType": "application/json",
                    "responseSchema": SCHEMA,
                    "maxOutputTokens": max_tokens,
                },
            }
            f.write(json.dumps({"key": f"review-{i}", "request": request}) + "\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=args.api_key, http_options={"base_url": args.base_url})
    items = reviews(args.reviews)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reviews.jsonl"
        write_requests(path, items, args.max_tokens)
        uploaded = client.files.upload(
            file=path, config=types.UploadFileConfig(display_name="reviews", mime_type="jsonl")
        )
    job = client.batches.create(
        model=args.model, src=uploaded.name, config={"display_name": "sentiment-labeling"}
    )
    print(f"uploaded {uploaded.name}; started {job.name}", flush=True)
    seen = None
    while job.state is None or job.state.name not in DONE:
        time.sleep(args.poll)
        job = client.batches.get(name=job.name or "")
        if job.state != seen:
            seen = job.state
            print(f"  {job.state.name if job.state else '?'}", flush=True)
    elapsed = time.monotonic() - started
    if job.state is None or job.state.name != "JOB_STATE_SUCCEEDED" or job.dest is None:
        raise SystemExit(f"batch {job.name} ended {job.state}: {job.error}")
    content = client.files.download(file=job.dest.file_name or "")

    tally: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    agree = 0
    truth = {f"review-{i}": sentiment for i, (_, sentiment) in enumerate(items)}
    for raw in content.decode("utf-8").splitlines():
        line = json.loads(raw)
        if "error" in line:
            problems["error: " + line["error"].get("message", "?")[:60]] += 1
            continue
        candidate = line["response"]["candidates"][0]
        text = "".join(p.get("text", "") for p in candidate["content"]["parts"])
        try:
            answer = json.loads(text)
        except ValueError:
            problems[f"unparsed ({candidate.get('finishReason')})"] += 1
            continue
        tally[answer["label"]] += 1
        agree += answer["label"] == truth[line["key"]]
    parsed = sum(tally.values())
    return {
        "reviews": len(items),
        "parsed": parsed,
        "parse_rate": parsed / len(items),
        "labels": dict(sorted(tally.items())),
        "problems": dict(problems),
        "agreement_with_intended": agree / parsed if parsed else 0.0,
        "seconds": round(elapsed, 1),
        "batch": job.name,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reviews",
        type=int,
        default=int(os.environ.get("SENTIMENT_REVIEWS", "1000")),
        help="how many reviews (default 1000, or $SENTIMENT_REVIEWS)",
    )
    parser.add_argument(
        "--base-url",
        default=os.environ.get("OVERNIGHT_URL", "http://127.0.0.1:8000"),
        help="the server (default http://127.0.0.1:8000, or $OVERNIGHT_URL)",
    )
    parser.add_argument("--api-key", default=os.environ.get("GEMINI_API_KEY", "unused"))
    parser.add_argument("--model", default="gemini-2.5-flash", help="default: gemini-2.5-flash")
    parser.add_argument("--max-tokens", type=int, default=40, help="maxOutputTokens per review")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between polls")
    parser.add_argument("--summary", type=Path, help="also write the summary JSON here")
    args = parser.parse_args(argv)

    summary = run(args)
    print(f"{summary['parsed']}/{summary['reviews']} answers parsed in {summary['seconds']} s")
    for label, n in summary["labels"].items():
        print(f"  {label:9} {n:5d}  {'#' * round(50 * n / max(summary['parsed'], 1))}")
    for problem, n in summary["problems"].items():
        print(f"  {problem}: {n}")
    print(json.dumps(summary))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if summary["parsed"] == summary["reviews"] else 1


if __name__ == "__main__":
    sys.exit(main())
