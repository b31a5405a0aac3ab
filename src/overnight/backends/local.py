"""Shared plumbing of the local (in-process) model backends."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from overnight.errors import BackendUnavailable, ConfigError

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


def offline_environment() -> None:
    """Local backends never download: weights come from packages or the local cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def pick_device(torch: Any, wanted: str) -> Any:
    """``auto``: CUDA when torch sees one, else CPU. Raises BackendUnavailable naming the problem."""
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(wanted)
    except RuntimeError as exc:
        raise BackendUnavailable(f"device {wanted!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {wanted!r} was asked for, but torch sees no CUDA device")
    return device
