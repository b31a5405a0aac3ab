"""Shared bits for the benchmarks: settings over a scratch dir, peak RSS."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

from overnight.config import Settings, load_settings


def scratch_settings(data_dir: Path, **extra: Any) -> Settings:
    return load_settings(environ={}, overrides={"data_dir": str(data_dir), **extra})


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 1024 / 1024
