"""Consolidation in the simulator: when to plan, what a migration costs.

The plans come from `pinfold.placement.consolidation` (the planner the
controller will run); this module only holds the simulator's settings and the
cost model. A migration is live: from its start until it ends, the VM holds
its CPUs and memory on BOTH hosts (on the target under a shadow name, through
the same `Cluster.deploy_on` a create uses), then the source copy is removed
and the shadow takes the VM's name. It lasts `memory / bandwidth` seconds (at
least one): pre-copy sends the memory once, and the simulator knows nothing
of dirty pages, so this is the least a live migration takes. A source sends
its VMs one after another (its link is the bottleneck), so the k-th VM of a
host ends after the first k durations; its room on the target is reserved
from the plan's start, as a create's reservation is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pinfold.placement.consolidation import DEFAULT_CONSOLIDATION_POLICY
from pinfold.placement.policies import get_policy

__all__ = ["DEFAULT_WARM_UP_S", "Consolidation", "shadow_name"]

#: Means "after the warm-up" start this long after the first event (two days:
#: by then the Azure trace's hosts in use have stopped climbing).
DEFAULT_WARM_UP_S = 2 * 86_400


@dataclass(frozen=True)
class Consolidation:
    """Plan every `period_s` seconds (first plan one period after the first
    event), at most `budget` migrations per plan, no VM again within
    `cooldown_s` of its last move; a migration takes memory /
    `bandwidth_mib_s` seconds. `policy` picks targets, `give_up_after` stops
    a plan after that many hosts in a row could not be emptied."""

    period_s: int = 900
    budget: int = 256
    cooldown_s: int = 3600
    bandwidth_mib_s: float = 1000.0
    policy: str = DEFAULT_CONSOLIDATION_POLICY
    give_up_after: int = 5

    def __post_init__(self) -> None:
        get_policy(self.policy)
        if self.period_s < 1:
            raise ValueError("the consolidation period must be at least 1 s")
        if self.budget < 1:
            raise ValueError("the consolidation budget must be at least 1 migration per plan")
        if self.cooldown_s < 0:
            raise ValueError("the cooldown must be >= 0 s")
        if not self.bandwidth_mib_s > 0:
            raise ValueError("the migration bandwidth must be > 0 MiB/s")
        if self.give_up_after < 1:
            raise ValueError("give_up_after must be >= 1")

    def duration_s(self, memory_mib: int) -> int:
        """Seconds one migration of a VM of `memory_mib` takes (at least 1)."""
        return max(1, math.ceil(memory_mib / self.bandwidth_mib_s))

    @property
    def label(self) -> str:
        """How a consolidated scenario is named beside its plain twin."""
        return f"+consolidate(N={self.budget})"


def shadow_name(vm: str) -> str:
    """The name a VM's copy holds on its target while it migrates (a name is
    unique in a cluster, and the original still runs on its source)."""
    return f"{vm}\x00migrating"
