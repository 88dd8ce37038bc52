"""Replay a trace on a simulated cluster through the placement core.

A `Scenario` says which cluster (fixed size or elastic) and which policy, or
`segregated`: one elastic cluster per level, SlackVM's baseline. The replay
drives `pinfold.placement.Cluster` (the very allocator and scoring the agent and
controller use) and records, at the end of every instant, what the reports
need: hosts in use, the lower bound, allocated and unallocated CPU and memory,
and the vNode sizes of one host.

With `groups` (`pinfold.sim.groups`, `--groups`), each VM of a group is
placed with its group's rule (`placement.GroupRule`, the controller's):
the members running at that moment count. An elastic cluster opens a host
for a VM only when its group allows a host without members.

With `Scenario.consolidation`, the replay also calls the consolidation
planner every period and carries out its migrations (see
`pinfold.sim.consolidate`). Plans and migration ends are timers between the
trace's instants: a timer due before an instant runs, and is sampled, at its
own time; one due at an instant runs after that instant's trace events.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pinfold.placement import (
    DEFAULT_CRITICAL_SIZE,
    DEFAULT_POLICY,
    Cluster,
    GroupRule,
    HostAllocator,
    PlacementError,
    VMSpec,
    get_policy,
    host_refusal,
)
from pinfold.placement.consolidation import Budget, Migration, Verdict, plan_consolidation
from pinfold.sim.consolidate import Consolidation, shadow_name
from pinfold.sim.events import EventList, order_events, walk
from pinfold.sim.groups import TraceGroups
from pinfold.sim.trace import Trace
from pinfold.topology import Topology

__all__ = ["SEGREGATED", "Result", "Scenario", "Series", "simulate"]

SEGREGATED = "segregated"


@dataclass(frozen=True)
class Scenario:
    """`policy` is a placement policy name or "segregated"; `hosts` a fixed
    cluster size, or None for an elastic cluster (a host is opened whenever
    no open host fits). Segregated clusters are always elastic."""

    policy: str = DEFAULT_POLICY
    hosts: int | None = None
    segregated_policy: str = DEFAULT_POLICY
    critical_size: int = DEFAULT_CRITICAL_SIZE
    consolidation: Consolidation | None = None

    def __post_init__(self) -> None:
        if self.policy == SEGREGATED:
            get_policy(self.segregated_policy)
            if self.hosts is not None:
                raise ValueError("segregated is a baseline of elastic clusters: use it without --hosts")
            if self.consolidation is not None:
                raise ValueError("segregated is the baseline without migration: it takes no consolidation")
        else:
            get_policy(self.policy)
        if self.hosts is not None and self.hosts < 1:
            raise ValueError("a fixed cluster needs at least one host")

    @property
    def elastic(self) -> bool:
        return self.hosts is None

    @property
    def name(self) -> str:
        """The policy, and the consolidation budget when there is one."""
        return self.policy + (self.consolidation.label if self.consolidation else "")


@dataclass
class Series:
    """Per-instant samples (one entry per instant with events). Every host
    has `host_cpus` usable CPUs and `host_memory_mib` MiB (one topology per
    replay), so the capacity of the hosts in use is derived, not stored."""

    time: npt.NDArray[np.int64]
    hosts_in_use: npt.NDArray[np.int32]
    lower_bound: npt.NDArray[np.int32]
    vms_running: npt.NDArray[np.int32]
    cpus_allocated: npt.NDArray[np.int32]
    memory_allocated: npt.NDArray[np.int64]
    #: vNode size per level on the observed host: shape (instants, levels)
    observed_vnodes: npt.NDArray[np.int32]
    host_cpus: int
    host_memory_mib: int

    @classmethod
    def empty(cls, size: int, levels: int, host_cpus: int, host_memory_mib: int) -> Series:
        return cls(
            time=np.zeros(size, dtype=np.int64),
            hosts_in_use=np.zeros(size, dtype=np.int32),
            lower_bound=np.zeros(size, dtype=np.int32),
            vms_running=np.zeros(size, dtype=np.int32),
            cpus_allocated=np.zeros(size, dtype=np.int32),
            memory_allocated=np.zeros(size, dtype=np.int64),
            observed_vnodes=np.zeros((size, levels), dtype=np.int32),
            host_cpus=host_cpus,
            host_memory_mib=host_memory_mib,
        )

    def trimmed(self, size: int) -> Series:
        """The first `size` samples (a replay that consolidates reserves room
        for samples at its timers, and may use less)."""
        return Series(
            self.time[:size], self.hosts_in_use[:size], self.lower_bound[:size], self.vms_running[:size],
            self.cpus_allocated[:size], self.memory_allocated[:size], self.observed_vnodes[:size],
            self.host_cpus, self.host_memory_mib,
        )  # fmt: skip

    @property
    def cpus_in_use_hosts(self) -> npt.NDArray[np.int64]:
        """Usable CPUs of the hosts in use, per instant."""
        return self.hosts_in_use.astype(np.int64) * self.host_cpus

    @property
    def memory_in_use_hosts(self) -> npt.NDArray[np.int64]:
        """Usable MiB of the hosts in use, per instant."""
        return self.hosts_in_use.astype(np.int64) * self.host_memory_mib


@dataclass
class Result:
    scenario: Scenario
    name: str
    levels: list[float]
    series: Series
    vms: int
    placed: int
    rejected: list[str]
    never_fit: list[str]
    zero_lifetime: int
    hosts_opened: int
    observed_host: str | None
    wall_seconds: float
    events: int
    cluster_hosts: dict[str, int] = field(default_factory=dict)
    #: VMs that lived on the observed host: trace index -> (arrival, departure or None)
    observed_stays: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    migrations: MigrationLog | None = None
    #: of `rejected`, the VMs refused by their group's hard rule (they would have fit without it)
    group_rejected: list[str] = field(default_factory=list)


@dataclass
class MigrationLog:
    """What consolidation did in one replay. `plans` holds one row per plan:
    (time, migrations, then how many hosts got each verdict, in `Verdict`'s
    order: emptied, no target, cooldown, frozen, over budget, not tried)."""

    plans: list[tuple[int, ...]] = field(default_factory=list)
    started: int = 0
    completed: int = 0
    cancelled: int = 0  # the VM left while it migrated
    refused: int = 0  # a target refused the planned VM (never expected: counted to show it)
    seconds: int = 0  # total migration time
    per_vm: Counter[str] = field(default_factory=Counter)
    planning_seconds: float = 0.0


class _Pool:
    """One cluster: fixed, or elastic (opens hosts from a template topology)."""

    def __init__(self, topology: Topology, scenario: Scenario, policy: str, prefix: str) -> None:
        self.topology = topology
        self.critical_size = scenario.critical_size
        self.policy = policy
        self.prefix = prefix
        self.cluster = Cluster()
        self.elastic = scenario.elastic
        self.template = HostAllocator(topology, critical_size=scenario.critical_size)
        self.cluster.add_hosts([self._new_host(i) for i in range(scenario.hosts or 0)])

    def _name(self, number: int) -> str:
        return f"{self.prefix}{number:05d}"

    def _new_host(self, number: int) -> tuple[str, HostAllocator]:
        allocator = HostAllocator(self.topology, critical_size=self.critical_size, report_pins=False)
        return self._name(number), allocator

    def _open(self) -> str:
        name, allocator = self._new_host(len(self.cluster))
        self.cluster.add_host(name, allocator)
        return name

    def place(
        self, spec: VMSpec, avoid: Container[str] = frozenset(), group: GroupRule | None = None
    ) -> tuple[str, int] | None:
        """Deploy `spec` on the policy's host (opening one if elastic), never
        on a host of `avoid` (being emptied) nor one `group`'s rule rules out;
        returns the host and the CPUs its vNodes grew by, or None if refused."""
        host = self.cluster.best_host(spec, self.policy, group)
        if host is not None and host in avoid:
            eligible = [name for name in self.cluster.hosts if name not in avoid]
            host = self.cluster.choose(spec, self.policy, eligible, group).host
        if host is None:
            if not self.elastic or not self.template.fits(spec) or not self.opens_for(group):
                return None
            host = self._open()
        return host, self.deploy_on(host, spec)

    def opens_for(self, group: GroupRule | None) -> bool:
        """Whether `group`'s rule allows a new, empty host (not for affinity
        once a member runs here: the VM goes with its members or nowhere)."""
        if group is None:
            return True
        where = {member: self.cluster.host_of(member) for member in group.members}
        return host_refusal(group, self._name(len(self.cluster)), where) is None

    def fits_without(self, spec: VMSpec) -> bool:
        """Whether `spec` would have been placed without its group."""
        return self.cluster.best_host(spec, self.policy) is not None or (
            self.elastic and self.template.fits(spec)
        )

    def deploy_on(self, host: str, spec: VMSpec) -> int:
        """Deploy on a given host; returns the CPUs its vNodes grew by."""
        allocator = self.cluster.allocator(host)
        free_before = allocator.free_cpu_count
        self.cluster.deploy_on(host, spec)
        return free_before - allocator.free_cpu_count

    def remove(self, host: str, vm: str) -> int:
        """Remove a VM; returns the CPUs its host's vNodes released."""
        allocator = self.cluster.allocator(host)
        free_before = allocator.free_cpu_count
        self.cluster.remove(vm)
        return allocator.free_cpu_count - free_before


