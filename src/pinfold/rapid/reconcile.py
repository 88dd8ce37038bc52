"""What RAPID's VMM does so that its records and the back-end's VMs agree.

Pure functions; the VMM carries the steps out (`VMM.reconcile` at start,
`VMM.settle` on every pass of its register loop). Table-tested in
tests/rapid/test_reconcile.py.

At start (`plan`), each record against the back-end's VM of its name
(`Backend.vms()`: the guest's state now, MISSING for one gone):

| record | back-end's VM | step |
|---|---|---|
| being removed | any | keep: `settle` removes it |
| any other | none, or MISSING | mark it for removal (`settle` tells the DS STOPPED; a helper is made again) |
| STARTED or RESUMED | PAUSED | record SUSPENDED, marked for the DS (a crash cut a suspend off) |
| SUSPENDED | RUNNING | record RESUMED, marked for the DS (a crash cut a resume off) |
| any other | any other | keep |
| none | `rapid-user-*`, `rapid-helper-*` | delete it (a create cut off before its record: nobody knows it) |
| none | any other name | leave it (not RAPID's) |

On each pass (`settling`), a record by what is left to do for it:

| pending | step |
|---|---|
| REMOVE | remove: delete the VM, tell the DS STOPPED, forget the record |
| DS | tell the DS all it should know (`VMM._tell_ds`) |
| none | nothing |

The steps name the VMs by their back-end name; records come first, in the
state's order, then the VMs no record names, in the back-end's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pinfold.model.lifecycle import VMState
from pinfold.rapid.state import Pending, RapidVM, Status

__all__ = ["OURS", "Action", "Step", "plan", "settling"]

#: the back-end names of the VMs RAPID makes
OURS = ("rapid-user-", "rapid-helper-")


class Action(StrEnum):
    KEEP = "keep"
    MARK_REMOVE = "mark for removal"
    RECORD = "record status"
    DELETE = "delete"
    REMOVE = "remove"
    TELL_DS = "tell the DS"


@dataclass(frozen=True)
class Step:
    """`status` is the one to record (RECORD only)."""

    action: Action
    name: str
    status: Status | None = None


#: (the guest's state, the recorded status) -> the status it really has
_REAL_STATUS: dict[tuple[VMState, Status], Status] = {
    (VMState.PAUSED, Status.STARTED): Status.SUSPENDED,
    (VMState.PAUSED, Status.RESUMED): Status.SUSPENDED,
    (VMState.RUNNING, Status.SUSPENDED): Status.RESUMED,
}


def plan(records: Iterable[RapidVM], backend: Mapping[str, VMState]) -> list[Step]:
    """The start-up steps (the first table)."""
    steps = []
    unnamed = dict(backend)
    for vm in records:
        found = unnamed.pop(vm.vm_name, None)
        steps.append(_step(vm, found))
    steps += [Step(Action.DELETE, name) for name in unnamed if name.startswith(OURS)]
    return steps


def _step(vm: RapidVM, found: VMState | None) -> Step:
    if vm.removing:
        return Step(Action.KEEP, vm.vm_name)
    if found is None or found is VMState.MISSING:
        return Step(Action.MARK_REMOVE, vm.vm_name)
    real = _REAL_STATUS.get((found, vm.status))
    if real is not None:
        return Step(Action.RECORD, vm.vm_name, real)
    return Step(Action.KEEP, vm.vm_name)


def settling(vm: RapidVM) -> Action | None:
    """What a pass does for a record (the second table): REMOVE, TELL_DS or nothing."""
    if vm.removing:
        return Action.REMOVE
    if vm.pending is Pending.DS:
        return Action.TELL_DS
    return None
