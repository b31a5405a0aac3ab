"""Sizing torch's thread count to the CPUs other processes leave free (backends.threads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overnight.backends.threads import (
    MEASURE_EVERY_S,
    CpuMeter,
    ThreadGovernor,
    parse_threads,
    thread_ceiling,
    thread_count,
)
from overnight.errors import ConfigError


@pytest.mark.parametrize(
    ("ceiling", "free", "expected"),
    [
        (2, 2.0, 2),  # a quiet machine: every core
        (2, 1.9, 2),  # a little background noise does not cost a thread
        (2, 1.5, 2),  # half of the second CPU is still worth a thread
        (2, 1.4, 1),  # one CPU mostly someone else's: its thread would stall every op
        (2, 1.0, 1),  # one busy neighbour on two cores
        (2, 0.2, 1),  # never fewer than one
        (2, 0.0, 1),
        (8, 16.0, 8),  # never more than the ceiling (physical cores, OMP_NUM_THREADS)
        (8, 5.3, 5),
    ],
)
def test_one_thread_per_cpu_that_is_at_least_half_free(
    ceiling: int, free: float, expected: int
) -> None:
    assert thread_count(ceiling, free) == expected


def test_threads_option_is_auto_or_a_count() -> None:
    assert parse_threads("m", "auto") is None
    assert parse_threads("m", 3) == 3


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", "many", True, None, [2]])
def test_bad_threads_values_are_named(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"model 'm': options.threads must be \"auto\" or"):
        parse_threads("m", bad)


def test_the_backends_reject_a_bad_threads_option(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the local extra (torch) is not installed")
    from overnight.backends.sentence_transformers import SentenceTransformersBackend
    from overnight.backends.transformers import TransformersBackend
    from overnight.config import builtin_models

    models = builtin_models()
    for name, backend in [
        ("smollm2-135m-instruct", TransformersBackend),
        ("all-minilm-l6-v2", SentenceTransformersBackend),
    ]:
        settings = models[name].model_copy(update={"options": {"threads": "lots"}})
        with pytest.raises(ConfigError, match=r"options\.threads"):
            backend(name, settings, tmp_path)


def _topology(root: Path, siblings: dict[int, str]) -> Path:
    for cpu, listed in siblings.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(listed + "\n")
    return root


def test_ceiling_counts_physical_cores_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    smt = _topology(tmp_path, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})
    assert thread_ceiling(frozenset({0, 1, 2, 3}), smt) == 2
    assert thread_ceiling(frozenset({0, 2}), smt) == 1
    assert thread_ceiling(frozenset({5, 6}), smt) == 2  # no topology: one core per CPU


def test_ceiling_honours_omp_num_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_ceiling(frozenset(range(8)), tmp_path) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert thread_ceiling(frozenset(range(8)), tmp_path) == 8


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Machine:
    """A /proc/stat for two CPUs that tests advance: busy seconds per CPU, ours in total."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path, self.clock = path, clock
        self.busy = {0: 0.0, 1: 0.0, 2: 0.0}
        self.ours = 0.0
        self.write()

    def run(self, seconds: float, ours: float, others: dict[int, float]) -> None:
        """``seconds`` pass; we use ``ours`` CPUs (spread evenly), others per CPU."""
        self.clock.now += seconds
        self.ours += ours * seconds
        for cpu in (0, 1):
            self.busy[cpu] += (ours / 2 + others.get(cpu, 0.0)) * seconds
        self.busy[2] += seconds  # a CPU outside our affinity, always busy: never counted
        self.write()

    def write(self) -> None:
        lines = ["cpu  1 2 3 4 5 6 7 8 9 10"]
        for cpu, busy in self.busy.items():
            user = round(busy * 100)  # USER_HZ ticks
            lines.append(f"cpu{cpu} {user} 0 0 {10**6 - user} 0 0 0 0 0 0")
        lines.append("intr 1 2 3")
        self.path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "stat", Clock())


def meter_for(machine: Machine) -> CpuMeter:
    return CpuMeter(
        frozenset({0, 1}), machine.path, clock=machine.clock, own_cpu=lambda: machine.ours
    )


def test_meter_counts_only_other_processes_on_our_cpus(machine: Machine) -> None:
    meter = meter_for(machine)
    assert meter.others() is None  # the first reading is the baseline
    machine.run(1.0, ours=2.0, others={})
    assert meter.others() == pytest.approx(0.0, abs=0.02)
    machine.run(2.0, ours=1.0, others={1: 1.0})
    assert meter.others() == pytest.approx(1.0, abs=0.02)


def test_meter_without_proc_stat_knows_nothing(tmp_path: Path) -> None:
    meter = CpuMeter(frozenset({0}), tmp_path / "missing")
    assert meter.others() is None
    assert meter.others() is None


def test_governor_steps_down_for_a_neighbour_and_back_up(machine: Machine) -> None:
    applied: list[int] = []
    governor = ThreadGovernor(
        None, applied.append, meter_for(machine), ceiling=2, clock=machine.clock
    )
    assert applied == [2]  # starts at the ceiling
    machine.run(MEASURE_EVERY_S / 2, ours=2.0, others={0: 0.7})
    assert governor.tick() == 2  # the window is too short to judge: nothing measured
    machine.run(MEASURE_EVERY_S, ours=1.3, others={0: 0.7})
    assert governor.tick() == 1
    for _ in range(3):
        machine.run(MEASURE_EVERY_S, ours=1.0, others={0: 1.0})
        assert governor.tick() == 1
    machine.run(MEASURE_EVERY_S, ours=1.0, others={})  # the neighbour left
    assert governor.tick() == 2
    assert applied == [2, 1, 2]  # only changes are applied


def test_a_pinned_count_is_applied_once_and_never_measured(machine: Machine) -> None:
    applied: list[int] = []
    governor = ThreadGovernor(3, applied.append, meter_for(machine), clock=machine.clock)
    machine.run(10.0, ours=1.0, others={0: 1.0, 1: 1.0})
    assert governor.tick() == 3
    assert applied == [3]


class Module:
    def __init__(self) -> None:
        self.hooks: list[object] = []

    def register_forward_pre_hook(self, hook: object) -> None:
        self.hooks.append(hook)


def test_attach_hooks_only_an_adaptive_governor(machine: Machine) -> None:
    adaptive, pinned = Module(), Module()
    applied: list[int] = []
    governor = ThreadGovernor(None, applied.append, meter_for(machine), 2, machine.clock)
    governor.attach(adaptive)
    ThreadGovernor(2, applied.append, meter_for(machine), clock=machine.clock).attach(pinned)
    assert len(adaptive.hooks) == 1 and pinned.hooks == []
    machine.run(MEASURE_EVERY_S, ours=1.0, others={1: 1.0})
    hook = adaptive.hooks[0]
    assert callable(hook)
    assert hook(adaptive, ()) is None  # a pre-hook's return value would replace the inputs
    assert governor.threads == 1