class _Replay:
    """The state one replay carries across events."""

    def __init__(
        self,
        trace: Trace,
        topology: Topology,
        scenario: Scenario,
        events: EventList,
        groups: TraceGroups | None = None,
    ) -> None:
        self.trace = trace
        self.groups = groups or TraceGroups()
        #: each group's members running now (placed, or migrating)
        self.members: dict[str, set[str]] = {name: set() for name in self.groups.policies}
        self.group_rejected: list[str] = []
        self.scenario = scenario
        self.levels = sorted({float(r) for r in np.unique(trace.ratio)})
        if scenario.policy == SEGREGATED:
            self.pools = {
                level: _Pool(topology, scenario, scenario.segregated_policy, f"L{level:g}-")
                for level in self.levels
            }
        else:
            shared = _Pool(topology, scenario, scenario.policy, "host")
            self.pools = dict.fromkeys(self.levels, shared)
        self.host_cpus = len(topology.usable_cpus)
        self.host_memory = topology.memory_allowed_mib
        self.consolidation = scenario.consolidation
        self.vm_ids = trace.vm_ids
        self.vcpus = trace.vcpus.tolist()
        self.memory = trace.memory_mib.tolist()
        self.ratio = trace.ratio.tolist()
        self.host_of: dict[int, tuple[_Pool, str]] = {}
        self.vms_on: dict[str, int] = {}
        self.in_use = 0
        self.cpus_allocated = 0
        self.memory_allocated = 0  # held on hosts, a migrating VM's on both
        self.memory_demand = 0  # asked by the VMs running (the lower bound's)
        self.demand_cpus = 0.0
        self.rejected: list[str] = []
        self.never_fit: list[str] = []
        self.series = Series.empty(
            events.instants + self._timer_samples(events), len(self.levels), self.host_cpus, self.host_memory
        )
        self.sample = 0
        self.observed: tuple[_Pool, str] | None = None
        # VMs that lived on the observed host: vm index -> (arrival, departure or None)
        self.observed_stays: dict[int, tuple[int, int | None]] = {}
        # consolidation: timers (time, sequence, vm index or -1 for a plan),
        # migrations in flight (vm index -> source, target), hosts being emptied
        self.timers: list[tuple[int, int, int]] = []
        self.timer_sequence = 0
        self.in_flight: dict[int, tuple[str, str]] = {}
        self.draining: Counter[str] = Counter()
        self.last_moved: dict[str, float] = {}
        self.log = MigrationLog()
        self.index_of: dict[str, int] = {}
        if self.consolidation is not None and len(events):
            self.index_of = {name: i for i, name in enumerate(self.vm_ids)}
            self._push(int(events.times[0]) + self.consolidation.period_s, -1)
        self.clock = int(events.times[0]) if len(events) else 0

    def _timer_samples(self, events: EventList) -> int:
        """Samples the timers may add: one per plan and one per migration end."""
        if self.consolidation is None or not len(events):
            return 0
        span = int(events.times[-1] - events.times[0])
        plans = span // self.consolidation.period_s + 1
        return plans * (self.consolidation.budget + 1)

    def on_event(self, t: int, vm: int, arrival: bool) -> None:
        if t > self.clock:
            self._run_timers(before=t)
            self.clock = t
        if arrival:
            self._arrive(t, vm)
        elif vm in self.host_of:
            self._depart(t, vm)

    def _arrive(self, t: int, vm: int) -> None:
        ratio = self.ratio[vm]
        spec = VMSpec(self.vm_ids[vm], self.vcpus[vm], self.memory[vm], ratio)
        pool = self.pools[ratio]
        group = self._rule(vm)
        placed = pool.place(spec, self.draining.keys(), group)
        if placed is None:
            self.rejected.append(spec.name)
            if not pool.template.fits(spec):
                self.never_fit.append(spec.name)
            elif group is not None and group.policy.hard and pool.fits_without(spec):
                self.group_rejected.append(spec.name)
            return
        if group is not None:
            self.members[group.name].add(spec.name)
        host, cpus_taken = placed
        self.cpus_allocated += cpus_taken
        self.memory_allocated += spec.memory_mib
        self.memory_demand += spec.memory_mib
        self.demand_cpus += spec.vcpus / ratio
        self.host_of[vm] = (pool, host)
        count = self.vms_on.get(host, 0)
        if count == 0:
            self.in_use += 1
        self.vms_on[host] = count + 1
        if self.observed is None:
            self.observed = (pool, host)
        if self.observed[1] == host:
            self.observed_stays[vm] = (t, None)

    def _rule(self, vm: int) -> GroupRule | None:
        """The rule of VM `vm`'s group, with the members running now."""
        name = self.groups.group_of.get(vm)
        if name is None:
            return None
        return GroupRule(name, self.groups.policies[name], frozenset(self.members[name]))

    def _depart(self, t: int, vm: int) -> None:
        group = self.groups.group_of.get(vm)
        if group is not None:
            self.members[group].discard(self.vm_ids[vm])
        pool, host = self.host_of.pop(vm)
        if vm in self.observed_stays:
            self.observed_stays[vm] = (self.observed_stays[vm][0], t)
        if vm in self.in_flight:  # it leaves while it migrates: its copy on the target goes too
            source, target = self.in_flight.pop(vm)
            self._release(pool, target, shadow_name(self.vm_ids[vm]), self.memory[vm])
            self._drained(source)
            self.log.cancelled += 1
        self._release(pool, host, self.vm_ids[vm], self.memory[vm])
        self.memory_demand -= self.memory[vm]
        self.demand_cpus -= self.vcpus[vm] / self.ratio[vm]

    def _release(self, pool: _Pool, host: str, name: str, memory: int) -> None:
        """Remove one copy of a VM from `host` and give back what it held."""
        self.cpus_allocated -= pool.remove(host, name)
        self.memory_allocated -= memory
        count = self.vms_on[host] - 1
        self.vms_on[host] = count
        if count == 0:
            self.in_use -= 1

    # -- consolidation ----------------------------------------------------------

    def _push(self, t: int, vm: int) -> None:
        self.timer_sequence += 1
        heapq.heappush(self.timers, (t, self.timer_sequence, vm))

    def _run_timers(self, before: int | None = None, until: int | None = None) -> None:
        """Run the timers due strictly before `before` (each instant of them
        sampled), or due at or before `until` (sampled by the caller)."""
        while self.timers:
            due = self.timers[0][0]
            if (before is not None and due >= before) or (until is not None and due > until):
                return
            while self.timers and self.timers[0][0] == due:
                _, _, vm = heapq.heappop(self.timers)
                if vm < 0:
                    self._plan(due)
                else:
                    self._finish(due, vm)
            if before is not None:
                self._sample(due)

    def _plan(self, t: int) -> None:
        """Ask the planner, start its migrations, and set the next plan."""
        settings = self.consolidation
        assert settings is not None
        pool = next(iter(self.pools.values()))  # consolidation runs on one shared cluster
        frozen = set()
        for vm in self.in_flight:
            frozen |= {self.vm_ids[vm], shadow_name(self.vm_ids[vm])}
        started = time.perf_counter()
        plan = plan_consolidation(
            pool.cluster,
            Budget(settings.budget, settings.cooldown_s, self.last_moved),
            t,
            policy=settings.policy,
            targets=[name for name in pool.cluster.hosts if name not in self.draining],
            frozen=frozen,
            give_up_after=settings.give_up_after,
        )
        self.log.planning_seconds += time.perf_counter() - started
        verdicts = Counter(v.verdict for v in plan.verdicts)
        self.log.plans.append((t, len(plan.migrations), *(verdicts[kind] for kind in Verdict)))
        sent: Counter[str] = Counter()  # seconds each source has been sending for
        for move in plan.migrations:
            sent[move.source] += self._start(t, sent[move.source], pool, self.index_of[move.vm], move)
        self._push(t + settings.period_s, -1)

    def _start(self, t: int, queued: int, pool: _Pool, vm: int, move: Migration) -> int:
        """A migration starts: the VM's copy takes its room on the target now
        (reserved as a create is), and the copy ends `queued` + its own
        duration seconds later (a source sends its VMs one after another).
        Returns its duration (0 if the target refused)."""
        source, target = move.source, move.target
        assert self.consolidation is not None
        name = self.vm_ids[vm]
        spec = VMSpec(shadow_name(name), self.vcpus[vm], self.memory[vm], self.ratio[vm])
        try:
            self.cpus_allocated += pool.deploy_on(target, spec)
        except PlacementError:
            self.log.refused += 1
            return 0
        self.memory_allocated += spec.memory_mib
        self.vms_on[target] = self.vms_on.get(target, 0) + 1
        if self.vms_on[target] == 1:
            self.in_use += 1
        self.in_flight[vm] = (source, target)
        self.draining[source] += 1
        self.last_moved[name] = t
        self.log.started += 1
        self.log.per_vm[name] += 1
        duration = self.consolidation.duration_s(spec.memory_mib)
        self.log.seconds += duration
        self._push(t + queued + duration, vm)
        return duration

    def _finish(self, t: int, vm: int) -> None:
        """A migration ends: the source copy goes, the shadow takes the name."""
        if vm not in self.in_flight:
            return  # the VM left while it migrated
        source, target = self.in_flight.pop(vm)
        pool = self.host_of[vm][0]
        name = self.vm_ids[vm]
        self._release(pool, source, name, self.memory[vm])
        pool.cluster.allocator(target).rename(shadow_name(name), name)
        pool.cluster.sync(target)
        self.host_of[vm] = (pool, target)
        self._drained(source)
        self.log.completed += 1
        if vm in self.observed_stays and self.observed is not None and self.observed[1] == source:
            self.observed_stays[vm] = (self.observed_stays[vm][0], t)

    def _drained(self, source: str) -> None:
        self.draining[source] -= 1
        if self.draining[source] == 0:
            del self.draining[source]

    def on_instant_end(self, t: int) -> None:
        self._run_timers(until=t)
        self._sample(t)

    def finish(self) -> None:
        """Let the migrations still in flight end (no more plans), so that the
        cluster ends consistent; unsampled, so that the series (and its
        time-weighted means) cover the trace's span, as a plain replay's do."""
        self.timers = [timer for timer in self.timers if timer[2] >= 0]
        heapq.heapify(self.timers)
        if self.timers:
            self._run_timers(until=max(timer[0] for timer in self.timers))

    def _sample(self, t: int) -> None:
        s, i = self.series, self.sample
        s.time[i] = t
        s.hosts_in_use[i] = self.in_use
        s.lower_bound[i] = self.lower_bound()
        s.vms_running[i] = len(self.host_of)
        s.cpus_allocated[i] = self.cpus_allocated
        s.memory_allocated[i] = self.memory_allocated
        if self.observed is not None:
            allocator = self.observed[0].cluster.allocator(self.observed[1])
            for j, level in enumerate(self.levels):
                s.observed_vnodes[i, j] = allocator.level_usage(level)[0]
        self.sample = i + 1

    def lower_bound(self) -> int:
        """DESIGN.md: for each level vCPUs / r, summed, over CPUs per host;
        memory over memory per host; the larger, rounded up."""
        by_cpu = math.ceil(self.demand_cpus / self.host_cpus - 1e-9)
        by_memory = math.ceil(self.memory_demand / self.host_memory - 1e-9)
        return max(by_cpu, by_memory, 0)


