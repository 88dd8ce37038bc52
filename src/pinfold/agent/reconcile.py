"""What to do at start so that the store and the hypervisor agree.

A pure function from what the store wants and what the hypervisor has to a
list of actions; the agent carries them out. Table-tested in
tests/agent/test_reconcile.py. The store is written before the hypervisor is
touched, so after a crash at any point:

| store | pending | hypervisor | action |
|---|---|---|---|
| VM | create | no domain | create it (the placement was durable) |
| VM | create | domain | keep it (started or resumed if it was not), clear the pending mark, check pins |
| VM | delete | domain | delete it, then forget the VM |
| VM | delete | no domain | forget the VM |
| VM | shutdown | domain | record the state it is in (the wait was cut short) |
| VM | shutdown | no domain | report it missing |
| VM | migrate-out | domain | stay: once no migration moves it away (waited for), record its state |
| VM | migrate-out | no domain | it left (the target has it): forget it, disk and seed kept unless copied |
| VM | incoming | domain | it arrived: record its state, clear the mark, check pins |
| VM | incoming | no domain | it never came: drop the reservation (forget it, disk and seed unless shared) |
| VM | none | domain | keep it, check pins |
| VM | none | no domain | report it missing (never recreated silently) |
| none | - | pinfold domain | report it as unknown, never touch it |
| none | - | other domain | ignore it |

A migrate-out's `stay` may turn out `left` when carried out: the agent was
killed during its send and the hypervisor still migrates the guest (peer to
peer, its daemon goes on), so the start waits for that migration to end and
forgets the VM if it left (`StartUp._finish_migrate_out`).

Files a crash left before any row names them (an overlay half made, a seed
written by a create or by a migration's prepare before its row was stored)
are removed before the plan (`StartUp.start_up`).

A stored VM's domain is the one named `domain` (a VM handed out by a warm pool
keeps its domain's name); the steps name the VMs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pinfold.agent.drivers.base import GuestInfo
from pinfold.agent.store import Pending, StoredVM

__all__ = ["Action", "Step", "plan"]


class Action(StrEnum):
    CREATE = "create"
    FINISH_CREATE = "finish create"
    DELETE = "delete"
    FORGET = "forget"
    FINISH_SHUTDOWN = "finish shutdown"
    #: a migration's source still has the guest: it stays, its mark cleared
    STAY = "stay"
    #: a migration's source no longer has the guest: it left
    LEFT = "left"
    #: a migration's target has the guest: it arrived
    ARRIVED = "arrived"
    #: a migration's target never got the guest: its reservation goes
    DROP = "drop"
    KEEP = "keep"
    MISSING = "missing"
    UNKNOWN = "unknown"
    #: never planned: the agent reports a VM it could not re-pin to its vNode after the steps
    REPIN = "re-pin"


@dataclass(frozen=True)
class Step:
    """`error` is set by the agent when carrying the step out failed."""

    action: Action
    name: str
    error: str = ""


def plan(stored: Mapping[str, StoredVM], observed: Mapping[str, GuestInfo]) -> list[Step]:
    """Steps in a fixed order: stored VMs in deploy order, then unknown domains by name."""
    steps: list[Step] = []
    for name, vm in stored.items():
        present = vm.domain in observed and observed[vm.domain].spec is not None
        if vm.pending is Pending.DELETE:
            steps.append(Step(Action.DELETE if present else Action.FORGET, name))
        elif vm.pending is Pending.CREATE:
            steps.append(Step(Action.FINISH_CREATE if present else Action.CREATE, name))
        elif vm.pending is Pending.SHUTDOWN:
            steps.append(Step(Action.FINISH_SHUTDOWN if present else Action.MISSING, name))
        elif vm.pending is Pending.MIGRATE_OUT:
            steps.append(Step(Action.STAY if present else Action.LEFT, name))
        elif vm.pending is Pending.INCOMING:
            steps.append(Step(Action.ARRIVED if present else Action.DROP, name))
        else:
            steps.append(Step(Action.KEEP if present else Action.MISSING, name))
    domains = {vm.domain for vm in stored.values()}
    for name in sorted(observed):
        if name not in domains and observed[name].spec is not None:
            steps.append(Step(Action.UNKNOWN, name))
    return steps
