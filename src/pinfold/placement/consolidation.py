"""Consolidation: plan a bounded list of live migrations that empty hosts.

Placement packs each VM well when it arrives, but departures leave hosts
partly used, and without migration a host only empties when its last VM
leaves. `plan_consolidation` looks at the cluster as it stands and proposes
moves (vm, source, target) that empty lightly used hosts, within a budget:

- at most `Budget.max_migrations` moves in one plan;
- a VM that moved less than `Budget.cooldown_s` before `now` stays (the caller
  says what moved when, in `Budget.last_moved`; the planner reads no clock);
- VMs the caller names in `frozen` stay (a migration in flight, a VM that is
  not running), and so does every VM of their host.

How it plans, in order:

1. Sources: every host holding VMs, lightest first (load = the larger of its
   allocated CPU fraction and allocated memory fraction; ties: fewer VMs, then
   registration order).
2. For one source, all or nothing: its VMs, largest first (physical CPUs
   they weigh, vCPUs / ratio, then memory; ties in deploy order), each go to
   the host `Cluster.choose` picks for them among the targets, exactly as
   for a create: the same exact feasibility (the level's vNode may have to
   grow on the target, then memory), the same policy scoring. The moves are
   applied to a private copy of the hosts as they are chosen, so every later
   choice sees the earlier ones. If one VM fits no target the source's moves
   are undone and none of them is planned: moving part of a host frees no
   host and costs migrations (the partial move could only pay off by making
   room that a later plan uses, which the next plan can do itself).
3. Targets: hosts that hold VMs (moving onto an empty host frees nothing),
   other than the source, the hosts emptied in this plan and those the caller
   excludes (`targets`). A VM moved in this plan is then in its cooldown,
   so a host that received one is not emptied later in the same plan.
4. The plan stops when the budget is spent, or after `give_up_after` sources
   in a row found no target for one of their VMs (the hosts are sorted
   lightest first, so the next ones are heavier still). Hosts passed over
   without a try (cooldown, frozen, more VMs than the moves left) cost
   nothing and do not count.

Every host considered gets a verdict saying what happened and why; the
plan's `explain()` renders them. The caller's cluster is never changed: each
host is copied the first time a trial changes it.

Levels re-pack as hosts empty: each VM moved lands in a vNode of its level
on a fuller host (growing it only by the CPUs the create rule asks), and the
source's vNodes disappear, so the CPUs stranded in the ceil of small vNodes
on light hosts are given back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pinfold.placement.allocator import HostAllocator
from pinfold.placement.cluster import Cluster
from pinfold.placement.errors import PlacementError
from pinfold.placement.spec import VMSpec

__all__ = [
    "DEFAULT_CONSOLIDATION_POLICY",
    "Budget",
    "HostVerdict",
    "Migration",
    "Plan",
    "Verdict",
    "apply_plan",
    "host_load",
    "plan_consolidation",
]

#: Packing onto the fullest host that takes the VM is what frees hosts.
DEFAULT_CONSOLIDATION_POLICY = "best-fit"


@dataclass(frozen=True)
class Budget:
    """What one plan may spend: `max_migrations` moves, and no VM that moved
    less than `cooldown_s` seconds before the plan's `now` (`last_moved`:
    VM name -> the time of its last move, in the caller's clock)."""

    max_migrations: int
    cooldown_s: float = 0.0
    last_moved: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_migrations < 0:
            raise ValueError("max_migrations must be >= 0")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")

    def cooling(self, vm: str, now: float) -> float | None:
        """When `vm` may move again, if it may not move at `now`."""
        moved = self.last_moved.get(vm)
        if moved is None or now - moved >= self.cooldown_s:
            return None
        return moved + self.cooldown_s


@dataclass(frozen=True)
class Migration:
    """Move `vm` (its spec as placed) from `source` to `target`; on the target
    its level's vNode grows by `cpus_added` CPUs (0: it fits the room there)."""

    vm: str
    source: str
    target: str
    spec: VMSpec
    cpus_added: int


class Verdict(StrEnum):
    """What became of one host the planner considered."""

    EMPTIED = "emptied"
    NO_TARGET = "no target"  # one of its VMs fits no other host
    COOLDOWN = "cooldown"  # one of its VMs moved too recently
    FROZEN = "frozen"  # the caller named one of its VMs as not movable
    OVER_BUDGET = "over budget"  # it has more VMs than the moves left
    NOT_TRIED = "not tried"  # the plan stopped before it


@dataclass(frozen=True)
class HostVerdict:
    host: str
    verdict: Verdict
    vms: int
    load: float
    detail: str

    def describe(self) -> str:
        return f"{self.host} ({self.vms} VMs, load {self.load:.0%}): {self.verdict}: {self.detail}"


