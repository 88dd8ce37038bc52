"""A host allocator's state as plain data, so that it survives a restart.

DESIGN.md: "the vNode layout after a restart is the one before it, not a
recomputation". A snapshot keeps each vNode's CPUs in the order they were
added (shrinking releases the newest first) and the VMs in deploy order;
`HostAllocator.restore` rebuilds exactly that state and checks it first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pinfold.placement.spec import VMSpec, level_key

__all__ = ["HostSnapshot"]


@dataclass(frozen=True)
class HostSnapshot:
    vnodes: Mapping[float, tuple[int, ...]]
    vms: tuple[VMSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"vnodes": {"2.0": [cpu, ...]}, "vms": [{name, vcpus, memory_mib, ratio}]}."""
        return {
            "vnodes": {level_key(ratio): list(cpus) for ratio, cpus in self.vnodes.items()},
            "vms": [
                {"name": s.name, "vcpus": s.vcpus, "memory_mib": s.memory_mib, "ratio": float(s.ratio)}
                for s in self.vms
            ],
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> HostSnapshot:
        """Parse `to_dict`'s shape; ValueError names what is malformed."""
        try:
            vnodes = {
                float(ratio): tuple(int(cpu) for cpu in cpus) for ratio, cpus in document["vnodes"].items()
            }
            vms = tuple(
                VMSpec(str(vm["name"]), int(vm["vcpus"]), int(vm["memory_mib"]), float(vm["ratio"]))
                for vm in document["vms"]
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed host snapshot: {exc!r}") from None
        return cls(vnodes, vms)
