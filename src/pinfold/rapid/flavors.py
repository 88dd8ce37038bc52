"""RAPID's VM type table and its flavor rounding (PROTOCOL.md section 4.2).

Eighteen types, the cartesian product of vCPUs {1, 2, 4}, memory {1024, 2048,
4096} MB and disk {20, 40} GB, CPU outermost and disk innermost, ids 0..17.
A request is rounded down in each dimension to the largest table value not
above it; below the smallest it takes the smallest. Kept exactly as the Java
VMM does it, since the SLAM and the DS reason with the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

__all__ = ["VM_TYPES", "VMType", "suitable_type"]

CPUS = (1, 2, 4)
MEMORY_MB = (1024, 2048, 4096)
DISK_GB = (20, 40)


@dataclass(frozen=True)
class VMType:
    id: int
    vcpus: int
    memory_mb: int
    disk_gb: int


VM_TYPES = tuple(VMType(i, c, m, d) for i, (c, m, d) in enumerate(product(CPUS, MEMORY_MB, DISK_GB)))


def _round_down(value: int, steps: tuple[int, ...]) -> int:
    fitting = [step for step in steps if step <= value]
    return fitting[-1] if fitting else steps[0]


def suitable_type(vcpus: int, memory_mb: int, disk_gb: int) -> VMType:
    """`findSuitableFlavorId`: each dimension rounded down independently
    (e.g. (3, 3000, 30) -> 2/2048/20, (0, 0, 0) -> 1/1024/20, (8, 8192, 100) -> 4/4096/40)."""
    wanted = (_round_down(vcpus, CPUS), _round_down(memory_mb, MEMORY_MB), _round_down(disk_gb, DISK_GB))
    for vm_type in VM_TYPES:
        if (vm_type.vcpus, vm_type.memory_mb, vm_type.disk_gb) == wanted:
            return vm_type
    return VM_TYPES[0]
