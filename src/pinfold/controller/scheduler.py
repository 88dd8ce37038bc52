"""The controller's picture of the cluster, for ranking hosts fast.

A `Cluster` of the placement core, rebuilt from the database and kept up to
date with this controller's own reservations. It only ranks: the decision is
the reservation (`ControllerStore.reserve`), exact under the host's lock. So
the picture may lag behind another replica's reservations without harm: a
host it thinks has room refuses at reservation, and the picture of that host
is refreshed from the database before the next host is tried.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from pinfold.controller.feasibility import cloud_reason
from pinfold.controller.store import HostRecord, HostShape, VMRecord
from pinfold.placement import Cluster, Decision, GroupRule, HostAllocator, PlacementError, VMSpec
from pinfold.placement.consolidation import Budget, Plan, plan_consolidation
from pinfold.topology import Topology, slackvm_json

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(self) -> None:
        self._cluster = Cluster()
        self._shapes: dict[str, tuple[str, int, int]] = {}
        #: parsed topologies by digest (many hosts share one model), shared with
        #: the feasibility check (`Feasibility(topologies=...)`)
        self.topologies: dict[str, Topology] = {}
        self._eligible_for: Sequence[str] | None = None
        self._eligible: list[str] | None = None
        #: cloud agents' hosts, never in the picture, with the reason (`cloud_reason`)
        self.clouds: dict[str, str] = {}

    @property
    def hosts(self) -> tuple[str, ...]:
        return self._cluster.hosts

    def rebuild(self, hosts: Sequence[HostShape | HostRecord], vms: Sequence[VMRecord]) -> None:
        """Start again from the database's hosts and VMs (in seq order)."""
        by_host: dict[str, list[VMRecord]] = {}
        for vm in vms:
            if vm.host_id is not None:
                by_host.setdefault(vm.host_id, []).append(vm)
        shapes = {}
        pictured = []
        self.clouds = {}
        for host in hosts:
            allocator = self._allocator(host)
            if allocator is None:
                continue
            _replay(allocator, by_host.get(host.id, ()))
            pictured.append((host.id, allocator))
            shapes[host.id] = _shape(host)
        cluster = Cluster()
        cluster.add_hosts(pictured)
        self._cluster, self._shapes = cluster, shapes
        self._eligible_for = None

    def add(self, host: HostRecord, vms: Sequence[VMRecord]) -> bool:
        """Bring a newly registered host into the picture; False when that
        cannot be done in place (it was known with another shape, or holds a
        VM the picture places elsewhere): the caller rebuilds."""
        if host.id in self._shapes:
            return self.knows(host)
        allocator = self._allocator(host)
        if allocator is None:
            return True  # unusable: never eligible, `fits` says why
        _replay(allocator, vms)
        try:
            self._cluster.add_host(host.id, allocator)
        except ValueError:
            return False
        self._shapes[host.id] = _shape(host)
        self._eligible_for = None
        return True

    def knows(self, host: HostRecord) -> bool:
        """Whether the picture has this host as it is now registered."""
        return self._shapes.get(host.id) == _shape(host)

    def refresh_host(self, host_id: str, vms: Sequence[VMRecord]) -> bool:
        """Replace the picture of one host's VMs; False when that cannot be
        done in place (the caller rebuilds)."""
        if host_id not in self._shapes:
            return False
        allocator = self._cluster.allocator(host_id)
        for name in list(allocator.vms):
            allocator.remove(name)
        _replay(allocator, vms)
        try:
            self._cluster.sync(host_id)
        except ValueError:  # a name the picture still places on another host
            return False
        return True

    def stale_hosts(
        self, names_on: Mapping[str, AbstractSet[str]], under_way: AbstractSet[str] = frozenset()
    ) -> list[str] | None:
        """The hosts whose VMs in the picture are not those of `names_on`
        (each host's VM names in the database); None when a host the picture
        lacks holds VMs (the caller rebuilds). A name in `under_way` (a create
        this controller has under way: held in the picture before its row is
        committed) is no difference: its create brings both in step, and
        reading its host again mid-create would drop it from the picture."""
        if any(host_id not in self._shapes for host_id in names_on):
            return None
        stale = []
        for host_id in self._shapes:
            pictured = self._cluster.allocator(host_id).vms.keys()
            stored = names_on.get(host_id, frozenset())
            if pictured != stored and not (pictured ^ stored) <= under_way:
                stale.append(host_id)
        return stale

    def choose(
        self, spec: VMSpec, policy: str, eligible: Sequence[str], group: GroupRule | None = None
    ) -> Decision:
        """Hosts the picture lacks are left out. The filtered list is kept for
        the same `eligible` object (the controller reuses it for a moment), and
        is None when every host is eligible, the usual case, which spares
        building a mask over thousands of hosts."""
        if self._eligible_for is not eligible:
            known = [host for host in eligible if host in self._shapes]
            self._eligible_for = eligible
            self._eligible = None if len(known) == len(self._cluster) else known
        return self._cluster.choose(spec, policy, self._eligible, group)

    def plan(
        self,
        budget: Budget,
        now: float,
        *,
        policy: str,
        targets: Collection[str],
        frozen: Collection[str],
        sources: Collection[str] | None = None,
        give_up_after: int | None = 5,
        empty_targets: bool = False,
    ) -> Plan:
        """Migrations that empty hosts of the picture (`plan_consolidation`,
        which leaves the picture as it is); `targets` are left out unless
        the picture has them."""
        known = [host for host in targets if host in self._shapes]
        return plan_consolidation(
            self._cluster, budget, now, policy=policy, sources=sources, targets=known, frozen=frozen,
            give_up_after=give_up_after, empty_targets=empty_targets,
        )  # fmt: skip

    def placed(self, host_id: str, spec: VMSpec) -> bool:
        """Note a reservation this controller made; False if the picture
        disagrees (stale: the caller refreshes the host)."""
        try:
            self._cluster.deploy_on(host_id, spec)
        except (PlacementError, KeyError, ValueError):
            return False
        return True

    def holds(self, name: str) -> bool:
        """Whether a VM of that name is in the picture (on some host)."""
        return self._cluster.host_of(name) is not None

    def removed(self, name: str) -> None:
        if self.holds(name):
            self._cluster.remove(name)

    def _allocator(self, host: HostShape | HostRecord) -> HostAllocator | None:
        """None for a host the picture leaves out: a cloud's (noted in `clouds`), or one
        whose description does not parse."""
        why = cloud_reason(host)
        if why is not None:
            self.clouds[host.id] = why
            return None
        self.clouds.pop(host.id, None)
        text = _shape(host)[0]
        try:
            topology = self.topologies.get(text) or slackvm_json.from_dict(host.topology)
            self.topologies[text] = topology
            return HostAllocator(topology, host.critical_size, host.reserved_memory_mib, report_pins=False)
        except (KeyError, TypeError, ValueError):
            return None  # an unusable description: `fits` refuses it with the reason


def _shape(host: HostShape | HostRecord) -> tuple[str, int, int]:
    digest = host.topology_digest or json.dumps(host.topology, sort_keys=True)
    return digest, host.critical_size, host.reserved_memory_mib


def _replay(allocator: HostAllocator, vms: Iterable[VMRecord]) -> None:
    for vm in vms:
        try:
            allocator.deploy(vm.spec)
        except PlacementError:
            continue  # the host holds more than it can: the reservation will refuse
