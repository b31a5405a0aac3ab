"""Testing tools that ship with Overnight, so users can test their own setups too.

- :class:`FakeUpstream`: a fake OpenAI- and Gemini-compatible model server on loopback
  (real HTTP/1.1), with configurable latency, errors, connection resets, downtime and a
  rate-limit enforcer that counts violations. See ``docs/testing.md``.

The names are imported lazily, so that ``python -m overnight.testing.upstream`` does not
import its own module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overnight.testing.upstream import (
        FakeUpstream,
        RecordedRequest,
        UpstreamConfig,
        UpstreamProcess,
        UpstreamStats,
    )

__all__ = [
    "FakeUpstream",
    "RecordedRequest",
    "UpstreamConfig",
    "UpstreamProcess",
    "UpstreamStats",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from overnight.testing import upstream

        return getattr(upstream, name)
    raise AttributeError(f"module 'overnight.testing' has no attribute {name!r}")
