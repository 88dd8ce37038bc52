"""RAPID's reconcile, table row by table row (rapid/reconcile.py's docstring)."""

from __future__ import annotations

import pytest

from pinfold.model.lifecycle import VMState
from pinfold.rapid.reconcile import Action, Step, plan, settling
from pinfold.rapid.state import Pending, RapidVM, Status

NAME = "rapid-user-42"


def record(status: Status = Status.STARTED, pending: Pending = Pending.NONE) -> RapidVM:
    return RapidVM(42, NAME, status, 1, 512, vmid=7, ip="10.0.0.7", pending=pending)


@pytest.mark.parametrize(
    ("vm", "found", "step"),
    [
        (record(pending=Pending.REMOVE), None, Step(Action.KEEP, NAME)),
        (record(Status.SUSPENDED, Pending.REMOVE), VMState.RUNNING, Step(Action.KEEP, NAME)),
        (record(), None, Step(Action.MARK_REMOVE, NAME)),
        (record(Status.SUSPENDED), VMState.MISSING, Step(Action.MARK_REMOVE, NAME)),
        (record(Status.RESUMED, Pending.DS), VMState.MISSING, Step(Action.MARK_REMOVE, NAME)),
        (record(Status.STARTED), VMState.PAUSED, Step(Action.RECORD, NAME, Status.SUSPENDED)),
        (record(Status.RESUMED), VMState.PAUSED, Step(Action.RECORD, NAME, Status.SUSPENDED)),
        (record(Status.SUSPENDED), VMState.RUNNING, Step(Action.RECORD, NAME, Status.RESUMED)),
        (record(Status.STARTED), VMState.RUNNING, Step(Action.KEEP, NAME)),
        (record(Status.RESUMED), VMState.RUNNING, Step(Action.KEEP, NAME)),
        (record(Status.SUSPENDED), VMState.PAUSED, Step(Action.KEEP, NAME)),
        (record(Status.STARTED), VMState.SHUTOFF, Step(Action.KEEP, NAME)),
        (record(Status.SUSPENDED, Pending.DS), VMState.OTHER, Step(Action.KEEP, NAME)),
    ],
    ids=[
        "removing-and-gone",
        "removing-and-there",
        "gone",
        "missing",
        "missing-while-the-ds-waits",
        "started-but-paused",
        "resumed-but-paused",
        "suspended-but-running",
        "started-and-running",
        "resumed-and-running",
        "suspended-and-paused",
        "started-but-off",
        "suspended-but-other",
    ],
)
def test_each_record_gets_one_step(vm: RapidVM, found: VMState | None, step: Step) -> None:
    backend = {} if found is None else {NAME: found}
    assert plan([vm], backend) == [step]


def test_rapids_vms_no_record_names_are_deleted_and_others_left() -> None:
    backend = {"rapid-helper-1": VMState.PAUSED, "web": VMState.RUNNING, "rapid-user-9": VMState.MISSING}
    assert plan([], backend) == [Step(Action.DELETE, "rapid-helper-1"), Step(Action.DELETE, "rapid-user-9")]


def test_records_come_first_in_their_order_then_unnamed_vms_in_the_backends() -> None:
    helper = RapidVM(-1, "rapid-helper-1", Status.STARTED, 1, 1024, helper=1)
    backend = {"rapid-user-8": VMState.RUNNING, NAME: VMState.RUNNING, "rapid-user-3": VMState.RUNNING}
    steps = plan([record(), helper], backend)
    assert [(s.action, s.name) for s in steps] == [
        (Action.KEEP, NAME),
        (Action.MARK_REMOVE, "rapid-helper-1"),
        (Action.DELETE, "rapid-user-8"),
        (Action.DELETE, "rapid-user-3"),
    ]


@pytest.mark.parametrize(
    ("pending", "action"),
    [(Pending.REMOVE, Action.REMOVE), (Pending.DS, Action.TELL_DS), (Pending.NONE, None)],
    ids=["remove", "tell-the-ds", "nothing"],
)
def test_each_pass_settles_a_record_by_what_is_pending(pending: Pending, action: Action | None) -> None:
    assert settling(record(pending=pending)) == action
