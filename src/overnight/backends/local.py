"""Shared plumbing of the local (in-process) model backends."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from overnight.errors import BackendUnavailable

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


def pick_dtype(torch: Any, wanted: str, device: Any) -> Any:
    """``auto``: bfloat16 where the device supports it (a CPU with ``avx512_bf16`` or
    ``amx_bf16``, where it is twice as fast), else float32."""
    if wanted != "auto":
        return getattr(torch, wanted)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.partition(":")[2].split()))