def simulate(
    trace: Trace,
    topology: Topology,
    scenario: Scenario,
    on_progress: Callable[[int, int], None] | None = None,
    events: EventList | None = None,
    groups: TraceGroups | None = None,
) -> Result:
    """Replay `trace` under `scenario`. `on_progress(done, total)` is called
    every few thousand events. `groups`: the VM groups its VMs are placed by."""
    if groups is not None and groups.group_of and scenario.consolidation is not None:
        raise ValueError("VM groups and consolidation: the consolidation planner does not know groups yet")
    if not trace.has_levels:
        raise ValueError("the trace has no levels: assign them first (see pinfold.sim.mix)")
    if len(set(trace.vm_ids)) != len(trace):
        raise ValueError("the trace names a VM twice: VM ids must be unique")
    events = events if events is not None else order_events(trace)
    replay = _Replay(trace, topology, scenario, events, groups)
    total = len(events)
    start = time.perf_counter()
    walk(
        events,
        replay.on_event,
        replay.on_instant_end,
        None if on_progress is None else (lambda done: on_progress(done, total)),
    )
    replay.finish()
    wall = time.perf_counter() - start
    pools = {id(p): p for p in replay.pools.values()}.values()
    observed = replay.observed[1] if replay.observed else None
    return Result(
        scenario=scenario,
        name=scenario.name,
        levels=replay.levels,
        series=replay.series.trimmed(replay.sample),
        vms=len(trace),
        placed=len(trace) - events.zero_lifetime - len(replay.rejected),
        rejected=replay.rejected,
        never_fit=replay.never_fit,
        zero_lifetime=events.zero_lifetime,
        hosts_opened=sum(len(p.cluster) for p in pools),
        observed_host=observed,
        wall_seconds=wall,
        events=total,
        cluster_hosts={p.prefix: len(p.cluster) for p in pools},
        observed_stays=replay.observed_stays,
        migrations=replay.log if scenario.consolidation is not None else None,
        group_rejected=replay.group_rejected,
    )
