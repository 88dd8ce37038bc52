"""vNode admission arithmetic (DESIGN.md, "vNode arithmetic"): the one
feasibility rule.

Each function works element-wise on numpy arrays as well as on scalars, so the
allocator (one host) and the cluster (thousands of hosts at once) run the very
same formula: there is no second copy to drift. `admits` is the rule itself
(the CPUs from `cpus_to_add` against the free CPUs, then the memory pool) and
`capacity_refusal` turns one host's answer into its `Refusal`, CPU first: the
allocator's `check`, the cluster's vector stage and per-host `Decision.refusal`
and the controller's replay (through the allocator) all come down to these two.

C = CPUs in the vNode, r = its ratio, A = vCPUs allocated in it, M = the
largest VM's vCPUs, v = the candidate's vCPUs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pinfold.placement.errors import Refusal, RefusalCode

__all__ = ["EPSILON", "admits", "capacity_refusal", "cpus_to_add", "shrunk_size"]

#: Slack for float error in C*r (3 * 1.1 = 3.3000000000000003): a shortfall
#: within EPSILON of an integer is that integer, not the next one.
EPSILON = 1e-9

#: A float, or an array of them (one entry per host). Results have the same shape.
Quantity = Any


def cpus_to_add(cpus: Quantity, allocated: Quantity, ratio: Quantity, vcpus: Quantity) -> Quantity:
    """CPUs a vNode must grow by to admit a VM of `vcpus` vCPUs.

    The room `C*r - A` must reach v, so add `ceil((v - room) / r)` CPUs; then
    more if needed so that `C + added >= v`, because a VM is never
    oversubscribed against itself. A new vNode (C = A = 0) gets exactly v.
    """
    room = cpus * ratio - allocated
    shortfall = _ceil((vcpus - room) / ratio - EPSILON)
    return _maximum(_maximum(shortfall, 0), vcpus - cpus)


def admits(
    needed: Quantity,
    free_cpus: Quantity,
    memory_allocated: Quantity,
    memory_mib: Quantity,
    memory_usable: Quantity,
) -> tuple[Quantity, Quantity]:
    """(CPU fits, memory fits): the level's vNode can grow by `needed` CPUs
    out of the free ones, and the pool takes `memory_mib` more (memory is
    never oversubscribed). Bools, or arrays of them, one entry per host."""
    return needed <= free_cpus, memory_allocated + memory_mib <= memory_usable


def capacity_refusal(
    cpu_ok: bool,
    mem_ok: bool,
    *,
    level: float,
    vcpus: int,
    needed: float,
    free_cpus: float,
    usable_cpus: float,
    memory_mib: float,
    memory_free: float,
    memory_usable: float,
) -> Refusal | None:
    """One host's refusal from its `admits` answer (CPU checked first), or
    None when both fit. The numbers are reported as given, so a caller's ints
    stay ints; `fits_empty` asks the same question of the empty host."""
    if not cpu_ok:
        return Refusal(
            RefusalCode.NOT_ENOUGH_CPU,
            level=level,
            requested=needed,
            available=free_cpus,
            capacity=usable_cpus,
            fits_empty=vcpus <= usable_cpus,
        )
    if not mem_ok:
        return Refusal(
            RefusalCode.NOT_ENOUGH_MEMORY,
            requested=memory_mib,
            available=memory_free,
            capacity=memory_usable,
            fits_empty=memory_mib <= memory_usable,
        )
    return None


def shrunk_size(allocated: Quantity, largest: Quantity, ratio: Quantity) -> Quantity:
    """The size a vNode shrinks to after a removal: `max(ceil(A / r), M)`;
    0 once it is empty (A = M = 0)."""
    return _maximum(_ceil(allocated / ratio - EPSILON), largest)


# numpy ufuncs on Python scalars cost microseconds each, a lot for a single
# host's deploy; these two pick the scalar or the array operation.


def _ceil(value: Quantity) -> Quantity:
    return np.ceil(value) if isinstance(value, np.ndarray) else math.ceil(value)


def _maximum(a: Quantity, b: Quantity) -> Quantity:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return max(a, b)
