"""The start-up plan, table by table (reconcile.py's docstring)."""

from __future__ import annotations

import pytest

from pinfold.agent.domain import DomainSpec
from pinfold.agent.drivers import GuestInfo, GuestState
from pinfold.agent.reconcile import Action, Step, plan
from pinfold.agent.store import Pending, StoredVM
from pinfold.model.lifecycle import VMState
from pinfold.placement import VMSpec


def stored(name: str, pending: Pending | None = None) -> StoredVM:
    return StoredVM(VMSpec(name, 1, 128, 2.0), "", "", VMState.RUNNING, pending)


def ours(name: str) -> GuestInfo:
    return GuestInfo(name, GuestState.RUNNING, DomainSpec(name, 1, 128, frozenset({0}), 2.0))


def foreign(name: str) -> GuestInfo:
    return GuestInfo(name, GuestState.RUNNING, None)


@pytest.mark.parametrize(
    ("vm", "guest", "action"),
    [
        (stored("a", Pending.CREATE), None, Action.CREATE),
        (stored("a", Pending.CREATE), ours("a"), Action.FINISH_CREATE),
        (stored("a", Pending.DELETE), ours("a"), Action.DELETE),
        (stored("a", Pending.DELETE), None, Action.FORGET),
        (stored("a", Pending.SHUTDOWN), ours("a"), Action.FINISH_SHUTDOWN),
        (stored("a", Pending.SHUTDOWN), None, Action.MISSING),
        (stored("a"), ours("a"), Action.KEEP),
        (stored("a"), None, Action.MISSING),
        (stored("a"), foreign("a"), Action.MISSING),  # a foreign domain of the same name is not ours
        (stored("a", Pending.MIGRATE_OUT), ours("a"), Action.STAY),
        (stored("a", Pending.MIGRATE_OUT), None, Action.LEFT),
        (stored("a", Pending.INCOMING), ours("a"), Action.ARRIVED),
        (stored("a", Pending.INCOMING), None, Action.DROP),
        (stored("a", Pending.INCOMING), foreign("a"), Action.DROP),
    ],
    ids=[
        "create-not-made",
        "create-made",
        "delete-not-done",
        "delete-done",
        "shutdown-cut-short",
        "shutdown-and-vanished",
        "steady",
        "vanished",
        "impostor",
        "migration-failed-or-never-began",
        "migrated-away",
        "migrated-here",
        "never-came",
        "never-came-but-a-foreign-domain-of-that-name",
    ],
)
def test_each_stored_vm_gets_one_step(vm, guest, action):
    observed = {} if guest is None else {guest.name: guest}
    assert plan({"a": vm}, observed) == [Step(action, "a")]


def test_unknown_pinfold_domains_are_reported_and_foreign_ones_ignored():
    steps = plan({}, {"x": ours("x"), "other": foreign("other")})
    assert steps == [Step(Action.UNKNOWN, "x")]


def test_steps_follow_deploy_order_then_unknown_names():
    vms = {"b": stored("b"), "a": stored("a", Pending.CREATE)}
    steps = plan(vms, {"b": ours("b"), "z": ours("z"), "y": ours("y")})
    assert [s.name for s in steps] == ["b", "a", "y", "z"]
