"""A cloud's capacity and use per level, from Placement's resource providers (pure).

pinfold pins nothing on a cloud's hosts; a level there is a set of compute
hosts (resource providers) that overcommit their CPUs by that ratio
(docs/design.md, "Levels on OpenStack"). A provider's level is, in order:

1. the level its trait names (`CUSTOM_PINFOLD_LEVEL_2`: flavors of level 2
   require that trait, so Nova's Placement prefilter sends them there);
2. otherwise its VCPU inventory's `allocation_ratio` (what it really offers).

Its PCPU inventory (dedicated CPUs, flavors with `hw:cpu_policy=dedicated`)
is at level 1 whatever the provider's level. Per level: the physical CPUs
(`total - reserved`), the vCPUs they may hold (times the ratio), the vCPUs
placed (Placement's usages), and the same for memory (MEMORY_MB).

The input is what `Cloud.providers` reads, as plain data, so that the
grouping is tested without a cloud.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pinfold.openstack.flavors import trait_level

__all__ = ["Inventory", "LevelUse", "Provider", "by_level"]


@dataclass(frozen=True)
class Inventory:
    """One resource class of a provider, as Placement states it."""

    total: int
    reserved: int = 0
    allocation_ratio: float = 1.0

    @property
    def usable(self) -> int:
        return max(0, self.total - self.reserved)

    @property
    def capacity(self) -> float:
        return self.usable * self.allocation_ratio


@dataclass(frozen=True)
class Provider:
    """A resource provider: its name, traits, inventories and usages by resource class."""

    name: str
    traits: frozenset[str] = frozenset()
    inventories: Mapping[str, Inventory] = field(default_factory=dict)
    usages: Mapping[str, int] = field(default_factory=dict)

    @property
    def level(self) -> float | None:
        """Its VCPUs' level (see the module); None for a provider with no VCPU inventory nor level trait."""
        named = sorted(level for level in map(trait_level, self.traits) if level is not None)
        if named:
            return named[0]
        vcpu = self.inventories.get("VCPU")
        return None if vcpu is None else vcpu.allocation_ratio


@dataclass
class LevelUse:
    """A level's hosts and their CPUs and memory: capacity and use."""

    level: float
    hosts: list[str] = field(default_factory=list)
    cpus: int = 0
    vcpus: float = 0.0
    vcpus_used: int = 0
    memory_mib: float = 0.0
    memory_used_mib: int = 0

    @property
    def vcpus_free(self) -> float:
        return max(0.0, self.vcpus - self.vcpus_used)


def by_level(providers: Iterable[Provider]) -> dict[float, LevelUse]:
    """Each level's capacity and use, levels in ascending order (see the module)."""
    levels: dict[float, LevelUse] = {}

    def at(level: float, host: str) -> LevelUse:
        use = levels.setdefault(level, LevelUse(level))
        if host not in use.hosts:
            use.hosts.append(host)
        return use

    for provider in providers:
        vcpu, pcpu, memory = (provider.inventories.get(name) for name in ("VCPU", "PCPU", "MEMORY_MB"))
        level = provider.level
        if level is not None and vcpu is not None:
            use = at(level, provider.name)
            use.cpus += vcpu.usable
            use.vcpus += vcpu.capacity
            use.vcpus_used += provider.usages.get("VCPU", 0)
        if pcpu is not None:
            dedicated = at(1.0, provider.name)
            dedicated.cpus += pcpu.usable
            dedicated.vcpus += pcpu.usable  # never overcommitted
            dedicated.vcpus_used += provider.usages.get("PCPU", 0)
        if memory is not None and (level is not None or pcpu is not None):
            home = at(level if level is not None and vcpu is not None else 1.0, provider.name)
            home.memory_mib += memory.capacity
            home.memory_used_mib += provider.usages.get("MEMORY_MB", 0)
    return dict(sorted(levels.items()))
