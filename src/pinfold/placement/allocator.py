"""The host allocator: the pure, in-memory model of one host.

It owns the host's vNodes (one ordered CPU list per level), its memory pool
and its VMs, and decides admission, CPU choice, shrinking and pinning exactly
as DESIGN.md ("Placement core: required semantics") says. It does no I/O and
reads no clock: the agent, the controller and the simulator drive it and act
on what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pinfold.placement.arithmetic import admits, capacity_refusal, cpus_to_add, shrunk_size
from pinfold.placement.errors import PlacementError, Refusal, RefusalCode
from pinfold.placement.policies import Demand, HostColumns, progress
from pinfold.placement.snapshot import HostSnapshot
from pinfold.placement.spec import VMSpec, invalid_reason, level_key
from pinfold.placement.vnode import VNode
from pinfold.topology.model import Topology

__all__ = ["DEFAULT_CRITICAL_SIZE", "DEFAULT_RESERVED_MEMORY_MIB", "Change", "HostAllocator"]

#: Oversubscribed levels share their CPUs while any holds fewer VMs than this.
DEFAULT_CRITICAL_SIZE = 6
#: Memory kept from the VMs (for the host itself) unless a host says otherwise.
DEFAULT_RESERVED_MEMORY_MIB = 0

# Larger than any sum of distances, for masking CPUs out of an argmin.
_FAR = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class Change:
    """What a deploy or remove did beyond the VM itself.

    `pinning` is the new VM's cpuset (None for a removal, or when the allocator
    does not report pins). `repinned` maps each
    VM that was already placed, and whose cpuset changed, to its new cpuset:
    the agent re-pins those live VMs.
    """

    vm: str
    pinning: frozenset[int] | None = None
    repinned: Mapping[str, frozenset[int]] = field(default_factory=dict)


class HostAllocator:
    """vNodes, memory pool and VMs of one host.

    `critical_size` (default 6, 0 disables sharing): while any oversubscribed
    level holds fewer VMs, all oversubscribed VMs share the CPUs that premium
    VMs do not hold. `reserved_memory_mib` is kept back for the host itself.
    `report_pins=False` leaves `Change.pinning` and `Change.repinned` empty,
    for callers that pin nothing (the simulator): placement is the same, only
    the report is skipped (`pinning(name)` still answers).
    """

    def __init__(
        self,
        topology: Topology,
        critical_size: int = DEFAULT_CRITICAL_SIZE,
        reserved_memory_mib: int = DEFAULT_RESERVED_MEMORY_MIB,
        report_pins: bool = True,
    ) -> None:
        if critical_size < 0:
            raise ValueError("critical_size must be >= 0")
        if not 0 <= reserved_memory_mib < topology.memory_allowed_mib:
            raise ValueError("reserved_memory_mib must lie between 0 and the host's memory")
        if not topology.usable_cpus:
            raise ValueError("the topology leaves no usable CPU")
        self.topology = topology
        self.critical_size = critical_size
        self.report_pins = report_pins
        self.memory_usable_mib = topology.memory_allowed_mib - reserved_memory_mib
        self.memory_allocated_mib = 0
        self._distances = topology.distances
        self._usable = topology.usable_set
        self._free = topology.usable_mask.copy()
        self._free_count = len(self._usable)
        self._placed_sum = np.zeros(topology.host_count, dtype=np.int64)
        self._levels: dict[float, VNode] = {}
        self._vms: dict[str, VMSpec] = {}
        self._small_levels = 0  # oversubscribed levels below critical_size
        self._stamp = 0
        self._premium_stamp = 0
        self._pins: dict[float, tuple[tuple[Any, ...], frozenset[int]]] = {}
        self._shared: tuple[int, frozenset[int]] | None = None

    # -- queries ---------------------------------------------------------------

    @property
    def usable_cpu_count(self) -> int:
        return len(self._usable)

    @property
    def free_cpu_count(self) -> int:
        return self._free_count

    @property
    def memory_free_mib(self) -> int:
        return self.memory_usable_mib - self.memory_allocated_mib

    @property
    def levels(self) -> tuple[float, ...]:
        """Ratios of the levels that currently have a vNode, ascending."""
        return tuple(sorted(self._levels))

    @property
    def vms(self) -> Mapping[str, VMSpec]:
        """A copy of name -> spec of every VM on the host."""
        return dict(self._vms)

    def spec(self, name: str) -> VMSpec:
        """The spec VM `name` was deployed with."""
        try:
            return self._vms[name]
        except KeyError:
            raise PlacementError(RefusalCode.UNKNOWN_VM.value) from None

    def __contains__(self, name: object) -> bool:
        return name in self._vms

    def __len__(self) -> int:
        return len(self._vms)

    def vnode(self, ratio: float) -> list[int]:
        """CPU ids of that level's vNode, in the order they were added
        ([] when the level has no vNode)."""
        level = self._levels.get(float(ratio))
        return list(level.cpus) if level else []

    def level_usage(self, ratio: float) -> tuple[int, int]:
        """(C, A) of a level: CPUs in its vNode and vCPUs allocated in it."""
        level = self._levels.get(float(ratio))
        return (len(level.cpus), level.allocated) if level else (0, 0)

    def free_cpus(self) -> list[int]:
        return [int(cpu) for cpu in np.flatnonzero(self._free)]

    def sharing(self) -> bool:
        """Whether oversubscribed VMs currently share CPUs across levels: some
        non-empty oversubscribed level holds fewer than critical_size VMs."""
        return self._small_levels > 0

    def _is_small(self, level: VNode) -> bool:
        return not level.premium and 0 < len(level.vms) < self.critical_size

    def pinning(self, name: str) -> frozenset[int]:
        """CPUs every vCPU of VM `name` is pinned to right now."""
        spec = self._vms.get(name)
        if spec is None:
            raise PlacementError(RefusalCode.UNKNOWN_VM.value)
        return self._level_pins(self._levels[float(spec.ratio)])

    def status(self) -> dict[str, Any]:
        """The host in SlackVM's /status shape (DESIGN.md, "Host status")."""
        avail = self._free_count
        subset = {}
        for ratio in self.levels:
            level = self._levels[ratio]
            subset[level_key(ratio)] = {
                "pcap": len(level.cpus),
                "palloc": level.allocated,
                "vavail": len(level.cpus) * ratio - level.allocated,
                "vpotential": avail * ratio,
            }
        return {"cpu": {"avail": avail, "subset": subset}, "mem": self._memory_status()}

    def _memory_status(self) -> dict[str, Any]:
        """The memory pool as SlackVM's single subset "1", present only while
        VMs hold memory: SlackVM creates it with the first VM (an empty host
        has none), as pinfold drops a CPU level with its last VM."""
        mem_free = self.memory_free_mib
        allocated = self.memory_allocated_mib
        subset = {"1": {"pcap": allocated, "palloc": allocated, "vavail": 0, "vpotential": mem_free}}
        return {"avail": mem_free, "subset": subset if allocated > 0 else {}}

    def cpus_needed(self, vcpus: int, ratio: float) -> int:
        """CPUs the level's vNode would grow by to admit `vcpus` vCPUs."""
        cpus, allocated = self.level_usage(ratio)
        return int(cpus_to_add(cpus, allocated, float(ratio), vcpus))

    def columns(self) -> HostColumns:
        """This host as a one-row column set, for the scoring policies."""
        return HostColumns.of(
            usable_cpus=np.array([self.usable_cpu_count], dtype=np.float64),
            usable_mem=np.array([self.memory_usable_mib], dtype=np.float64),
            free_cpus=np.array([self._free_count], dtype=np.float64),
            mem_alloc=np.array([self.memory_allocated_mib], dtype=np.float64),
        )

    def progress(self, vcpus: int, memory_mib: int, ratio: float) -> float:
        """SlackVM's progress score of a candidate on this host (see
        `policies.progress`); computed whether or not the candidate fits."""
        demand = Demand(
            cpus=np.array([self.cpus_needed(vcpus, ratio)], dtype=np.float64),
            memory_mib=float(memory_mib),
        )
        return float(progress(self.columns(), demand)[0])

    def check(self, spec: VMSpec) -> Refusal | None:
        """The first check `spec` fails on this host, or None when it fits.
        Order: well-formed, unique name, CPU, memory."""
        return self._admit(spec)[0]

    def _admit(self, spec: VMSpec) -> tuple[Refusal | None, int]:
        """(refusal or None, CPUs the level's vNode must grow by)."""
        problem = invalid_reason(spec)
        if problem is not None:
            return Refusal(RefusalCode.INVALID_REQUEST, detail=problem, fits_empty=False), 0
        if spec.name in self._vms:
            return Refusal(RefusalCode.DUPLICATE_NAME, detail=spec.name), 0
        ratio = float(spec.ratio)
        needed = self.cpus_needed(spec.vcpus, ratio)
        cpu_ok, mem_ok = admits(
            needed, self._free_count, self.memory_allocated_mib, spec.memory_mib, self.memory_usable_mib
        )
        if cpu_ok and mem_ok:
            return None, needed
        refusal = capacity_refusal(
            cpu_ok, mem_ok, level=ratio, vcpus=spec.vcpus, needed=needed, free_cpus=self._free_count,
            usable_cpus=self.usable_cpu_count, memory_mib=spec.memory_mib,
            memory_free=self.memory_free_mib, memory_usable=self.memory_usable_mib,
        )  # fmt: skip
        return refusal, needed

    def fits(self, spec: VMSpec) -> bool:
        return self.check(spec) is None

    def explain(self, spec: VMSpec) -> str | None:
        """Why `spec` does not fit, starting with the stable reason string;
        None when it fits."""
        refusal = self.check(spec)
        return None if refusal is None else refusal.describe()

    # -- changes ---------------------------------------------------------------

    def deploy(self, spec: VMSpec) -> Change:
        """Place a VM: grow or seed its level's vNode, then take its memory.

        All or nothing: every check runs before anything changes, so a refusal
        (PlacementError with the stable reason) leaves the host as it was.
        """
        refusal, needed = self._admit(spec)
        if refusal is not None:
            raise PlacementError(refusal)
        ratio = float(spec.ratio)
        level = self._levels.get(ratio)
        if level is None:
            level = self._levels[ratio] = VNode(ratio, np.zeros_like(self._placed_sum))
            self._seed(level, spec.vcpus)
        else:
            self._grow(level, needed)
        was_small = self._is_small(level)
        level.add_vm(spec.name, spec.vcpus)
        self._small_levels += self._is_small(level) - was_small
        self._vms[spec.name] = spec
        self.memory_allocated_mib += spec.memory_mib
        if not self.report_pins:
            return Change(spec.name)
        repinned = self._collect_repins(exclude=spec.name)
        return Change(spec.name, self._pins[ratio][1], repinned)

    def remove(self, name: str) -> Change:
        """Remove a VM, shrink its vNode to max(ceil(A/r), M) releasing the
        newest CPUs first, and drop the vNode once it is empty."""
        spec = self._vms.pop(name, None)
        if spec is None:
            raise PlacementError(RefusalCode.UNKNOWN_VM.value)
        ratio = float(spec.ratio)
        level = self._levels[ratio]
        was_small = self._is_small(level)
        level.remove_vm(name)
        self._small_levels += self._is_small(level) - was_small
        self.memory_allocated_mib -= spec.memory_mib
        self._shrink(level, int(shrunk_size(level.allocated, level.largest, ratio)))
        if not level.vms:
            del self._levels[ratio]
            self._pins.pop(ratio, None)
        return Change(name, None, self._collect_repins() if self.report_pins else {})

    def rename(self, old: str, new: str) -> None:
        """Give a placed VM another name; its vNode, CPUs, pins and memory stay
        exactly as they are (a warm-pool VM is handed out under the name it was
        asked for, without being moved)."""
        spec = self._vms.get(old)
        if spec is None:
            raise PlacementError(RefusalCode.UNKNOWN_VM.value)
        renamed = replace(spec, name=new)
        problem = invalid_reason(renamed)
        if problem is not None:
            raise PlacementError(Refusal(RefusalCode.INVALID_REQUEST, detail=problem, fits_empty=False))
        if new in self._vms:
            raise PlacementError(Refusal(RefusalCode.DUPLICATE_NAME, detail=new))
        self._vms = {
            (new if name == old else name): (renamed if name == old else s) for name, s in self._vms.items()
        }
        level = self._levels[float(spec.ratio)]
        level.vms = {(new if name == old else name): vcpus for name, vcpus in level.vms.items()}

    # -- CPU choice ------------------------------------------------------------

    def _seed(self, level: VNode, size: int) -> None:
        """A new vNode: the free CPU farthest on average from every CPU already
        in a vNode (lowest id on ties), then the size-1 free CPUs closest to it."""
        seed = int(np.where(self._free, self._placed_sum, -1).argmax())
        self._take(level, seed)
        if size > 1:
            row = np.where(self._free, self._distances[seed], _FAR)
            for cpu in np.argsort(row, kind="stable")[: size - 1]:
                self._take(level, int(cpu))

    def _grow(self, level: VNode, count: int) -> None:
        """Add `count` CPUs one at a time, each the free CPU closest on average
        to the vNode as it stands (lowest id on ties)."""
        for _ in range(count):
            self._take(level, int(np.where(self._free, level.distance_sum, _FAR).argmin()))

    def _shrink(self, level: VNode, size: int) -> None:
        while len(level.cpus) > size:
            self._release(level, level.cpus.pop())

    def _take(self, level: VNode, cpu: int) -> None:
        self._free[cpu] = False
        self._free_count -= 1
        row = self._distances[cpu]
        level.distance_sum += row
        self._placed_sum += row
        level.cpus.append(cpu)
        self._touch(level)

    def _release(self, level: VNode, cpu: int) -> None:
        self._free[cpu] = True
        self._free_count += 1
        row = self._distances[cpu]
        level.distance_sum -= row
        self._placed_sum -= row
        self._touch(level)

    def _touch(self, level: VNode) -> None:
        self._stamp += 1
        level.stamp = self._stamp
        if level.premium:
            self._premium_stamp = self._stamp

    # -- pinning ---------------------------------------------------------------

    def _pin_key(self, level: VNode, sharing: bool) -> tuple[Any, ...]:
        """What a level's cpuset depends on right now: its own CPU list, or,
        when oversubscribed levels share, the premium vNode's."""
        if level.premium or not sharing:
            return ("own", level.stamp)
        return ("shared", self._premium_stamp)

    def _pins_for_key(self, level: VNode, key: tuple[Any, ...]) -> frozenset[int]:
        if key[0] == "own":
            return frozenset(level.cpus)
        if self._shared is None or self._shared[0] != self._premium_stamp:
            premium = self._levels.get(1.0)
            held = premium.cpus if premium else ()
            self._shared = (self._premium_stamp, self._usable.difference(held))
        return self._shared[1]

    def _level_pins(self, level: VNode) -> frozenset[int]:
        key = self._pin_key(level, self.sharing())
        cached = self._pins.get(level.ratio)
        if cached is not None and cached[0] == key:
            return cached[1]
        pins = self._pins_for_key(level, key)
        self._pins[level.ratio] = (key, pins)
        return pins

    def _collect_repins(self, exclude: str | None = None) -> dict[str, frozenset[int]]:
        """Compare each level's cpuset with the one last handed out and list
        the VMs whose cpuset moved. Only levels whose inputs changed are
        recomputed, which keeps a deploy cheap on a full host. Afterwards the
        cache holds every level's current cpuset."""
        sharing = self.sharing()
        repinned: dict[str, frozenset[int]] = {}
        for ratio, level in self._levels.items():
            key = self._pin_key(level, sharing)
            cached = self._pins.get(ratio)
            if cached is not None and cached[0] == key:
                continue
            pins = self._pins_for_key(level, key)
            self._pins[ratio] = (key, pins)
            if cached is not None and cached[1] != pins:
                repinned.update(dict.fromkeys(level.vms, pins))
        if exclude is not None:
            repinned.pop(exclude, None)
        return repinned

    # -- persistence -------------------------------------------------------------

    def copy(self) -> HostAllocator:
        """An independent copy of this host, exact down to the order of each
        vNode's CPUs and the pin cache, so that a change tried on the copy (a
        consolidation plan's migrations) does what it would do here. Cheaper
        than `restore(snapshot())`: nothing is re-checked or recomputed. The
        topology and its distance matrix are shared (neither ever changes)."""
        twin = HostAllocator.__new__(HostAllocator)
        twin.__dict__.update(self.__dict__)
        twin._free = self._free.copy()
        twin._placed_sum = self._placed_sum.copy()
        twin._levels = {ratio: level.copy() for ratio, level in self._levels.items()}
        twin._vms = dict(self._vms)
        twin._pins = dict(self._pins)
        return twin

    def snapshot(self) -> HostSnapshot:
        """The vNodes (CPUs in the order added) and the VMs (in deploy order)."""
        return HostSnapshot(
            vnodes={ratio: tuple(level.cpus) for ratio, level in self._levels.items()},
            vms=tuple(self._vms.values()),
        )

    @classmethod
    def restore(
        cls,
        topology: Topology,
        snapshot: HostSnapshot,
        critical_size: int = DEFAULT_CRITICAL_SIZE,
        reserved_memory_mib: int = DEFAULT_RESERVED_MEMORY_MIB,
        report_pins: bool = True,
    ) -> HostAllocator:
        """Rebuild the exact state of a snapshot (not a re-placement), after
        checking it: VMs well formed and uniquely named, every VM's level has a
        vNode and every vNode a VM, vNodes disjoint and within usable CPUs,
        C*r >= A and C >= M per vNode, memory within the pool. ValueError
        names the first problem; nothing is half restored."""
        host = cls(topology, critical_size, reserved_memory_mib, report_pins)
        problem = host._restore_problem(snapshot)
        if problem is not None:
            raise ValueError(f"cannot restore host: {problem}")
        for ratio, cpus in snapshot.vnodes.items():
            level = host._levels[float(ratio)] = VNode(float(ratio), np.zeros_like(host._placed_sum))
            for cpu in cpus:
                host._take(level, cpu)
        for spec in snapshot.vms:
            level = host._levels[float(spec.ratio)]
            was_small = host._is_small(level)
            level.add_vm(spec.name, spec.vcpus)
            host._small_levels += host._is_small(level) - was_small
            host._vms[spec.name] = spec
            host.memory_allocated_mib += spec.memory_mib
        host._collect_repins()  # fill the pin cache: nothing was handed out before
        return host

    def _restore_problem(self, snapshot: HostSnapshot) -> str | None:
        seen_cpus: set[int] = set()
        for ratio, cpus in snapshot.vnodes.items():
            if not cpus:
                return f"vNode {ratio} is empty"
            if float(ratio) < 1.0:
                return f"vNode level {ratio} is below 1.0"
            wrong = [cpu for cpu in cpus if cpu not in self._usable]
            if wrong:
                return f"vNode {ratio} holds CPUs that are not usable here: {wrong}"
            if len(set(cpus)) != len(cpus) or seen_cpus & set(cpus):
                return f"vNode {ratio} lists a CPU twice or shares one with another vNode"
            seen_cpus |= set(cpus)
        names: set[str] = set()
        per_level: dict[float, list[int]] = {}
        for spec in snapshot.vms:
            reason = invalid_reason(spec)
            if reason is not None:
                return f"VM {spec.name!r}: {reason}"
            if spec.name in names:
                return f"VM {spec.name!r} is listed twice"
            names.add(spec.name)
            if float(spec.ratio) not in snapshot.vnodes:
                return f"VM {spec.name!r} is at level {spec.ratio}, which has no vNode"
            per_level.setdefault(float(spec.ratio), []).append(spec.vcpus)
        for ratio, cpus in snapshot.vnodes.items():
            sizes = per_level.get(float(ratio))
            if not sizes:
                return f"vNode {ratio} has no VM"
            if len(cpus) * float(ratio) < sum(sizes) - 1e-9 or len(cpus) < max(sizes):
                return f"vNode {ratio} of {len(cpus)} CPUs cannot hold its VMs ({sum(sizes)} vCPUs)"
        memory = sum(spec.memory_mib for spec in snapshot.vms)
        if memory > self.memory_usable_mib:
            return f"VMs hold {memory} MiB, more than the {self.memory_usable_mib} MiB pool"
        return None

    # -- invariants (used by tests and by callers that restore state) ------------

    def check_invariants(self) -> None:
        """Raise AssertionError if the model is inconsistent: vNodes disjoint and
        within usable CPUs, C*r >= A and C >= M per vNode, memory within the
        pool, running sums equal to a recomputation."""
        seen: set[int] = set()
        for ratio, level in self._levels.items():
            cpus = set(level.cpus)
            assert level.vms, f"empty vNode {ratio} kept"
            assert len(cpus) == len(level.cpus), f"vNode {ratio} lists a CPU twice"
            assert not cpus & seen, f"vNode {ratio} overlaps another"
            assert cpus <= self._usable, f"vNode {ratio} holds unusable CPUs"
            assert len(cpus) * ratio >= level.allocated - 1e-9, f"vNode {ratio} over-allocated"
            assert len(cpus) >= level.largest, f"vNode {ratio} smaller than its largest VM"
            expected = self._distances[level.cpus].sum(axis=0) if level.cpus else 0
            assert np.array_equal(level.distance_sum, np.broadcast_to(expected, level.distance_sum.shape))
            seen |= cpus
        assert self._free_count == len(self._usable) - len(seen)
        assert set(self.free_cpus()) == self._usable - seen
        assert 0 <= self.memory_allocated_mib <= self.memory_usable_mib
        assert self.memory_allocated_mib == sum(spec.memory_mib for spec in self._vms.values())
