"""The batch state machine: one table, and the rules read from it."""

from __future__ import annotations

import pytest

from overnight.domain.batches import TERMINAL_STATES, TRANSITIONS, BatchState, allowed_sources

S = BatchState


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(BatchState)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_have_no_exits(state: BatchState) -> None:
    assert state.terminal
    assert TRANSITIONS[state] == frozenset()


def test_terminal_set() -> None:
    assert frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.EXPIRED}) == TERMINAL_STATES
    assert not S.PENDING.terminal
    assert not S.RUNNING.terminal


def test_forward_transitions_allowed() -> None:
    assert S.RUNNING in TRANSITIONS[S.PENDING]
    assert S.SUCCEEDED in TRANSITIONS[S.RUNNING]
    for target in (S.CANCELLED, S.EXPIRED, S.FAILED):
        assert target in TRANSITIONS[S.PENDING]
        assert target in TRANSITIONS[S.RUNNING]


def test_no_way_back_or_shortcut() -> None:
    assert S.PENDING not in TRANSITIONS[S.RUNNING]
    assert S.SUCCEEDED not in TRANSITIONS[S.PENDING]  # success needs RUNNING first
    for state in BatchState:
        assert state not in TRANSITIONS[state]
        assert S.PENDING not in TRANSITIONS[state]


def test_allowed_sources() -> None:
    assert allowed_sources(S.RUNNING) == {S.PENDING}
    assert allowed_sources(S.SUCCEEDED) == {S.RUNNING}
    assert allowed_sources(S.CANCELLED) == {S.PENDING, S.RUNNING}
    assert allowed_sources(S.EXPIRED) == {S.PENDING, S.RUNNING}
    assert allowed_sources(S.FAILED) == {S.PENDING, S.RUNNING}
    assert allowed_sources(S.PENDING) == frozenset()


def test_allowed_sources_agrees_with_table() -> None:
    for target in BatchState:
        for source in BatchState:
            assert (source in allowed_sources(target)) == (target in TRANSITIONS[source])


@pytest.mark.parametrize("state", list(BatchState))
def test_wire_names(state: BatchState) -> None:
    assert state.wire == f"BATCH_STATE_{state.name}"


def test_wire_name_examples() -> None:
    assert S.RUNNING.wire == "BATCH_STATE_RUNNING"
    assert S.SUCCEEDED.wire == "BATCH_STATE_SUCCEEDED"
    assert S.CANCELLED.wire == "BATCH_STATE_CANCELLED"
