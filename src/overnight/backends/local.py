"""Shared plumbing of the local (in-process) model backends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from overnight.errors import ConfigError

T = TypeVar("T")

INSTALL_HINT = "pip install -e '.[local]'"


class ModelThread:
    """One long-lived thread per model: calls queue up in order, off the event loop, and
    torch keeps a single thread pool (a fresh thread per call would rebuild it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._executor is not None

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"overnight-{self.name}")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


def check_options(model: str, backend: str, options: Iterable[str], known: frozenset[str]) -> None:
    """Raise ``ConfigError`` naming any option the backend does not know."""
    unknown = set(options) - known
    if unknown:
        raise ConfigError(
            f"model {model!r}: unknown {backend} option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
