"""vNode admission arithmetic (DESIGN.md, "vNode arithmetic").

Each function works element-wise on numpy arrays as well as on scalars, so the
allocator (one host) and the cluster (thousands of hosts at once) run the very
same formula: there is no second copy to drift.

C = CPUs in the vNode, r = its ratio, A = vCPUs allocated in it, M = the
largest VM's vCPUs, v = the candidate's vCPUs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["EPSILON", "cpus_to_add", "shrunk_size"]

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
