"""One vNode: the ordered CPUs of one level on one host, and its VMs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["VNode"]


@dataclass(eq=False, slots=True)
class VNode:
    """The CPUs of level `ratio`, in the order they were added (so shrinking
    can release the newest first), and the vCPUs of its VMs.

    `distance_sum` is the running sum of the distance rows of its CPUs: the
    CPU closest on average to the vNode is then one argmin. `stamp` changes
    whenever the CPU list does, so pin caches know when to recompute.
    """

    ratio: float
    distance_sum: npt.NDArray[np.int64]
    premium: bool = field(init=False)
    cpus: list[int] = field(default_factory=list)
    vms: dict[str, int] = field(default_factory=dict)
    allocated: int = 0
    stamp: int = 0
    _sizes: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.premium = self.ratio == 1.0

    @property
    def largest(self) -> int:
        """M: the largest vCPU count among its VMs (0 when empty)."""
        return max(self._sizes, default=0)

    def copy(self) -> VNode:
        """An independent copy: changing one never changes the other."""
        return VNode(
            self.ratio, self.distance_sum.copy(), cpus=list(self.cpus), vms=dict(self.vms),
            allocated=self.allocated, stamp=self.stamp, _sizes=dict(self._sizes),
        )  # fmt: skip

    def add_vm(self, name: str, vcpus: int) -> None:
        self.vms[name] = vcpus
        self.allocated += vcpus
        self._sizes[vcpus] = self._sizes.get(vcpus, 0) + 1

    def remove_vm(self, name: str) -> int:
        vcpus = self.vms.pop(name)
        self.allocated -= vcpus
        left = self._sizes[vcpus] - 1
        if left:
            self._sizes[vcpus] = left
        else:
            del self._sizes[vcpus]
        return vcpus
