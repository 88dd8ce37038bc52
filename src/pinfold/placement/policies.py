"""Host scoring policies: pure functions over columns of host state.

A policy only ranks; feasibility is decided beforehand, once, by the exact
allocator arithmetic (see `cluster`), so no policy can be optimistic. Every
score function takes `HostColumns` (one entry per host; a single host is a
column of length one) and a `Demand`, and returns one float per host: higher is
better, ties go to the earliest host. Scores never mutate their inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_POLICY", "POLICIES", "Demand", "HostColumns", "Policy", "balance_terms", "get_policy"]

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class HostColumns:
    """Physical allocation state of N hosts, one array entry per host.

    CPUs are logical CPUs (in vNodes or free); memory is MiB of the pool. Every
    host has at least one usable CPU and one usable MiB. The last four columns
    derive from the first four (see `of`, and `balance_terms` for the progress
    ones); `Cluster` keeps them up to date host by host instead of recomputing
    them for every choice, and a test checks the two agree.
    """

    usable_cpus: Floats
    usable_mem: Floats
    free_cpus: Floats
    mem_alloc: Floats
    cpu_alloc: Floats
    target_ratio: Floats
    deviation: Floats
    penalty: Floats

    @classmethod
    def of(cls, usable_cpus: Floats, usable_mem: Floats, free_cpus: Floats, mem_alloc: Floats) -> HostColumns:
        cpu_alloc = usable_cpus - free_cpus
        target, deviation, penalty = balance_terms(usable_cpus, usable_mem, cpu_alloc, mem_alloc)
        return cls(usable_cpus, usable_mem, free_cpus, mem_alloc, cpu_alloc, target, deviation, penalty)

    @property
    def free_mem(self) -> Floats:
        return self.usable_mem - self.mem_alloc


def balance_terms(usable_cpus: Any, usable_mem: Any, cpu_alloc: Any, mem_alloc: Any) -> tuple[Any, Any, Any]:
    """The parts of the progress score that depend on the host alone, for
    scalars (one host) or arrays (many): R* = usable MiB per usable CPU, the
    deviation |Rcur - R*| (Rcur = allocated MiB per allocated CPU, R* when
    nothing is allocated), and the penalty 1 + cpuA / usable CPUs."""
    target = usable_mem / usable_cpus
    if isinstance(cpu_alloc, np.ndarray):
        current = np.divide(mem_alloc, cpu_alloc, out=np.array(target, dtype=np.float64), where=cpu_alloc > 0)
    else:
        current = mem_alloc / cpu_alloc if cpu_alloc > 0 else target
    return target, abs(current - target), 1.0 + cpu_alloc / usable_cpus


@dataclass(frozen=True, slots=True)
class Demand:
    """What the candidate adds on each host: `cpus` CPUs to its level's vNode
    (per host, from `cpus_to_add`) and `memory_mib` to the pool."""

    cpus: Floats
    memory_mib: float


def progress(hosts: HostColumns, demand: Demand) -> Floats:
    """SlackVM's "progress" (memory per core) score.

    R* is the host's own MiB per usable CPU; Rcur its allocated MiB per
    allocated CPU (R* when nothing is allocated), Rnew the same after the
    candidate (R* when it has no CPU either: 0 vCPUs on an empty host score
    0). p = |Rcur - R*| - |Rnew - R*| is positive when the VM moves the
    host toward R*; a negative p is scaled by 1 + cpuA / usable CPUs, so that
    worsening a fuller host costs more.
    """
    target = hosts.target_ratio
    cpus_after = hosts.cpu_alloc + demand.cpus
    # no CPU before or after (0 vCPUs asked of an empty host): Rnew is R*, as Rcur is
    after = np.divide(
        hosts.mem_alloc + demand.memory_mib,
        cpus_after,
        out=np.array(target, dtype=np.float64),
        where=cpus_after > 0,
    )
    score = hosts.deviation - np.abs(after - target)
    return np.where(score < 0, score * hosts.penalty, score)


def first_fit(hosts: HostColumns, demand: Demand) -> Floats:
    """Every host scores the same: the earliest registered host that fits wins."""
    return np.zeros_like(hosts.free_cpus)


def _leftover(hosts: HostColumns, demand: Demand) -> Floats:
    """Mean fraction of CPU and memory left free after the candidate."""
    cpu_left = (hosts.free_cpus - demand.cpus) / hosts.usable_cpus
    mem_left = (hosts.free_mem - demand.memory_mib) / hosts.usable_mem
    return (cpu_left + mem_left) / 2.0


def best_fit(hosts: HostColumns, demand: Demand) -> Floats:
    """Pack: the host left with the least free capacity (mean of CPU and memory
    fractions) after the candidate wins."""
    return -_leftover(hosts, demand)


def worst_fit(hosts: HostColumns, demand: Demand) -> Floats:
    """Spread: the host left with the most free capacity wins."""
    return _leftover(hosts, demand)


def dot_product(hosts: HostColumns, demand: Demand) -> Floats:
    """Alignment (as in Tetris, Grandl et al. 2014): the dot product of the
    demand vector and the free vector, both as fractions of the host's
    capacity. Large when the host has much free of what the VM needs most."""
    cpus = hosts.usable_cpus
    mem = hosts.usable_mem
    return (demand.cpus / cpus) * (hosts.free_cpus / cpus) + (demand.memory_mib / mem) * (
        hosts.free_mem / mem
    )


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    score: Callable[[HostColumns, Demand], Floats]

    @property
    def summary(self) -> str:
        doc = self.score.__doc__ or ""
        return doc.strip().splitlines()[0] if doc else self.name


POLICIES: Mapping[str, Policy] = {
    policy.name: policy
    for policy in (
        Policy("progress", progress),
        Policy("first-fit", first_fit),
        Policy("best-fit", best_fit),
        Policy("worst-fit", worst_fit),
        Policy("dot-product", dot_product),
    )
}

DEFAULT_POLICY = "progress"


def get_policy(name: str) -> Policy:
    """The policy called `name`; an unknown name lists the valid ones."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}") from None
