"""Moving VMs off hosts with live migrations: a drain for maintenance, and
the consolidation policy that empties lightly used hosts.

Both plan with the placement core's pure planner (`plan_consolidation`) on
the controller's picture, then carry out each move with `Controller.migrate`
and the plan's target: the plan is advice, the reservation on the target
re-checks under its lock (docs/design.md, Consolidation).

- A drain (`drain_with_migrations`) plans every VM of the host, onto any
  other host up and not draining, empty ones too, without giving up early:
  when the rest of the cluster cannot take them all, it refuses with the
  planner's explanation and moves nothing. Else it marks the host draining
  (nothing new lands there) and moves them one by one.
- The policy (`Consolidator`, off by default) plans at most
  `min(N at once - in flight, per-hour budget - moves started in the last
  hour)` moves, no VM moved less than the cooldown ago, and carries them out.
  When one move fails, the rest of its source's moves are dropped: that host
  will not empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from pinfold.controller.service import Controller, ControllerError, NoHostError
from pinfold.controller.store import MigrationRecord
from pinfold.model.lifecycle import VMState
from pinfold.placement.consolidation import DEFAULT_CONSOLIDATION_POLICY, Budget, Migration, Plan, Verdict

__all__ = [
    "ConsolidationSettings",
    "Consolidator",
    "DrainRefusedError",
    "drain_plan",
    "drain_with_migrations",
]

log = logging.getLogger("pinfold.controller.consolidation")

HOUR_S = 3600.0


class DrainRefusedError(ControllerError):
    """The rest of the cluster cannot take every VM of the host: `plan` says why."""

    def __init__(self, plan: Plan) -> None:
        super().__init__("no host", f"the other hosts cannot take every VM: {plan.explain()}")
        self.plan = plan


def _frozen(controller: Controller) -> set[str]:
    """The VMs that may not move now: not running (migrating ones included)."""
    return {vm.name for vm in controller.vms() if vm.state is not VMState.RUNNING}


def drain_plan(controller: Controller, host_id: str) -> Plan:
    """Where each VM of `host_id` would go (a dry run)."""
    controller.host(host_id)  # "unknown host"
    vms = controller.vms(host_id)
    targets = [host for host in controller.schedulable_hosts() if host != host_id]
    return controller.plan_moves(
        Budget(max_migrations=len(vms)), controller.clock(), policy=controller.default_policy,
        sources={host_id}, targets=targets, frozen=_frozen(controller), give_up_after=None,
        empty_targets=True,
    )  # fmt: skip


def drain_with_migrations(
    controller: Controller, host_id: str, progress: Callable[[MigrationRecord], None] | None = None
) -> list[MigrationRecord]:
    """Empty `host_id` with live migrations, in the plan's order (each one
    reported to `progress` as it ends); `DrainRefusedError` with nothing
    moved when the plan cannot empty it. The host is draining from the
    first move on. A move whose planned target refuses (the cluster changed
    since the plan) goes where the scheduler says; a move that fails
    stops the drain (ControllerError, the moves done before it stay)."""
    plan = drain_plan(controller, host_id)
    if any(v.host == host_id and v.verdict is not Verdict.EMPTIED for v in plan.verdicts):
        raise DrainRefusedError(plan)
    controller.drain(host_id)
    done = []
    for move in plan.migrations:
        try:
            record = controller.migrate(move.vm, move.target)
        except NoHostError:
            record = controller.migrate(move.vm)
        done.append(record)
        if progress is not None:
            progress(record)
    return done


@dataclass(frozen=True)
class ConsolidationSettings:
    """The policy's knobs (the controller's `consolidate_*` settings)."""

    enabled: bool = False
    #: how often it plans
    interval_s: float = 300.0
    #: never more than this many migrations in flight
    at_once: int = 2
    #: never more than this many migrations started in any hour
    per_hour: int = 20
    #: a VM moved less than this long ago stays
    cooldown_s: float = 3600.0
    policy: str = DEFAULT_CONSOLIDATION_POLICY


@dataclass
class Consolidator:
    """The consolidation policy: `step` plans and carries out one round
    (what the controller's upkeep calls every `interval_s`); `plan` is the
    same plan as a dry run."""

    controller: Controller
    settings: ConsolidationSettings = field(default_factory=ConsolidationSettings)
    #: where each round's plan is told (the daemon prints it)
    report: Callable[[str], None] = log.info

    def budget(self, now: float) -> Budget:
        """What this round may spend, from the migrations recorded (by every replica)."""
        since = now - max(HOUR_S, self.settings.cooldown_s)
        recent = self.controller.migrations(since=since, limit=100_000)
        in_flight = sum(1 for m in recent if m.outcome is None)
        last_hour = sum(1 for m in recent if m.started >= now - HOUR_S)
        left = min(self.settings.at_once - in_flight, self.settings.per_hour - last_hour)
        moved: dict[str, float] = {}
        for m in recent:
            if m.outcome == "done" and m.finished is not None:
                moved[m.vm] = max(moved.get(m.vm, m.finished), m.finished)
        return Budget(max(0, left), self.settings.cooldown_s, moved)

    def plan(self) -> Plan:
        now = self.controller.clock()
        return self.controller.plan_moves(
            self.budget(now), now, policy=self.settings.policy,
            targets=self.controller.schedulable_hosts(), frozen=_frozen(self.controller),
        )  # fmt: skip

    def step(self) -> list[MigrationRecord]:
        """One round: plan, log the plan's explanation, carry out its moves.
        The migrations done."""
        plan = self.plan()
        self.report(f"consolidation plan: {plan.explain()}")
        done: list[MigrationRecord] = []
        for source, moves in groupby(plan.migrations, key=lambda m: m.source):
            done += self._empty(source, list(moves))
        return done

    def _empty(self, source: str, moves: Sequence[Migration]) -> list[MigrationRecord]:
        """One source's moves, in order, until one fails (the host will not empty)."""
        done = []
        for move in moves:
            try:
                done.append(self.controller.migrate(move.vm, move.target))
            except ControllerError as error:
                log.warning(
                    "consolidation: %s to %s failed (%s); %s is left", move.vm, move.target, error, source
                )
                break
        return done
