"""Fixtures the SDK notebook-style tests share (seed articles, the cookbook).

A module that wants them asks for ``client`` (the real google-genai SDK, against the
default API version and v1beta) and marks itself ``usefixtures("quick_polls")``; a
module with its own ``client`` or ``base_url`` fixture keeps its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from tests.serving import FAKE_MODELS, running_server

FAKE_WITH_GEMINI_ALIASES = (
    FAKE_MODELS + '[aliases]\n"gemini-*" = "echo"\n"gemini-embedding-*" = "echo"\n'
)

_real_sleep = time.sleep


@pytest.fixture
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebooks poll every 30 s; the fake model answers in milliseconds."""
    monkeypatch.setattr(time, "sleep", lambda seconds: _real_sleep(min(seconds, 0.05)))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``overnight serve`` per module, fake models under Gemini's names."""
    with running_server(tmp_path_factory.mktemp("sdk"), config=FAKE_WITH_GEMINI_ALIASES) as base:
        yield base


@pytest.fixture(params=["default", "v1beta"])
def client(request: pytest.FixtureRequest, base_url: str) -> genai.Client:
    http_options: dict[str, Any] = {"base_url": base_url}
    if request.param != "default":
        http_options["api_version"] = request.param
    return genai.Client(api_key="x", http_options=http_options)
