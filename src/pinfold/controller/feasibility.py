"""Does a VM fit on a host, given the VMs the database says are on it?

The controller keeps no allocator in memory (another replica may have changed
the host since): `fits` rebuilds the host from its stored topology and replays
its VMs in reservation order through the placement core, the same code the
agent runs, so the controller admits exactly what the agent will accept
(the allocator's check is the placement core's one feasibility rule,
`placement.arithmetic.admits`). It
is what `ControllerStore.reserve` calls under the host's lock.

A batched reservation (`ControllerStore.reserve_many`, a bulk create's VMs
on one host) replays the host once (`Feasibility.on_host`) and then admits
its VMs one after the other (`HostCheck.admit`, the one check of a VM
against the host under the lock): each admitted VM stays in the allocator,
so the next is checked against the host with it, exactly as if each had been
reserved alone in the same order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from pinfold.controller.store import HeldVM, Holding, HostRecord, HostShape
from pinfold.model.vm import VMRequest
from pinfold.placement import HostAllocator, PlacementError, Refusal, RefusalCode, VMSpec
from pinfold.topology import Topology, slackvm_json

__all__ = ["KEPT_HOSTS", "Feasibility", "HostCheck", "check", "cloud_reason", "fits"]

#: how many hosts' replayed allocators a controller keeps (the most recently reserved on)
KEPT_HOSTS = 256


class Feasibility:
    """`fits` with the parsed topologies kept by digest: parsing a large
    server's document (its CPU distances) costs more than the replay."""

    def __init__(self, kept_hosts: int = KEPT_HOSTS, topologies: dict[str, Topology] | None = None) -> None:
        #: parsed by digest; `topologies`: shared with the scheduler's picture, which
        #: parsed them first (a restart's first create parsed its host's again)
        self._topologies: dict[str, Topology] = {} if topologies is None else topologies
        #: replayed allocators by host: the host as replayed (its shape and
        #: VMs in order) and the allocator; the most recently used ones kept
        self._replayed: OrderedDict[str, tuple[_Replay, HostAllocator]] = OrderedDict()
        self._kept_hosts = kept_hosts
        self._lock = threading.Lock()

    def topology(self, host: HostRecord) -> Topology:
        if not host.topology_digest:
            return slackvm_json.from_dict(host.topology)
        return self.parsed(host.topology_digest, host.topology)

    def parsed(self, digest: str, document: Mapping[str, Any]) -> Topology:
        """The topology `document` (stored under `digest`) describes, parsed once."""
        cached = self._topologies.get(digest)
        if cached is None:
            cached = self._topologies[digest] = slackvm_json.from_dict(document)
        return cached

    def __call__(
        self, host: HostRecord, existing: Sequence[Holding], new: VMRequest
    ) -> tuple[str, Refusal] | None:
        return check(host, existing, new, self.topology)

    def on_host(self, host: HostRecord, existing: Sequence[Holding]) -> HostCheck:
        """The host with `existing` replayed, ready to admit new VMs in turn.
        The allocator the last check of this host left is taken instead of a
        replay when it holds exactly `existing` (the same VMs in the same
        order, on the same shape): replaying a host's VMs at each reservation
        was a cost growing with them (0.06 ms a VM). The caller holds the
        host's lock, so no other check of this host runs meanwhile."""
        if host.draining or not host.topology_digest:
            return HostCheck(host, existing, self.topology)
        replay = _Replay(host.topology_digest, host.critical_size, host.reserved_memory_mib,
                         tuple(map(_held, existing)))  # fmt: skip
        with self._lock:
            kept = self._replayed.pop(host.id, None)
        allocator = kept[1] if kept is not None and kept[0] == replay else None
        check = HostCheck(host, existing, self.topology, allocator, partial(self._keep, host.id))
        check.keep(replay)
        return check

    def _keep(self, host_id: str, replay: _Replay, allocator: HostAllocator) -> None:
        with self._lock:
            self._replayed[host_id] = (replay, allocator)
            self._replayed.move_to_end(host_id)
            while len(self._replayed) > self._kept_hosts:
                self._replayed.popitem(last=False)


