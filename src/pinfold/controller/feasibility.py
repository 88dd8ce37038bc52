"""Does a VM fit on a host, given the VMs the database says are on it?

The controller keeps no allocator in memory (another replica may have changed
the host since): `fits` rebuilds the host from its stored topology and replays
its VMs in reservation order through the placement core, the same code the
agent runs, so the controller admits exactly what the agent will accept. It
is what `ControllerStore.reserve` calls under the host's lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from pinfold.controller.store import HostRecord, NewVM, VMRecord
from pinfold.placement import HostAllocator, PlacementError, RefusalCode
from pinfold.topology import slackvm_json

__all__ = ["fits"]


def fits(host: HostRecord, existing: Sequence[VMRecord], new: NewVM) -> str | None:
    """None when `new` fits on `host` after `existing` (in seq order), else
    the refusal for people (`Refusal.describe()`: "not enough cpu at level
    2.0: needs 1 CPUs, 0 free of 8"). A draining host refuses everything."""
    if host.draining:
        return f"{RefusalCode.HOST_UNAVAILABLE.value}: host {host.id!r} is draining"
    try:
        allocator = HostAllocator(
            slackvm_json.from_dict(host.topology),
            host.critical_size,
            host.reserved_memory_mib,
            report_pins=False,
        )
    except (KeyError, TypeError, ValueError) as exc:
        return f"{RefusalCode.HOST_UNAVAILABLE.value}: host {host.id!r} has an unusable description: {exc}"
    for vm in existing:
        try:
            allocator.deploy(vm.spec)
        except PlacementError as exc:
            # The host was re-registered smaller than what it holds: admit nothing more.
            return f"{exc.refusal.describe()} (replaying vm {vm.name!r}: host {host.id!r} holds too much)"
    try:
        allocator.deploy(new.spec)
    except PlacementError as exc:
        return exc.refusal.describe()
    return None
