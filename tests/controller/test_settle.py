"""The heartbeat's plan (`pinfold.controller.settle`), row by row of its
docstring's table: pure, no store and no HTTP."""

from __future__ import annotations

import pytest

from pinfold.controller.settle import NOT_REPORTED, Action, Move, Step, Stored, move_step, plan, vm_state
from pinfold.model.lifecycle import VMState

PERIOD = 1.0
STALE = 30.0
NOW = 1000.0
OLD = NOW - 10.0  # not recent (>= 2 periods), not stale
RECENT = NOW - 1.0  # < 2 periods
STALE_AT = NOW - 31.0  # older than STALE

S = VMState


def _plan(state: VMState, updated_at: float, reported: str | None) -> list[Step]:
    return plan(
        [Stored("v", state, updated_at)], {} if reported is None else {"v": reported}, NOW, PERIOD, STALE
    )


def test_reported_while_deleting_is_left_to_the_delete():
    for state in ("running", "shutoff", "missing"):
        assert _plan(S.DELETING, OLD, state) == []


@pytest.mark.parametrize(
    ("stored", "reported"),
    [(S.RUNNING, "shutoff"), (S.SHUTOFF, "running"), (S.RUNNING, "paused"), (S.MISSING, "running"),
     (S.RESERVED, "running"), (S.FAILED, "running"), (S.RUNNING, "missing")],
)  # fmt: skip
def test_a_reported_controller_state_is_followed(stored, reported):
    assert _plan(stored, OLD, reported) == [Step(Action.FOLLOW, "v", stored, VMState(reported))]


def test_a_reported_change_of_a_recent_record_waits_for_the_next_heartbeat():
    assert _plan(S.RUNNING, RECENT, "shutoff") == []
    assert _plan(S.RUNNING, NOW - 2 * PERIOD, "shutoff") != []  # two periods old is no longer recent


@pytest.mark.parametrize("reported", ["running", "creating", "stopping", "warming", "error", "nonsense"])
def test_the_same_state_or_an_agents_own_changes_nothing(reported):
    assert _plan(S.RUNNING, OLD, reported) == []


def test_a_deleting_vm_the_agent_lacks_is_forgotten():
    assert _plan(S.DELETING, RECENT, None) == [Step(Action.FORGET, "v", S.DELETING)]


def test_a_stale_reservation_the_agent_lacks_is_forgotten():
    assert _plan(S.RESERVED, STALE_AT, None) == [Step(Action.FORGET, "v", S.RESERVED)]


def test_a_fresh_reservation_the_agent_lacks_is_left_to_its_create():
    assert _plan(S.RESERVED, OLD, None) == []
    assert _plan(S.RESERVED, NOW - STALE, None) == []  # exactly stale_after_s: not yet stale


def test_a_missing_vm_the_agent_lacks_stays_missing():
    assert _plan(S.MISSING, STALE_AT, None) == []


@pytest.mark.parametrize("stored", [S.RUNNING, S.PAUSED, S.SHUTOFF, S.FAILED])
def test_a_vm_the_agent_lacks_is_missing(stored):
    assert _plan(stored, OLD, None) == [Step(Action.MISSING, "v", stored, S.MISSING, NOT_REPORTED)]


@pytest.mark.parametrize("stored", [S.RUNNING, S.PAUSED, S.SHUTOFF, S.FAILED])
def test_a_recent_vm_the_agent_lacks_waits_for_the_next_heartbeat(stored):
    assert _plan(stored, RECENT, None) == []


def test_steps_follow_the_records_order_and_skip_the_unchanged():
    stored = [
        Stored("c", S.RUNNING, OLD),
        Stored("a", S.DELETING, OLD),
        Stored("b", S.RUNNING, OLD),
        Stored("d", S.SHUTOFF, OLD),
    ]
    steps = plan(stored, {"b": "running", "d": "running"}, NOW, PERIOD, STALE)
    assert [(step.action, step.name) for step in steps] == [
        (Action.MISSING, "c"),
        (Action.FORGET, "a"),
        (Action.FOLLOW, "d"),
    ]


def test_vm_state_keeps_the_stored_state_for_an_agents_own():
    assert vm_state("paused", S.RUNNING) is S.PAUSED
    assert vm_state("stopping", S.RUNNING) is S.RUNNING
    assert vm_state(None, S.SHUTOFF) is S.SHUTOFF


@pytest.mark.parametrize("reported", [None, "running", "migrating", "shutoff"])
@pytest.mark.parametrize("updated_at", [RECENT, OLD, STALE_AT])
def test_a_migrating_record_is_left_to_move_step(updated_at, reported):
    assert _plan(S.MIGRATING, updated_at, reported) == []


@pytest.mark.parametrize(
    ("reported", "updated_at", "step"),
    [("migrating", STALE_AT, None), ("running", STALE_AT, Move.BACK), ("shutoff", STALE_AT, Move.BACK),
     (None, STALE_AT, Move.LAND), ("running", OLD, None), (None, OLD, None)],
)  # fmt: skip
def test_move_step_follows_the_source_once_stale(reported, updated_at, step):
    assert move_step(reported, NOW - updated_at, STALE) is step
