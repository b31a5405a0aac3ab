"""The traffic layer's parts on a fake clock: pacing, the circuit, Retry-After."""

from __future__ import annotations

import asyncio

import pytest

from overnight.backends.traffic import Circuit, Pacer, TrafficLimits, _Failure, _retry_after
from overnight.errors import RetryableError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pacer_never_lets_a_minute_hold_more_than_the_limit() -> None:
    clock = Clock()
    pacer = Pacer(120, clock)
    starts = []
    for _ in range(500):
        clock.now += pacer.reserve(1)
        starts.append(clock.now)
    # No burst at the start: the first minute holds the limit, not twice it.
    for i, t in enumerate(starts):
        in_window = sum(1 for s in starts[: i + 1] if s > t - 60)
        assert in_window <= 120
    assert starts[-1] - starts[0] == pytest.approx(499 * 0.5 * 1.01)


def test_pacer_spaces_by_cost_and_caps_a_huge_cost_at_one_minute() -> None:
    clock = Clock()
    pacer = Pacer(1000, clock, margin=1.0)
    assert pacer.reserve(500) == 0
    assert pacer.reserve(10) == pytest.approx(30.0)  # 500 tokens of 1,000/min
    clock.now += 100
    assert pacer.reserve(10**9) == 0
    assert pacer.reserve(1) == pytest.approx(60.0)  # capped at the whole minute


def test_pacer_idle_time_is_not_banked_as_burst() -> None:
    clock = Clock()
    pacer = Pacer(60, clock, margin=1.0)
    pacer.reserve()
    clock.now += 3600
    assert pacer.reserve() == 0
    assert pacer.reserve() == pytest.approx(1.0)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after("1.5") == 1.5
    assert _retry_after("-3") == 0.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_circuit_opens_after_consecutive_failures_and_probes_once() -> None:
    async def go() -> None:
        clock = Clock()
        limits = TrafficLimits(circuit_failures=3, circuit_cooldown_s=5, circuit_wait_s=60)
        circuit = Circuit(limits, clock)
        down = _Failure(None, "connection failed: ConnectError")
        for _ in range(2):
            assert await circuit.admit() is False
            circuit.failed(down, probe=False)
        assert not circuit.is_open
        circuit.succeeded(probe=False)  # a success resets the count
        for _ in range(3):
            circuit.failed(down, probe=False)
        assert circuit.is_open and circuit.opened == 1

        waiter = asyncio.create_task(circuit.admit())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # cooling down
        clock.now += 5
        assert await asyncio.wait_for(waiter, 1) is True  # the probe
        second = asyncio.create_task(circuit.admit())
        await asyncio.sleep(0.01)
        assert not second.done()  # only one probe at a time
        circuit.failed(down, probe=True)  # the probe failed: open again
        assert circuit.is_open
        clock.now += 5
        assert await asyncio.wait_for(second, 1) is True
        circuit.succeeded(probe=True)
        assert not circuit.is_open
        assert await circuit.admit() is False

    asyncio.run(go())


def test_circuit_gives_up_waiting_with_a_retryable_error() -> None:
    async def go() -> None:
        clock = Clock()
        limits = TrafficLimits(circuit_failures=1, circuit_cooldown_s=5, circuit_wait_s=20)
        circuit = Circuit(limits, clock)
        circuit.failed(_Failure(503, "overloaded"), probe=False)
        clock.now += 5
        assert await circuit.admit() is True  # the probe goes; it never comes back
        waiter = asyncio.create_task(circuit.admit())
        await asyncio.sleep(0.01)
        clock.now += 21
        with pytest.raises(RetryableError, match=r"HTTP 503: overloaded.*retried later"):
            await asyncio.wait_for(waiter, 2)

    asyncio.run(go())