@dataclass(frozen=True)
class Plan:
    """The moves, in the order they must be applied (each target was checked
    on the state the earlier moves leave), and a verdict per host considered,
    lightest first."""

    now: float
    migrations: tuple[Migration, ...]
    verdicts: tuple[HostVerdict, ...]

    @property
    def emptied(self) -> tuple[str, ...]:
        return tuple(v.host for v in self.verdicts if v.verdict is Verdict.EMPTIED)

    def explain(self) -> str:
        """A headline, then one line per host considered."""
        head = f"{len(self.migrations)} migrations empty {len(self.emptied)} hosts"
        return "\n".join([head, *(f"- {v.describe()}" for v in self.verdicts)])


def host_load(allocator: HostAllocator) -> float:
    """How full a host is: the larger of its allocated CPU and memory fractions."""
    cpu = 1.0 - allocator.free_cpu_count / allocator.usable_cpu_count
    return max(cpu, allocator.memory_allocated_mib / allocator.memory_usable_mib)


def plan_consolidation(
    cluster: Cluster,
    budget: Budget,
    now: float,
    *,
    policy: str = DEFAULT_CONSOLIDATION_POLICY,
    sources: Iterable[str] | None = None,
    targets: Iterable[str] | None = None,
    frozen: Collection[str] = frozenset(),
    give_up_after: int | None = 5,
    empty_targets: bool = False,
) -> Plan:
    """Plan migrations that empty hosts of `cluster` (see the module docstring).

    `sources` limits the hosts that may be emptied, `targets` those that may
    receive VMs (the caller leaves out hosts down or draining); None means
    every host. `give_up_after` None tries every source. `empty_targets`
    lets VMs go to empty hosts too: pointless for consolidation, but what a
    drain for maintenance (`sources={host}`) wants. Pure: same inputs, same
    plan; `cluster` is not changed.
    """
    work = _Workspace(cluster, policy, targets, empty_targets)
    allowed = None if sources is None else set(sources)
    order = _sources_by_load(cluster, allowed)
    migrations: list[Migration] = []
    verdicts: list[HostVerdict] = []
    received: set[str] = set()  # VMs moved in this plan: none moves twice
    rank = {name: index for index, name in enumerate(cluster.hosts)}
    failures = 0
    for position, host in enumerate(order):
        left = budget.max_migrations - len(migrations)
        allocator = work.current(host)
        vms, load = len(allocator), host_load(allocator)
        stop = _stop_reason(left, failures, give_up_after)
        if stop is not None:
            verdicts += [_not_tried(work.cluster, name, stop) for name in order[position:]]
            break
        blocked = _blocked(allocator, budget, received, frozen, now, left)
        if blocked is not None:
            verdicts.append(HostVerdict(host, blocked[0], vms, load, blocked[1]))
            continue
        moves, problem = work.try_empty(host)
        if problem is not None:
            verdicts.append(HostVerdict(host, Verdict.NO_TARGET, vms, load, problem))
            failures += 1
            continue
        failures = 0
        migrations += moves
        received.update(m.vm for m in moves)
        targets_used = sorted({m.target for m in moves}, key=rank.__getitem__)
        verdicts.append(
            HostVerdict(host, Verdict.EMPTIED, vms, load, f"{vms} VMs to {', '.join(targets_used)}")
        )
    return Plan(now, tuple(migrations), tuple(verdicts))


def apply_plan(cluster: Cluster, plan: Plan) -> None:
    """Carry out `plan` on `cluster` at once, in its order: each VM removed
    from its source and deployed on its target through the cluster's own
    checks: the end state a live system reaches when every migration
    succeeds. If the cluster moved on since the plan and a target refuses,
    the VM goes back to its source and the PlacementError is raised (the
    moves before it stay done)."""
    for move in plan.migrations:
        if cluster.host_of(move.vm) != move.source:
            raise ValueError(f"{move.vm} is not on {move.source} any more")
        cluster.remove(move.vm)
        try:
            cluster.deploy_on(move.target, move.spec)
        except PlacementError:
            cluster.deploy_on(move.source, move.spec)
            raise


def _sources_by_load(cluster: Cluster, allowed: set[str] | None) -> list[str]:
    """Hosts holding VMs, lightest first; ties: fewer VMs, then registration order."""
    keyed = []
    for index, name in enumerate(cluster.hosts):
        allocator = cluster.allocator(name)
        if len(allocator) and (allowed is None or name in allowed):
            keyed.append((host_load(allocator), len(allocator), index, name))
    return [name for *_, name in sorted(keyed)]


