"""The transition table, pair by pair: what it allows leads to the state
written here (the module docstring's table, spelled out again on purpose),
and everything else is refused naming the state."""

from __future__ import annotations

import itertools

import pytest

from pinfold.model.lifecycle import (
    AGENT_STATES,
    CONTROLLER_STATES,
    Action,
    Refused,
    VMState,
    allowed,
    table,
    transition,
)

S, A = VMState, Action

#: the legal pairs besides a delete, which is legal everywhere but `migrating` and leads to `deleting`
LEGAL = {
    (S.RUNNING, A.SHUTDOWN): S.SHUTOFF,
    (S.RUNNING, A.SUSPEND): S.PAUSED,
    (S.PAUSED, A.SHUTDOWN): S.SHUTOFF,
    (S.PAUSED, A.RESUME): S.RUNNING,
    (S.SHUTOFF, A.START): S.RUNNING,
}


def expected(state: VMState, action: Action) -> VMState | None:
    if action is A.DELETE:
        return None if state is S.MIGRATING else S.DELETING
    return LEGAL.get((state, action))


PAIRS = list(itertools.product(VMState, Action))


@pytest.mark.parametrize(("state", "action"), PAIRS, ids=[f"{s}-{a}" for s, a in PAIRS])
def test_every_pair(state: VMState, action: Action) -> None:
    to = expected(state, action)
    if to is not None:
        assert transition(state, action) is to
        assert action in allowed(state)
        return
    with pytest.raises(Refused) as refused:
        transition(state, action)
    assert (refused.value.code, refused.value.state, refused.value.action) == ("invalid", state, action)
    assert refused.value.describe("web").startswith(f"web is {state.value}: {action.value} needs ")
    assert action not in allowed(state)


def test_a_refusal_names_the_state_and_what_the_action_needs() -> None:
    with pytest.raises(Refused) as refused:
        transition(S.RUNNING, A.START)
    assert refused.value.describe("web") == "web is running: start needs shutoff"
    assert refused.value.describe("web", "its agent does not report it") == (
        "web is running: its agent does not report it"
    )
    assert refused.value.describe("web", "") == "web is running"


def test_the_table_as_json_lists_every_state() -> None:
    shown = table()
    assert set(shown) == {state.value for state in VMState}
    assert shown["running"] == ["shutdown", "suspend", "delete"]
    assert shown["shutoff"] == ["start", "delete"]
    assert shown["missing"] == ["delete"]
    assert shown["migrating"] == []


def test_every_state_belongs_to_a_side() -> None:
    assert set(CONTROLLER_STATES) | set(AGENT_STATES) == set(VMState)
    assert set(CONTROLLER_STATES) & set(AGENT_STATES) == {
        S.RUNNING,
        S.PAUSED,
        S.SHUTOFF,
        S.MISSING,
        S.MIGRATING,
    }
