"""docs/structured-output.md's worked example, run as written against a real server.

``examples/sentiment_batch.py`` drives a real ``overnight serve`` subprocess on the
bundled model through the google-genai SDK: upload, file batch, poll, download, tally.
It runs 60 reviews here rather than 1,000 to keep CI time down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.serving import running_server

pytestmark = pytest.mark.model

EXAMPLE = Path(__file__).parents[2] / "examples" / "sentiment_batch.py"
CONFIG = '[models.smollm2-135m-instruct]\nbackend = "transformers"\n'
REVIEWS = 60


def test_sentiment_example_labels_every_review(tmp_path: Path, model_cache_dir: Path) -> None:
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir)}
    summary_path = tmp_path / "summary.json"
    with running_server(tmp_path / "server", config=CONFIG, env=env) as base:
        done = subprocess.run(
            [
                sys.executable,
                str(EXAMPLE),
                "--reviews",
                str(REVIEWS),
                "--base-url",
                base,
                "--poll",
                "0.5",
                "--summary",
                str(summary_path),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["reviews"] == summary["parsed"] == REVIEWS, summary
    assert summary["parse_rate"] == 1.0 and not summary["problems"]
    assert set(summary["labels"]) <= {"positive", "negative", "neutral"}
    assert sum(summary["labels"].values()) == REVIEWS
    assert f"{REVIEWS}/{REVIEWS} answers parsed" in done.stdout


def test_the_reviews_are_deterministic_and_varied() -> None:
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import sentiment_batch
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    first = sentiment_batch.reviews(1000)
    assert first == sentiment_batch.reviews(1000)
    assert len({text for text, _ in first}) > 900
    assert {sentiment for _, sentiment in first} == {"positive", "negative", "neutral"}
