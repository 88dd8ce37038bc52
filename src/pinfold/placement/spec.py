"""What a VM asks of a host."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

__all__ = ["VMSpec", "invalid_reason", "level_key"]


@dataclass(frozen=True, slots=True)
class VMSpec:
    """A VM request: `vcpus` virtual CPUs at oversubscription `ratio`
    (vCPUs per physical logical CPU; 1.0 is premium) and `memory_mib` of
    memory, which is never oversubscribed.

    Construction does not validate, so that a bad request can reach the
    allocator and be refused there with a stable reason, like any refusal.
    """

    name: str
    vcpus: int
    memory_mib: int
    ratio: float = 1.0


def invalid_reason(spec: VMSpec) -> str | None:
    """Why `spec` can never be placed anywhere, or None when it is well formed."""
    vcpus, memory, ratio = spec.vcpus, spec.memory_mib, spec.ratio
    if (  # the common case, checked cheaply: it runs for every placement
        type(vcpus) is int and vcpus >= 1 and type(memory) is int and memory > 0
        and type(ratio) is float and 1.0 <= ratio < math.inf and type(spec.name) is str and spec.name
    ):  # fmt: skip
        return None
    if not isinstance(spec.name, str) or not spec.name:
        return "name must be a non-empty string"
    if isinstance(spec.vcpus, bool) or not isinstance(spec.vcpus, Integral) or spec.vcpus < 1:
        return "vcpus must be an integer >= 1"
    if isinstance(spec.memory_mib, bool) or not isinstance(spec.memory_mib, Integral) or spec.memory_mib < 1:
        return "memory_mib must be an integer >= 1 (MiB)"
    if isinstance(spec.ratio, bool) or not isinstance(spec.ratio, Real):
        return "ratio must be a number"
    if not math.isfinite(spec.ratio) or spec.ratio < 1.0:
        return "ratio must be >= 1.0"
    return None


def level_key(ratio: float) -> str:
    """How a level is named in SlackVM's status document: "1.0", "2.0", "1.5"."""
    return str(float(ratio))