def _stop_reason(left: int, failures: int, give_up_after: int | None) -> str | None:
    if left <= 0:
        return "the plan's migration budget is spent"
    if give_up_after is not None and failures >= give_up_after:
        return f"the plan gave up after {failures} hosts in a row could not be emptied"
    return None


def _not_tried(cluster: Cluster, host: str, reason: str) -> HostVerdict:
    allocator = cluster.allocator(host)
    return HostVerdict(host, Verdict.NOT_TRIED, len(allocator), host_load(allocator), reason)


def _blocked(
    allocator: HostAllocator,
    budget: Budget,
    received: Collection[str],
    frozen: Collection[str],
    now: float,
    left: int,
) -> tuple[Verdict, str] | None:
    """Why this host cannot be emptied before trying any target, if it cannot."""
    names = list(allocator.vms)
    stuck = next((vm for vm in names if vm in frozen), None)
    if stuck is not None:
        return Verdict.FROZEN, f"{stuck} may not move now"
    moved_here = next((vm for vm in names if vm in received), None)
    if moved_here is not None:
        return Verdict.COOLDOWN, f"{moved_here} moves here in this plan"
    for vm in names:
        until = budget.cooling(vm, now)
        if until is not None:
            return Verdict.COOLDOWN, f"{vm} moved at {budget.last_moved[vm]:g}, may move again at {until:g}"
    if len(names) > left:
        return Verdict.OVER_BUDGET, f"emptying it takes {len(names)} migrations, {left} left in this plan"
    return None


def _largest_first(allocator: HostAllocator) -> list[VMSpec]:
    """The host's VMs, the heaviest to place first (CPUs they weigh, then
    memory); ties keep deploy order (the sort is stable)."""
    specs = list(allocator.vms.values())
    return sorted(specs, key=lambda s: (-s.vcpus / float(s.ratio), -s.memory_mib))


class _Workspace:
    """A view of the caller's cluster that trials change: a host is copied
    the first time a trial changes it, and put back as it was when the trial
    fails. The caller's allocators are never changed."""

    def __init__(
        self, cluster: Cluster, policy: str, targets: Iterable[str] | None, empty_targets: bool
    ) -> None:
        self.cluster = Cluster()
        self.cluster.add_hosts([(name, cluster.allocator(name)) for name in cluster.hosts])
        self.policy = policy
        self.targets = None if targets is None else set(targets)
        self.empty_targets = empty_targets
        self.emptied: set[str] = set()

    def current(self, host: str) -> HostAllocator:
        return self.cluster.allocator(host)

    def try_empty(self, source: str) -> tuple[list[Migration], str | None]:
        """Move every VM off `source` (see the module docstring, step 2).
        Returns the moves, or a reason and no moves (nothing changed)."""
        saved: dict[str, HostAllocator] = {}
        eligible = self._eligible(source)
        moves: list[Migration] = []
        for spec in _largest_first(self.current(source)):
            # off the source first: a name is unique in the cluster, and the
            # source is no target anyway
            self._writable(source, saved)
            self.cluster.remove(spec.name)
            decision = self.cluster.choose(spec, self.policy, eligible) if eligible else None
            if decision is None or decision.host is None:
                self._undo(saved)
                why = "no host may receive it" if decision is None else decision.explain()
                return [], (
                    f"{spec.name} ({spec.vcpus} vCPUs at {float(spec.ratio):g}, {spec.memory_mib} MiB) "
                    f"fits no target: {why}"
                )
            target = decision.host
            self._writable(target, saved)
            free_before = self.current(target).free_cpu_count
            self.cluster.deploy_on(target, spec)
            added = free_before - self.current(target).free_cpu_count
            moves.append(Migration(spec.name, source, target, spec, added))
        self.emptied.add(source)
        return moves, None

    def _eligible(self, source: str) -> list[str]:
        return [
            name
            for name in self.cluster.hosts
            if name != source
            and name not in self.emptied
            and (self.empty_targets or len(self.current(name)))
            and (self.targets is None or name in self.targets)
        ]

    def _writable(self, host: str, saved: dict[str, HostAllocator]) -> None:
        """Before a trial's first change to `host`: keep its state to undo to,
        and change a copy of it from now on."""
        if host in saved:
            return
        saved[host] = self.cluster.replace(host, self.current(host).copy())

    def _undo(self, saved: dict[str, HostAllocator]) -> None:
        """Put back every host the failed trial changed: targets first (they
        hold the moved VMs), the source last."""
        for host in reversed(list(saved)):
            self.cluster.replace(host, saved[host])
