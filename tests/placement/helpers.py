"""Small builders shared by the placement tests."""

from __future__ import annotations

from pinfold.placement import VMSpec

GIB = 1024


def vm(name: str, vcpus: int, gib: float, ratio: float) -> VMSpec:
    """SlackVM's "VM(c, g, r)": c vCPUs, g GiB, ratio r."""
    return VMSpec(name=name, vcpus=vcpus, memory_mib=int(gib * GIB), ratio=ratio)
