"""The progress display for long runs: done/total, requests/s, tokens/s, ETA."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RunProgress:
    """Counts work as workers report it, and renders it with rich."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.requests = 0
        self.tokens = 0
        self.started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task("requests", total=None, rate="", start=True)

    def __enter__(self) -> RunProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def on_progress(self, requests: int, tokens: int) -> None:
        """Worker callback: ``requests`` finished, ``tokens`` generated."""
        self.requests += requests
        self.tokens += tokens

    def rates(self) -> tuple[float, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.requests / elapsed, self.tokens / elapsed

    def update(self, *, done: int, total: int | None) -> None:
        req_s, tok_s = self.rates()
        completed = max(done, 0) if total is None else min(done, total)
        self._progress.update(
            self._task,
            completed=completed,
            total=total,
            rate=f"{req_s:,.1f} req/s · {tok_s:,.0f} tok/s",
        )
