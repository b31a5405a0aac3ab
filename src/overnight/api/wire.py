"""Wire formatting shared by the routes: timestamps, int64 strings, resource names.

Page tokens are in ``paging.py``.
"""

from __future__ import annotations

import datetime as dt


def timestamp(seconds: float | None) -> str | None:
    """RFC 3339 with a ``Z`` and microseconds, as Google emits (spec §1.4)."""
    if seconds is None:
        return None
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def int64(value: int) -> str:
    """int64 fields travel as JSON strings."""
    return str(int(value))


def strip_prefix(name: str, prefix: str) -> str:
    """``files/abc`` → ``abc``; a bare id stays as it is."""
    return name[len(prefix) + 1 :] if name.startswith(prefix + "/") else name
