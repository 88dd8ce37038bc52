"""The interface every driver offers, and the one error it raises."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pinfold.agent.domain import DomainSpec
from pinfold.agent.networks import NetworkInfo

__all__ = ["Console", "Driver", "DriverError", "GuestInfo", "GuestState", "Migrated", "MigrationTarget"]


class GuestState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    OTHER = "other"


class DriverError(Exception):
    """A hypervisor operation failed. `code` is stable ("not found",
    "already exists", "invalid", "failed"); `detail` is the hypervisor's words."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


@dataclass(frozen=True)
class GuestInfo:
    """A guest the hypervisor knows. `spec` is None for a domain without
    pinfold metadata: such domains are reported, never touched."""

    name: str
    state: GuestState
    spec: DomainSpec | None


@dataclass(frozen=True)
class MigrationTarget:
    """Where `Driver.migrate` sends a guest, as the target agent's prepare
    said: the CPUs it runs on there, the target daemon's URI (None for the
    sim driver) and QEMU's migration stream URI there (None: the daemon's
    choice); `copy_disks`: copy the guest's disks to files the target made
    (non-shared storage), else they are shared; `unsafe`: shared disks on a
    file system libvirt cannot tell is shared (one local file system: a lab)."""

    cpuset: frozenset[int]
    libvirt_uri: str | None = None
    migrate_uri: str | None = None
    copy_disks: bool = False
    unsafe: bool = False


@dataclass(frozen=True)
class Migrated:
    """A live migration done: the hypervisor's job time, and the guest's
    downtime when the hypervisor said it (None otherwise)."""

    seconds: float
    downtime_ms: int | None = None


class Console(Protocol):
    """An open serial console of a guest (`Driver.console`). Its output goes to
    the `output` callback it was opened with, on a thread of the driver's."""

    def write(self, data: bytes) -> None:
        """Send keystrokes to the guest; DriverError once the console is closed."""

    def close(self) -> None:
        """Detach (idempotent); `closed` is not called for a close asked so."""


class Driver(Protocol):
    """How an agent realises VMs. Every method either does what it says or
    raises DriverError, leaving the guest as it was where the hypervisor allows."""

    def create(self, spec: DomainSpec) -> None:
        """Define and start a guest."""

    def delete(self, name: str) -> None:
        """Stop (forcefully) and undefine a guest."""

    def start(self, name: str) -> None: ...

    def shutdown(self, name: str, timeout_s: float) -> None:
        """Ask the guest to power off; force it off after `timeout_s`."""

    def suspend(self, name: str) -> None: ...

    def resume(self, name: str) -> None: ...

    def repin(self, name: str, cpuset: frozenset[int]) -> None:
        """Pin every vCPU and the emulator to `cpuset`, live and persistently."""

    def give_console(self, name: str) -> bool:
        """Give guest `name`'s persistent definition a console if it was
        defined before consoles (its serial a file): a pty serial logging to
        that file, in effect at its next boot; a running guest is left as it
        is. True when it changed."""

    def relabel(self, name: str, owner: str) -> None:
        """Name another owner in the guest's pinfold metadata, live and persistently."""

    def resize(self, name: str, vcpus: int, memory_mib: int) -> None:
        """Give the guest's persistent definition another size (in effect at its next boot)."""

    def migrate(self, name: str, target: MigrationTarget) -> Migrated:
        """Move running guest `name` live to `target`, pinned there to
        `target.cpuset`, defined there and no longer here once it returns.
        DriverError "invalid" for a guest that is not running; any other
        failure leaves the guest running here, where the hypervisor allows."""

    def migrating_out(self, name: str) -> bool:
        """Whether guest `name` is being migrated away from here right now (by a
        migration an agent started before it was killed: the daemon goes on)."""

    def receive(self, spec: DomainSpec) -> None:
        """Take in guest `spec.name`, migrated here by a peer's `migrate`:
        DriverError "not found" when it has not arrived (or does not run)."""

    def guests(self) -> list[GuestInfo]: ...

    def stats(self) -> dict[str, tuple[int, float]]:
        """Per running guest: cumulative CPU time (ns) and memory in use (MiB)."""

    def info(self, name: str) -> GuestInfo: ...

    def addresses(self, name: str) -> list[str]:
        """The guest's IPv4 addresses the hypervisor knows (DHCP leases, guest
        agent), or [] when it knows none yet."""

    def nic_addresses(self, name: str) -> dict[str, list[str]]:
        """Per MAC (lower-case) of the guest's NICs, the addresses the
        hypervisor knows (IPv4 first, then IPv6; no loopback, no link-local)."""

    def networks(self) -> list[NetworkInfo]:
        """The networks the hypervisor has, started or not."""

    def bridge_exists(self, name: str) -> bool:
        """Whether the host has a bridge of that name (for bridged NICs)."""

    def define_network(self, name: str, subnet: ipaddress.IPv4Network) -> None:
        """Define a NAT network with DHCP on `subnet`, start it and mark it autostarted."""

    def start_network(self, name: str) -> None:
        """Start a defined network."""

    def console(self, name: str, output: Callable[[bytes], None], closed: Callable[[str], None]) -> Console:
        """Attach to the serial console of running guest `name`: its bytes go to
        `output`, and `closed(reason)` is called once when the console ends on the
        guest's side (it stopped, it was deleted). DriverError "invalid" for a
        guest that is not running or runs without one (started with a file
        serial, defined before consoles: it has one from its next boot, see
        `give_console`), "not found" for none. One console per guest at a
        time: the caller shares it among its clients."""