class HostCheck:
    """One host under its lock, its VMs replayed once: `admit` checks new VMs
    against it one after the other, keeping each one it admits."""

    def __init__(
        self,
        host: HostRecord,
        existing: Sequence[Holding],
        topology_of: Callable[[HostRecord], Topology],
        replayed: HostAllocator | None = None,
        keep: Callable[[_Replay, HostAllocator], None] | None = None,
    ) -> None:
        """`replayed`: the host's allocator holding `existing` already (no
        replay); `keep` is told the allocator and what it holds after each
        admission (`Feasibility` keeps it for the next check of the host)."""
        self.host = host
        made = replayed if replayed is not None else _replayed(host, existing, topology_of)
        self._allocator = made if isinstance(made, HostAllocator) else None
        self._unusable = None if isinstance(made, HostAllocator) else made
        self._keep = keep
        self._replay: _Replay | None = None

    def keep(self, replay: _Replay) -> None:
        """Tell `keep` what the allocator holds now (`replay`)."""
        self._replay = replay
        if self._keep is not None and self._allocator is not None:
            self._keep(replay, self._allocator)

    def admit(self, new: VMRequest) -> tuple[str, Refusal] | None:
        """None when `new` fits on the host as it stands (then it stays
        placed there, for the next VM's check), else why not: the text and
        the refusal as data. The single place a VM is checked against a host
        at reservation: any further rule of admission belongs here."""
        if self._unusable is not None or self._allocator is None:
            return self._unusable
        try:
            self._allocator.deploy(new.spec)
        except PlacementError as exc:  # a refusal changes nothing in the allocator
            return exc.refusal.describe(), exc.refusal
        if self._replay is not None:
            self.keep(self._replay.with_vm(new.spec))
        return None


@dataclass(frozen=True, slots=True)
class _Replay:
    """What a replayed allocator holds: the host's shape and its VMs in order."""

    digest: str
    critical_size: int
    reserved_memory_mib: int
    vms: tuple[HeldVM, ...]

    def with_vm(self, spec: VMSpec) -> _Replay:
        return _Replay(
            self.digest, self.critical_size, self.reserved_memory_mib, (*self.vms, HeldVM.of(spec))
        )


def _held(vm: Holding) -> HeldVM:
    """`vm` as a replay holds it: the store's own rows are already (no `VMSpec` made for each)."""
    return vm if isinstance(vm, HeldVM) else HeldVM.of(vm.spec)


def cloud_reason(host: HostRecord | HostShape) -> str | None:
    """Why a cloud agent's host takes no VM from the controller (None: it is no cloud's).
    pinfold pins nothing on a cloud, so the host has no topology to replay VMs through
    (its registration's is a placeholder marked `cloud`); its agent makes VMs itself."""
    kind = host.topology.get("cloud")
    if not kind:
        return None
    return (
        f"host {host.id!r} is an OpenStack cloud's agent ({kind}): the controller places no VM there "
        "(pinfold cannot pin on a cloud); create VMs on that agent's own API"
    )


def _from_json(host: HostRecord) -> Topology:
    return slackvm_json.from_dict(host.topology)


def fits(
    host: HostRecord,
    existing: Sequence[Holding],
    new: VMRequest,
    topology_of: Callable[[HostRecord], Topology] = _from_json,
) -> str | None:
    """None when `new` fits on `host` after `existing` (in seq order), else
    the refusal for people (`Refusal.describe()`: "not enough cpu at level
    2.0: needs 1 CPUs, 0 free of 8"). A draining host refuses everything."""
    refused = check(host, existing, new, topology_of)
    return None if refused is None else refused[0]


def check(
    host: HostRecord,
    existing: Sequence[Holding],
    new: VMRequest,
    topology_of: Callable[[HostRecord], Topology] = _from_json,
) -> tuple[str, Refusal] | None:
    """`fits` with the refusal as data too: (the text, the `Refusal`). A host
    that cannot be used (draining, a description that does not parse) gives a
    `host unavailable` refusal whose detail is the text's reason; one holding
    more than it can (re-registered smaller) too, its detail the whole text (the
    numbers of the replayed VM are not this request's)."""
    return HostCheck(host, existing, topology_of).admit(new)


def _replayed(
    host: HostRecord, existing: Sequence[Holding], topology_of: Callable[[HostRecord], Topology]
) -> HostAllocator | tuple[str, Refusal]:
    """The host's allocator with `existing` deployed in order, or why the
    host admits nothing (draining, unusable, holding more than it can)."""
    unavailable = RefusalCode.HOST_UNAVAILABLE
    if host.draining:
        why = f"host {host.id!r} is draining"
        return f"{unavailable.value}: {why}", Refusal(unavailable, detail=why)
    cloud = cloud_reason(host)
    if cloud is not None:
        return f"{unavailable.value}: {cloud}", Refusal(unavailable, detail=cloud)
    try:
        allocator = HostAllocator(
            topology_of(host),
            host.critical_size,
            host.reserved_memory_mib,
            report_pins=False,
        )
    except (KeyError, TypeError, ValueError) as exc:
        why = f"host {host.id!r} has an unusable description: {exc}"
        return f"{unavailable.value}: {why}", Refusal(unavailable, detail=why)
    for vm in existing:
        try:
            allocator.deploy(vm.spec)
        except PlacementError as exc:
            # The host was re-registered smaller than what it holds: admit nothing more.
            text = f"{exc.refusal.describe()} (replaying vm {vm.name!r}: host {host.id!r} holds too much)"
            return text, Refusal(unavailable, detail=text)
    return allocator
