"""Choosing a host among many: the global scheduler's pure core.

`Cluster` holds the allocators of many hosts and mirrors their counters in
numpy columns, so that feasibility and scoring run over every host at once.
The pipeline of `Cluster.choose`, in order:

1. reject the request itself if it is malformed or its name is taken;
2. feasibility, exact: the CPUs each host's level vNode must grow by (the
   allocator's own `cpus_to_add`) against its free CPUs, then memory, by the
   allocator's own rule (`arithmetic.admits`, one column per host);
3. the VM's group, if it has one (`placement.groups`): a hard policy rules
   hosts out; a soft one ranks the hosts by how many members they hold;
4. eligibility: hosts the caller excludes (down, draining) drop out;
5. ranking: among the feasible hosts the soft group's preferred ones first,
   then the policy's score; ties to the earliest registered host.

The `Decision` keeps what each stage saw, so "why no host" is rendered from the
same data as the choice.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pinfold.placement.allocator import Change, HostAllocator
from pinfold.placement.arithmetic import admits, capacity_refusal, cpus_to_add
from pinfold.placement.errors import PlacementError, Refusal, RefusalCode
from pinfold.placement.groups import GroupPolicy, GroupRule
from pinfold.placement.policies import DEFAULT_POLICY, Demand, HostColumns, balance_terms, get_policy
from pinfold.placement.spec import VMSpec, invalid_reason

__all__ = ["Cluster", "Decision", "NoHostError"]

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Indices = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Decision:
    """The outcome of one host choice, with everything needed to explain it.

    `host` is the chosen host's name, or None when nothing fits. Arrays hold one
    entry per host, in registration order, as they were at decision time (the
    usable capacities are views: a host's capacity never changes once added).
    """

    spec: VMSpec
    policy: str
    hosts: Sequence[str]
    host: str | None
    request_refusal: Refusal | None
    needed_cpus: Floats
    free_cpus: Floats
    usable_cpus: Floats
    free_mem: Floats
    usable_mem: Floats
    cpu_ok: Bools
    mem_ok: Bools
    eligible_mask: Bools | None
    scores: Floats
    #: the VM's group: which hosts its rule allowed (None: all), how much it
    #: prefers each (None: no soft rule; higher first), its members by host
    group: GroupRule | None = None
    group_ok: Bools | None = None
    group_weight: Floats | None = None
    group_held: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def eligible(self) -> Bools:
        """Hosts the caller allowed (all of them when it named none)."""
        if self.eligible_mask is None:
            return np.ones(len(self.hosts), dtype=bool)
        return self.eligible_mask

    @property
    def allowed_by_group(self) -> Bools:
        """Hosts the group's rule allows (all of them without a hard rule)."""
        if self.group_ok is None:
            return np.ones(len(self.hosts), dtype=bool)
        return self.group_ok

    @property
    def feasible(self) -> Bools:
        return self.cpu_ok & self.mem_ok & self.allowed_by_group & self.eligible

    def ranking(self) -> list[str]:
        """Feasible hosts, best first (a soft group's preferred hosts, then
        the policy's score; ties: earliest registered first): the order in
        which a caller tries hosts when the chosen one refuses."""
        order = np.flatnonzero(self.feasible)
        if self.group_weight is None:
            ranked = order[np.argsort(-self.scores[order], kind="stable")]
        else:  # lexsort is stable: the last key first, then the others, then the index
            ranked = order[np.lexsort((-self.scores[order], -self.group_weight[order]))]
        return [self.hosts[i] for i in ranked]

    def refusal(self, index: int) -> Refusal | None:
        """The first check host `index` failed, or None if it was feasible."""
        if self.request_refusal is not None:
            return self.request_refusal
        refusal = capacity_refusal(
            bool(self.cpu_ok[index]), bool(self.mem_ok[index]), level=float(self.spec.ratio),
            vcpus=self.spec.vcpus, needed=float(self.needed_cpus[index]),
            free_cpus=float(self.free_cpus[index]), usable_cpus=float(self.usable_cpus[index]),
            memory_mib=float(self.spec.memory_mib), memory_free=float(self.free_mem[index]),
            memory_usable=float(self.usable_mem[index]),
        )  # fmt: skip
        if refusal is not None:
            return refusal
        if self.group is not None and not self.allowed_by_group[index]:
            return self.group.refusal()
        if not self.eligible[index]:
            return Refusal(RefusalCode.HOST_UNAVAILABLE)
        return None

    def refusals(self) -> dict[str, Refusal]:
        """Per refused host, the first check that failed."""
        out: dict[str, Refusal] = {}
        for index, name in enumerate(self.hosts):
            refusal = self.refusal(index)
            if refusal is not None:
                out[name] = refusal
        return out

    def counts(self) -> Counter[str]:
        """How many hosts failed each check, keyed by reason (the CPU reason
        names the level: "not enough cpu at 2.0")."""
        if self.request_refusal is not None:
            return Counter({self.request_refusal.reason: len(self.hosts)})
        cpu_fail = int(np.count_nonzero(~self.cpu_ok))
        mem_fail = int(np.count_nonzero(self.cpu_ok & ~self.mem_ok))
        fit = self.cpu_ok & self.mem_ok
        group_fail = int(np.count_nonzero(fit & ~self.allowed_by_group))
        unavailable = int(np.count_nonzero(fit & self.allowed_by_group & ~self.eligible))
        counts: Counter[str] = Counter()
        if cpu_fail:
            counts[f"{RefusalCode.NOT_ENOUGH_CPU.value} at {float(self.spec.ratio)}"] = cpu_fail
        if mem_fail:
            counts[RefusalCode.NOT_ENOUGH_MEMORY.value] = mem_fail
        if group_fail and self.group is not None:
            counts[self.group.refusal().reason] = group_fail
        if unavailable:
            counts[RefusalCode.HOST_UNAVAILABLE.value] = unavailable
        return counts

    def explain(self) -> str:
        """One line: "0/12 hosts fit: 7 not enough cpu at 2.0, 5 not enough memory"."""
        fit = 0 if self.request_refusal is not None else int(np.count_nonzero(self.feasible))
        text = f"{fit}/{len(self.hosts)} hosts fit"
        counts = self.counts()
        if counts:
            text += ": " + ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
        ruled = self.group_explanation()
        return f"{text}; {ruled}" if ruled else text

    def group_explanation(self, most: int = 10) -> str:
        """Which hosts a hard group rule ruled out, in words ("" when none):
        "group web (anti-affinity) rules out the 3 hosts holding its members:
        h0 (web-0), h1 (web-1), h2 (web-2)"; at most `most` hosts are named."""
        group = self.group
        if group is None or self.request_refusal is not None or bool(self.allowed_by_group.all()):
            return ""
        held = [f"{host} ({', '.join(names)})" for host, names in self.group_held.items()]
        named = ", ".join(held[:most]) + (f" and {len(held) - most} more" if len(held) > most else "")
        if group.policy is GroupPolicy.ANTI_AFFINITY:
            return f"group {group.label} rules out the {len(held)} hosts holding its members: {named}"
        others = int(np.count_nonzero(~self.allowed_by_group))
        return (
            f"group {group.label} keeps to the hosts holding its members, {named}: "
            f"{others} other hosts ruled out"
        )


def _best(scores: Floats, weight: Floats | None) -> int:
    """The index of the best host: the highest score (-inf: not feasible),
    among the hosts a soft group prefers most when there is one."""
    if weight is not None:
        preferred = weight[np.isfinite(scores)].max()
        scores = np.where(weight == preferred, scores, -np.inf)
    return int(np.argmax(scores))


class NoHostError(PlacementError):
    """No host can take the VM; `decision` says why, host by host."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        refusal = decision.request_refusal or _dominant_refusal(decision)
        super().__init__(refusal)

    def __str__(self) -> str:
        return self.decision.explain()


def _dominant_refusal(decision: Decision) -> Refusal:
    refusals = decision.refusals()
    if not refusals:
        return Refusal(RefusalCode.HOST_UNAVAILABLE, detail="no hosts")
    by_code = Counter(r.code for r in refusals.values())
    code = by_code.most_common(1)[0][0]
    return next(r for r in refusals.values() if r.code is code)


class Cluster:
    """Allocators of many hosts, in registration order, with column mirrors of
    their counters. Change hosts through `deploy`/`remove` here (or call
    `sync(host)` after changing an allocator directly) so the columns stay true.
    """

    def __init__(self) -> None:
        self._names: list[str] = []
        self._names_tuple: tuple[str, ...] = ()
        self._index: dict[str, int] = {}
        self._allocators: list[HostAllocator] = []
        self._placed: dict[str, int] = {}
        self._host_vms: list[set[str]] = []
        self._capacity = 0
        self._usable_cpus = np.zeros(0)
        self._usable_mem = np.zeros(0)
        self._free_cpus = np.zeros(0)
        self._mem_alloc = np.zeros(0)
        self._cpu_alloc = np.zeros(0)
        self._target = np.zeros(0)
        self._deviation = np.zeros(0)
        self._penalty = np.zeros(0)
        self._level_cpus: dict[float, Floats] = {}
        self._level_alloc: dict[float, Floats] = {}
        self._empty = np.zeros(0, dtype=bool)
        self._empty_count = 0
        # per host capacity (usable CPUs, usable MiB): a heap of hosts that were
        # empty when pushed; stale entries are dropped when they reach the top
        self._empty_by_shape: dict[tuple[float, float], list[int]] = {}
        self._shape: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return len(self._names)

    @property
    def hosts(self) -> tuple[str, ...]:
        return self._names_now()

    def _names_now(self) -> tuple[str, ...]:
        """The hosts' names as a tuple, made again only once hosts were added
        (names are only ever appended): making it at each `add_host` cost
        quadratic time, a quarter of a second for 10,000 hosts."""
        if len(self._names_tuple) != len(self._names):
            self._names_tuple = tuple(self._names)
        return self._names_tuple

    def allocator(self, host: str) -> HostAllocator:
        return self._allocators[self._host_index(host)]

    def host_of(self, vm: str) -> str | None:
        index = self._placed.get(vm)
        return None if index is None else self._names[index]

    def add_host(self, name: str, allocator: HostAllocator) -> None:
        """Register a host; it ranks after every host registered before it."""
        self.add_hosts(((name, allocator),))

    def add_hosts(self, hosts: Sequence[tuple[str, HostAllocator]]) -> None:
        """Register several hosts, in order, as `add_host` one after the other
        would, but with their columns written a column at a time: a restart
        adds 10,000 hosts, and one host's sync was most of adding it. Nothing
        is added when one of them cannot be (a name twice, a VM on two hosts)."""
        self._check_new_hosts(hosts)
        start, end = len(self._names), len(self._names) + len(hosts)
        capacity = self._capacity
        while capacity < end:
            capacity = max(16, 2 * capacity)
        if capacity != self._capacity:
            self._grow_columns(capacity)
        for index, (name, allocator) in enumerate(hosts, start):
            self._names.append(name)
            self._index[name] = index
            self._allocators.append(allocator)
            self._shape.append((float(allocator.usable_cpu_count), float(allocator.memory_usable_mib)))
            self._host_vms.append(set(allocator.vms))
            for vm in self._host_vms[index]:
                self._placed[vm] = index
        self._write_new_columns(start, end)

    def _check_new_hosts(self, hosts: Sequence[tuple[str, HostAllocator]]) -> None:
        names: set[str] = set()
        placing: set[str] = set()
        for name, allocator in hosts:
            if name in self._index or name in names:
                raise ValueError(f"host {name!r} is already registered")
            names.add(name)
            clash = [vm for vm in allocator.vms if vm in self._placed or vm in placing]
            if clash:
                raise ValueError(f"VM names already placed elsewhere: {sorted(clash)[:5]}")
            placing.update(allocator.vms)

    def _write_new_columns(self, start: int, end: int) -> None:
        """The columns of hosts start..end-1, just appended: theirs are still
        zero, so only each host's own levels are written (writing every known
        level's zeros was half of adding a host)."""
        allocators = self._allocators[start:end]
        usable = np.array([float(a.usable_cpu_count) for a in allocators])
        memory = np.array([float(a.memory_usable_mib) for a in allocators])
        free = np.array([float(a.free_cpu_count) for a in allocators])
        mem_alloc = np.array([float(a.memory_allocated_mib) for a in allocators])
        target, deviation, penalty = balance_terms(usable, memory, usable - free, mem_alloc)
        self._usable_cpus[start:end] = usable
        self._usable_mem[start:end] = memory
        self._free_cpus[start:end] = free
        self._mem_alloc[start:end] = mem_alloc
        self._cpu_alloc[start:end] = usable - free
        self._target[start:end] = target
        self._deviation[start:end] = deviation
        self._penalty[start:end] = penalty
        for index, allocator in enumerate(allocators, start):
            if len(allocator) == 0:
                self._empty[index] = True
                self._empty_count += 1
                heapq.heappush(self._empty_by_shape.setdefault(self._shape[index], []), index)
            for level in allocator.levels:
                if level not in self._level_cpus:
                    self._level_cpus[level] = np.zeros(self._capacity)
                    self._level_alloc[level] = np.zeros(self._capacity)
                self._level_cpus[level][index], self._level_alloc[level][index] = allocator.level_usage(level)

    def sync(self, host: str) -> None:
        """Refresh the columns of `host` after its allocator changed directly."""
        index = self._host_index(host)
        allocator = self._allocators[index]
        now = set(allocator.vms)
        clash = [vm for vm in now if self._placed.get(vm, index) != index]
        if clash:
            raise ValueError(f"VM names already placed elsewhere: {sorted(clash)[:5]}")
        for vm in self._host_vms[index] - now:
            del self._placed[vm]
        for vm in now:
            self._placed[vm] = index
        self._host_vms[index] = now
        self._sync_index(index)

    def replace(self, host: str, allocator: HostAllocator) -> HostAllocator:
        """Put `allocator` in place of `host`'s (a copy to try changes on, or
        the original back to undo them) and refresh its columns; returns the
        allocator it replaced. Its VMs must not be placed on another host:
        when swapping several hosts back, release VMs before re-adding them."""
        index = self._host_index(host)
        before = self._allocators[index]
        if (allocator.usable_cpu_count, allocator.memory_usable_mib) != (
            before.usable_cpu_count,
            before.memory_usable_mib,
        ):
            raise ValueError(f"host {host!r}: a replacement must have the same usable CPUs and memory")
        self._allocators[index] = allocator
        try:
            self.sync(host)
        except ValueError:
            self._allocators[index] = before
            raise
        return before

    def columns(self, rows: Indices | None = None) -> HostColumns:
        """Every host's columns, or only those of `rows` (ascending indices)."""
        n = len(self._names)

        def pick(column: Floats) -> Floats:
            return column[:n] if rows is None else column[rows]

        return HostColumns(
            usable_cpus=pick(self._usable_cpus),
            usable_mem=pick(self._usable_mem),
            free_cpus=pick(self._free_cpus),
            mem_alloc=pick(self._mem_alloc),
            cpu_alloc=pick(self._cpu_alloc),
            target_ratio=pick(self._target),
            deviation=pick(self._deviation),
            penalty=pick(self._penalty),
        )

    def choose(
        self,
        spec: VMSpec,
        policy: str = DEFAULT_POLICY,
        eligible: Iterable[str] | None = None,
        group: GroupRule | None = None,
    ) -> Decision:
        """Pick the host for `spec` (see the module docstring for the stages).

        `eligible`, when given, names the hosts that may be chosen; the others
        are reported as `host unavailable` when they would otherwise fit.
        `group`: the VM's group, its members placed here (`placement.groups`).
        """
        scorer = get_policy(policy)
        n = len(self._names)
        hosts = self.columns()
        eligible_mask = None if eligible is None else self._eligible_mask(eligible)
        problem = invalid_reason(spec)
        request_refusal = None
        if problem is not None:
            request_refusal = Refusal(RefusalCode.INVALID_REQUEST, detail=problem, fits_empty=False)
        elif spec.name in self._placed:
            request_refusal = Refusal(RefusalCode.DUPLICATE_NAME, detail=spec.name)
        if request_refusal is not None:
            nothing = np.zeros(n, dtype=bool)
            return Decision(
                spec, policy, self._names_now(), None, request_refusal,
                np.zeros(n), hosts.free_cpus.copy(), hosts.usable_cpus,
                hosts.free_mem, hosts.usable_mem, nothing, nothing, eligible_mask,
                np.full(n, -np.inf),
            )  # fmt: skip
        needed, cpu_ok, mem_ok = self._feasibility(spec, hosts)
        feasible = cpu_ok & mem_ok
        if eligible_mask is not None:
            feasible &= eligible_mask
        group_ok, weight = self._group_columns(spec, group)
        if group_ok is not None:
            feasible &= group_ok
        chosen = None
        if feasible.any():
            scores = np.where(feasible, scorer.score(hosts, Demand(needed, float(spec.memory_mib))), -np.inf)
            chosen = self._names[_best(scores, weight)]
        else:
            scores = np.full(n, -np.inf)
        return Decision(
            spec, policy, self._names_now(), chosen, None,
            needed, hosts.free_cpus.copy(), hosts.usable_cpus,
            hosts.free_mem, hosts.usable_mem, cpu_ok, mem_ok, eligible_mask, scores,
            group, group_ok, weight, self._held(spec, group),
        )  # fmt: skip

    def best_host(
        self, spec: VMSpec, policy: str = DEFAULT_POLICY, group: GroupRule | None = None
    ) -> str | None:
        """`choose(spec, policy, group=group).host` without the explanation,
        for callers that place millions of VMs (the simulator): same stages,
        same answer."""
        if invalid_reason(spec) is not None or spec.name in self._placed or not self._names:
            return None
        rows = self._candidate_rows()
        hosts = self.columns(rows)
        needed, cpu_ok, mem_ok = self._feasibility(spec, hosts, rows)
        raw = get_policy(policy).score(hosts, Demand(needed, float(spec.memory_mib)))
        feasible = cpu_ok & mem_ok
        group_ok, weight = self._group_columns(spec, group, rows)
        if group_ok is not None:
            feasible &= group_ok
        if not feasible.any():
            return None
        best = _best(np.where(feasible, raw, -np.inf), weight)
        return self._names[best if rows is None else int(rows[best])]

    def _member_counts(self, spec: VMSpec, group: GroupRule) -> Floats:
        """How many of the group's members (the VM itself aside) each host holds."""
        counts = np.zeros(len(self._names))
        for member in group.members:
            index = self._placed.get(member)
            if index is not None and member != spec.name:
                counts[index] += 1
        return counts

    def _group_columns(
        self, spec: VMSpec, group: GroupRule | None, rows: Indices | None = None
    ) -> tuple[Bools | None, Floats | None]:
        """Stage 3: the hosts the group's hard rule allows (None: no hard
        rule) and its soft preference, members held or minus that (None: no
        soft rule), for every host or those of `rows`. Empty hosts hold no
        member: `_candidate_rows` keeps the answer the same."""
        if group is None:
            return None, None
        counts = self._member_counts(spec, group)
        picked = counts if rows is None else counts[rows]
        if group.policy is GroupPolicy.ANTI_AFFINITY:
            return picked == 0, None
        if group.policy is GroupPolicy.AFFINITY:
            return (picked > 0 if counts.any() else np.ones(len(picked), dtype=bool)), None
        return None, picked if group.policy.together else -picked

    def _held(self, spec: VMSpec, group: GroupRule | None) -> dict[str, tuple[str, ...]]:
        """The group's members by host, hosts in registration order (for explanations)."""
        if group is None:
            return {}
        by_index: dict[int, list[str]] = {}
        for member in sorted(group.members - {spec.name}):
            index = self._placed.get(member)
            if index is not None:
                by_index.setdefault(index, []).append(member)
        return {self._names[i]: tuple(by_index[i]) for i in sorted(by_index)}

    def _candidate_rows(self) -> Indices | None:
        """The hosts worth scoring when many are empty: every host holding a
        VM, and of the empty ones only the earliest of each capacity. Empty
        hosts of one capacity are alike to every check and every policy, and
        ties go to the earliest, so the answer is the same as over all hosts.
        None (score every host) when too few are empty for this to pay."""
        n = len(self._names)
        if self._empty_count < max(32, n // 4):
            return None
        firsts = []
        for heap in self._empty_by_shape.values():
            while heap and not self._empty[heap[0]]:
                heapq.heappop(heap)
            if heap:
                firsts.append(heap[0])
        busy = np.flatnonzero(~self._empty[:n])
        return np.union1d(busy, np.array(firsts, dtype=np.int64))

    def _feasibility(
        self, spec: VMSpec, hosts: HostColumns, rows: Indices | None = None
    ) -> tuple[Floats, Bools, Bools]:
        """Stage 2, exact: CPUs each host's level vNode must grow by, whether
        its free CPUs cover that, and whether its memory pool takes the VM."""
        ratio = float(spec.ratio)
        level_cpus = self._level_cpus.get(ratio)
        if level_cpus is None:
            needed = np.full(len(hosts.free_cpus), float(spec.vcpus))
        else:
            n = len(self._names)
            allocated = self._level_alloc[ratio]
            cpus, alloc = (
                (level_cpus[:n], allocated[:n]) if rows is None else (level_cpus[rows], allocated[rows])
            )
            needed = cpus_to_add(cpus, alloc, ratio, spec.vcpus)
        cpu_ok, mem_ok = admits(needed, hosts.free_cpus, hosts.mem_alloc, spec.memory_mib, hosts.usable_mem)
        return needed, cpu_ok, mem_ok

    def deploy(
        self,
        spec: VMSpec,
        policy: str = DEFAULT_POLICY,
        eligible: Iterable[str] | None = None,
        group: GroupRule | None = None,
    ) -> tuple[str, Change]:
        """Choose a host and deploy there; NoHostError when nothing fits."""
        decision = self.choose(spec, policy, eligible, group)
        if decision.host is None:
            raise NoHostError(decision)
        return decision.host, self.deploy_on(decision.host, spec)

    def deploy_on(self, host: str, spec: VMSpec) -> Change:
        """Deploy on a given host (the allocator re-checks everything)."""
        if spec.name in self._placed:
            raise PlacementError(Refusal(RefusalCode.DUPLICATE_NAME, detail=spec.name))
        index = self._host_index(host)
        change = self._allocators[index].deploy(spec)
        self._placed[spec.name] = index
        self._host_vms[index].add(spec.name)
        self._sync_index(index, float(spec.ratio))
        return change

    def remove(self, vm: str) -> tuple[str, Change]:
        index = self._placed.get(vm)
        if index is None:
            raise PlacementError(RefusalCode.UNKNOWN_VM.value)
        allocator = self._allocators[index]
        ratio = float(allocator.spec(vm).ratio)
        change = allocator.remove(vm)
        del self._placed[vm]
        self._host_vms[index].discard(vm)
        self._sync_index(index, ratio)
        return self._names[index], change

    # -- internals -------------------------------------------------------------

    def _host_index(self, host: str) -> int:
        try:
            return self._index[host]
        except KeyError:
            raise KeyError(f"unknown host {host!r}") from None

    def _eligible_mask(self, eligible: Iterable[str]) -> Bools:
        mask = np.zeros(len(self._names), dtype=bool)
        for name in eligible:
            mask[self._host_index(name)] = True
        return mask

    def _grow_columns(self, capacity: int) -> None:
        def grown(column: Floats) -> Floats:
            bigger = np.zeros(capacity)
            bigger[: len(column)] = column
            return bigger

        self._usable_cpus = grown(self._usable_cpus)
        self._usable_mem = grown(self._usable_mem)
        self._free_cpus = grown(self._free_cpus)
        self._mem_alloc = grown(self._mem_alloc)
        self._cpu_alloc = grown(self._cpu_alloc)
        self._target = grown(self._target)
        self._deviation = grown(self._deviation)
        self._penalty = grown(self._penalty)
        empty = np.zeros(capacity, dtype=bool)
        empty[: len(self._empty)] = self._empty
        self._empty = empty
        self._level_cpus = {r: grown(c) for r, c in self._level_cpus.items()}
        self._level_alloc = {r: grown(c) for r, c in self._level_alloc.items()}
        self._capacity = capacity

    def _sync_index(self, index: int, ratio: float | None = None) -> None:
        """Copy one host's counters into the columns: free CPUs, memory, and
        (C, A) of `ratio`, or of every level when `ratio` is None (a new host's
        first columns are `_write_new_columns`')."""
        allocator = self._allocators[index]
        usable = float(allocator.usable_cpu_count)
        free = float(allocator.free_cpu_count)
        mem_alloc = float(allocator.memory_allocated_mib)
        target, deviation, penalty = balance_terms(
            usable, float(allocator.memory_usable_mib), usable - free, mem_alloc
        )
        self._free_cpus[index] = free
        self._mem_alloc[index] = mem_alloc
        self._cpu_alloc[index] = usable - free
        self._target[index] = target
        self._deviation[index] = deviation
        self._penalty[index] = penalty
        empty = len(allocator) == 0
        if empty != self._empty[index]:
            self._empty[index] = empty
            self._empty_count += 1 if empty else -1
            if empty:
                heapq.heappush(self._empty_by_shape.setdefault(self._shape[index], []), index)
        ratios = {ratio} if ratio is not None else set(self._level_cpus) | set(allocator.levels)
        for level in ratios:
            if level not in self._level_cpus:
                self._level_cpus[level] = np.zeros(self._capacity)
                self._level_alloc[level] = np.zeros(self._capacity)
            cpus, allocated = allocator.level_usage(level)
            self._level_cpus[level][index] = cpus
            self._level_alloc[level][index] = allocated
