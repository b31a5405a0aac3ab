"""How many threads torch runs a local model on: a fixed count, or one per free CPU.

Torch splits every operation of a forward pass across its OpenMP threads and waits for
the slowest at the end of each one. When another process holds one of those CPUs, the
thread that shares it runs only part of the time, and every operation, hundreds per
decoding step, waits for it: with one busy neighbour on two cores the bundled model kept
about a fifth of its quiet speed (docs/benchmarks.md, "Under CPU contention").

The ``threads`` option of the local backends chooses:
- ``"auto"`` (the default): one thread per CPU that other processes leave free, measured
  from ``/proc/stat`` on the CPUs this process may run on (its affinity) minus this
  process's own CPU time, over the last ``MEASURE_EVERY_S`` at least, and re-decided
  between forward passes (a decoding step, an embedding micro-batch). Never fewer than
  one thread, never more than the physical cores of those CPUs (torch's own default) or
  ``OMP_NUM_THREADS`` when it is set. Where ``/proc/stat`` cannot be read, it stays at
  that ceiling.
- a whole number: exactly that many threads, as ``torch.set_num_threads``.

``torch.set_num_threads`` sets the OpenMP thread count of the calling thread (and the
default for threads torch has not set up yet), so the governor must run on the model's
own thread: it does, as a forward pre-hook of the model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overnight.backends.options import check_threads
from overnight.errors import ConfigError

MEASURE_EVERY_S = 0.5  # shortest window a decision averages over
PROC_STAT = Path("/proc/stat")
SYS_CPU = Path("/sys/devices/system/cpu")


def parse_threads(model: str, value: Any) -> int | None:
    """The ``threads`` option: ``None`` for ``"auto"``, else the fixed count.

    Raises ``ConfigError`` for anything but ``"auto"`` or a whole number >= 1.
    """
    try:
        return check_threads(value)
    except ValueError as exc:
        raise ConfigError(f"model {model!r}: options.threads {exc}") from None


def thread_count(ceiling: int, free: float) -> int:
    """Threads for ``free`` CPUs (fractions count when at least half free), from 1 to ``ceiling``.

    A thread on a CPU that is mostly someone else's stalls every operation, so a CPU
    counts only when at least half of it is free.
    """
    return max(1, min(ceiling, math.floor(free + 0.5)))


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may run on."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return frozenset(range(os.cpu_count() or 1))


def thread_ceiling(cpus: frozenset[int], sys_cpu: Path = SYS_CPU) -> int:
    """Most threads worth running: the physical cores among ``cpus`` (hyperthread siblings
    count once, as torch's default does), capped by ``OMP_NUM_THREADS`` when it is set."""
    cores: set[str] = set()
    for cpu in cpus:
        try:
            siblings = (sys_cpu / f"cpu{cpu}/topology/thread_siblings_list").read_text()
        except OSError:
            siblings = str(cpu)
        cores.add(siblings.strip())
    ceiling = max(1, len(cores))
    wanted = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if wanted.isdigit() and int(wanted) >= 1:
        ceiling = min(ceiling, int(wanted))
    return ceiling


class CpuMeter:
    """How busy other processes keep a set of CPUs: ``/proc/stat`` busy time on those CPUs,
    minus this process's own CPU time, between two readings."""

    def __init__(
        self,
        cpus: frozenset[int],
        stat: Path = PROC_STAT,
        clock: Callable[[], float] = time.monotonic,
        own_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.cpus = cpus
        self._stat = stat
        self._clock = clock
        self._own_cpu = own_cpu
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last: tuple[float, float, float] | None = None

    def others(self) -> float | None:
        """CPUs' worth of time other processes used since the previous call (``None`` the
        first time, or when ``/proc/stat`` cannot be read)."""
        busy = self._busy_seconds()
        if busy is None:
            return None
        now = (self._clock(), busy, self._own_cpu())
        last, self._last = self._last, now
        if last is None or now[0] <= last[0]:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / (now[0] - last[0]))

    def _busy_seconds(self) -> float | None:
        try:
            lines = self._stat.read_text().splitlines()
        except OSError:
            return None
        ticks = 0
        for line in lines:
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or not name[3:].isdigit():
                continue
            if int(name[3:]) in self.cpus:
                # user nice system idle iowait irq softirq steal …; guest time is in user
                fields = [int(f) for f in rest.split()[:8]]
                ticks += sum(fields) - fields[3] - fields[4]
        return ticks / self._tick


class ThreadGovernor:
    """Sets torch's thread count for one model: pinned, or adapted to the free CPUs.

    Build it on the model's thread, after importing torch; ``attach`` it to the model so
    that it re-decides (at most every ``MEASURE_EVERY_S``) before a forward pass.
    """

    def __init__(
        self,
        pinned: int | None,
        set_threads: Callable[[int], None],
        meter: CpuMeter | None = None,
        ceiling: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pinned = pinned
        self._set_threads = set_threads
        self._clock = clock
        self._meter = meter
        if pinned is None and meter is None:
            self._meter = CpuMeter(allowed_cpus(), clock=clock)
        cpus = self._meter.cpus if self._meter is not None else allowed_cpus()
        self.ceiling = ceiling or thread_ceiling(cpus)
        self.threads = pinned or self.ceiling
        self._set_threads(self.threads)
        self._next = clock() + MEASURE_EVERY_S
        if self._meter is not None and pinned is None:
            self._meter.others()  # the baseline of the first window

    def attach(self, module: Any) -> None:
        """Re-decide before every forward pass of ``module`` (a ``torch.nn.Module``)."""
        if self.pinned is None:
            module.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, module: Any, args: Any) -> None:
        self.tick()  # returns None: a value from a pre-hook would replace the inputs

    def tick(self) -> int:
        """Measure and apply a new count when the window is long enough; the count in use."""
        if self.pinned is not None or self._meter is None:
            return self.threads
        now = self._clock()
        if now < self._next:
            return self.threads
        self._next = now + MEASURE_EVERY_S
        others = self._meter.others()
        if others is None:
            return self.threads
        wanted = thread_count(self.ceiling, len(self._meter.cpus) - others)
        if wanted != self.threads:
            self._set_threads(wanted)
            self.threads = wanted
        return self.threads
