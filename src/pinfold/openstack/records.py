"""What `Cloud` answers, as plain data (no openstacksdk here): a server of an owner,
its state in pinfold's words, the cloud's capacity per level, and the metadata keys
that mark pinfold's servers. Apart from `cloud` so that the agent imports them
without loading openstacksdk (a second of start-up) unless it runs on a cloud.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pinfold.model.lifecycle import VMState
from pinfold.openstack.levels import LevelUse

__all__ = ["NAME_KEY", "OWNER_KEY", "STATES", "Capacity", "Diagnostics", "Server", "vm_state"]

OWNER_KEY = "pinfold-owner"
NAME_KEY = "pinfold-name"

#: Nova's server status -> the VM's state (the fake driver's SUSPENDED keeps power state RUNNING)
STATES = {
    "ACTIVE": VMState.RUNNING,
    "SUSPENDED": VMState.PAUSED,
    "PAUSED": VMState.PAUSED,
    "SHUTOFF": VMState.SHUTOFF,
    "BUILD": VMState.CREATING,
    "ERROR": VMState.ERROR,
}


@dataclass(frozen=True)
class Capacity:
    """The cloud's CPUs per level as this user may read them (`Cloud.capacity`).
    `source`: "placement" (Placement's inventories and usages, per level:
    `by_level`); "quota" (a user Placement's policy refuses, admin only by
    default: the project's vCPU quota and its use, as level 1, since a quota
    counts vCPUs whatever their level; no level for an unlimited quota); or
    "unknown", `detail` saying why (the cloud did not answer)."""

    source: str
    levels: dict[float, LevelUse]
    detail: str = ""

    @property
    def cpus(self) -> int:
        return sum(level.cpus for level in self.levels.values())


@dataclass(frozen=True)
class Server:
    """A server of this owner, as Nova shows it now."""

    id: str
    name: str
    status: str
    flavor: str
    vcpus: int
    memory_mib: int
    task_state: str | None = None
    fault: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def vm_state(server: Server) -> VMState:
    """The VM's state from its server's status; OTHER for the rest (RESIZE, VERIFY_RESIZE, ...)."""
    return STATES.get(server.status, VMState.OTHER)


@dataclass(frozen=True)
class Diagnostics:
    """One reading of a server's diagnostics (Nova's standard format, microversion
    2.48; admin only by Nova's default policy), as `Cloud.diagnostics` made it.
    `at_s`: when it was read (`time.monotonic`), the clock a CPU rate is taken on.
    `cpu_ns`: the sum of the vCPUs' `time` (ns), None when a vCPU has none (or the
    driver reports no vCPU); `cpu_utilisation`: the mean of the vCPUs' `utilisation`
    (%), None unless every vCPU reports one (the fake driver does, libvirt does not);
    `vcpus`: how many vCPUs it lists. `memory_used_mib`, `memory_maximum_mib`:
    `memory_details` (MiB, as Nova documents them), None where the driver gives none.
    Nova's `disk_details` are I/O counters only: no disk size nor allocation."""

    server_id: str
    at_s: float
    cpu_ns: int | None
    cpu_utilisation: float | None
    vcpus: int
    memory_used_mib: float | None
    memory_maximum_mib: float | None
