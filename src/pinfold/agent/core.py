"""The agent's shared core (`AgentCore`): the parts `Agent` is built from
(`pins`, `making`, `warm`, `lifecycle`, `startup`, see `service`) all stand
on it. Its refusals (`AgentError`), settings and the state it keeps live here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pinfold.agent.disks import DiskError, Disks
from pinfold.agent.drivers.base import Driver, DriverError, GuestState
from pinfold.agent.networks import OwnNetwork
from pinfold.agent.pools import PoolSpec
from pinfold.agent.reconcile import Step
from pinfold.agent.seed import Seeds
from pinfold.agent.store import Pending, Store, StoredVM
from pinfold.model.defaults import (
    DEFAULT_CRITICAL_SIZE,
    DEFAULT_RESERVED_MEMORY_MIB,
    MIGRATION_LIMIT_S,
    SHUTDOWN_TIMEOUT_S,
)
from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import NIC
from pinfold.placement import HostAllocator, Refusal
from pinfold.topology import Topology

__all__ = ["AgentCore", "AgentError", "AgentSettings", "MigrationStorage", "NotStartedError", "StalePin"]

MigrationStorage = Literal["copy", "shared", "shared-local"]

#: the agent's log keeps the name it had before the core was split in modules
log = logging.getLogger("pinfold.agent.service")


class AgentError(PinfoldError):
    """A request the agent refuses; `code` is an `ErrorCode` (the placement's
    refusal codes are among them), `refusal` the placement's refusal as data
    when it came from the allocator (its JSON error carries it)."""

    def __init__(self, code: ErrorCode | str, detail: str = "", refusal: Refusal | None = None) -> None:
        super().__init__(code, detail)
        self.refusal = refusal


@dataclass(frozen=True)
class AgentSettings:
    """`image_dirs` are where base images may be taken from; overlays go to
    `disk_dir`. `kernel`/`initrd`/`cmdline` boot guests directly (the test
    guests boot this way, with or without a disk). `default_network` is
    the libvirt network a VM created without NICs gets one NIC on ("": none,
    as before NICs existed), or `default_bridge` the host bridge it gets
    it on instead; `own_network` the NAT network the agent makes
    at start when it is missing (None: none)."""

    domain_type: str = "kvm"
    critical_size: int = DEFAULT_CRITICAL_SIZE
    reserved_memory_mib: int = DEFAULT_RESERVED_MEMORY_MIB
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    serial_dir: Path | None = None
    image_dirs: tuple[Path, ...] = ()
    disk_dir: Path | None = None
    pools: tuple[PoolSpec, ...] = ()
    default_network: str = ""
    default_bridge: str = ""
    own_network: OwnNetwork | None = None
    #: how a live migration treats the VMs' disks (the same `disk_dir` on every host):
    #: "copy" (copied to a file the target makes), "shared" (one file, on shared storage),
    #: "shared-local" (one file on one local file system: a lab's two daemons; libvirt
    #: cannot tell it is shared, so the migration is forced as UNSAFE)
    migration_storage: MigrationStorage = "copy"
    #: the URI a peer host's libvirt client reaches this host's daemon at ("": none, sim)
    peer_libvirt_uri: str = ""
    #: the address QEMU's incoming migration stream listens on here, e.g. 127.0.0.1 ("": none)
    migration_address: str = ""
    #: how long a start waits for a migration the hypervisor still carries out (the agent
    #: was killed during its send) before it decides whether the guest stayed or left
    migration_wait_s: float = 600.0
    #: how long a send may run before the agent cancels it (the hypervisor's job aborted, the
    #: guest kept running here): a guest that dirties memory faster than the link carries it
    #: never converges, and would keep its migration (and the target's room) open forever
    migration_timeout_s: float = MIGRATION_LIMIT_S

    @property
    def default_nic(self) -> NIC | None:
        """The NIC a VM asking none gets: on the default network, else on the
        default bridge, else none."""
        if self.default_network:
            return NIC(network=self.default_network)
        return NIC(bridge=self.default_bridge) if self.default_bridge else None


class NotStartedError(RuntimeError):
    """A request to an agent whose `Agent.start_up` has not run (or failed):
    its store is not loaded, so it knows no VM and no placement."""

    def __init__(self) -> None:
        super().__init__("the agent is not started: call start_up() first (or build it with Agent.open)")


@dataclass(frozen=True)
class StalePin:
    """A VM the hypervisor would not re-pin: the CPUs it should be on, and why not."""

    cpuset: frozenset[int]
    error: str


@dataclass
class AgentCore:
    """What every part of the agent shares: the host, the driver, the store,
    the lock, and the state `start_up` loads; and the small steps they all
    take (store a state, find a user's VM, read a guest's state)."""

    topology: Topology
    driver: Driver
    store: Store
    settings: AgentSettings = field(default_factory=AgentSettings)
    #: held around every change and read, so the allocator and the store move together
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        disk_dir = self.settings.disk_dir or self.store.path.parent / "disks"
        self.disks = Disks(self.settings.image_dirs, disk_dir)
        #: the VMs' cloud-init seeds, next to their overlays
        self.seeds = Seeds(disk_dir)
        self._warming_since: dict[str, float] = {}
        #: per pool, why its last step (adding or suspending a member) failed: why it does not fill
        self.pool_errors: dict[str, str] = {}
        #: called after a member is handed out (the daemon's PoolKeeper refills then)
        self.on_hand_out: Callable[[], None] = lambda: None
        #: VMs whose last re-pin failed (their live pins are not their vNode's): retried before every change
        self._stale_pins: dict[str, StalePin] = {}
        #: per VM shutting down, the token of that shutdown: its end is recorded only while it is the same
        self._shutdowns: dict[str, object] = {}
        #: the stored VMs and the allocator, None until `start_up` loads them
        self._vms: dict[str, StoredVM] | None = None
        self._allocator: HostAllocator | None = None
        #: what the start-up did (`reconcile`'s steps); empty until it has run
        self.report: list[Step] = []

    @property
    def vms(self) -> dict[str, StoredVM]:
        """Every stored VM by name, pool members included (the core's own)."""
        if self._vms is None:
            raise NotStartedError()
        return self._vms

    @property
    def allocator(self) -> HostAllocator:
        """The host's placement, restored from the store (the core's own)."""
        if self._allocator is None:
            raise NotStartedError()
        return self._allocator

    @allocator.setter
    def allocator(self, allocator: HostAllocator) -> None:
        self._allocator = allocator

    def _set(self, name: str, state: VMState, pending: Pending | None, durable: bool = True) -> StoredVM:
        """`durable`=False: a step that clears a pending mark (`Store.set_state`)."""
        self.store.set_state(name, state, pending, durable)
        vm = self.vms[name] = replace(self.vms[name], state=state, pending=pending)
        return vm

    def _get(self, name: str) -> StoredVM:
        """A user's VM by name; pool members are the agent's own, not theirs."""
        vm = self.vms.get(name)
        if vm is None or vm.pool:
            raise AgentError("unknown vm", name)
        return vm

    def serial_log(self, domain: str) -> Path | None:
        """Where the serial console of domain `domain` is logged: derived from
        its name in `serial_dir` (never stored), None when no log is kept."""
        if self.settings.serial_dir is None:
            return None
        return self.settings.serial_dir / f"{domain}.log"

    def _base_image(self, image: str) -> Path | None:
        if not image:
            return None
        try:
            return self.disks.base_image(image)
        except DiskError as error:
            raise AgentError(error.code, error.detail) from error

    def _idle(self, name: str) -> StoredVM:
        """A user's VM with no operation under way: a shutdown waits without
        the lock, and nothing else may act on the VM meanwhile."""
        vm = self._get(name)
        if vm.pending is not None:
            raise AgentError("invalid", f"{name} is {vm.state}: its {vm.pending.value} is not finished")
        if vm.state is VMState.MISSING:
            raise missing_error(name)
        return vm

    def _lost(self, name: str) -> AgentError:
        """An action found the VM's domain gone from the hypervisor: the VM is
        missing (as a re-pin would mark it), a state no action can leave, so
        the request is refused as invalid (409), not as a hypervisor failure."""
        log.warning("the domain of %s has gone: marked missing", name)
        self._set(name, VMState.MISSING, None)
        return missing_error(name)

    def _observed_state(self, domain: str, otherwise: VMState) -> VMState:
        try:
            return state_of(self.driver.info(domain).state)
        except DriverError:
            return otherwise


def missing_error(name: str) -> AgentError:
    return AgentError("invalid", f"{name} is missing: its domain has gone from the hypervisor (delete it)")


def refusal_of(error: DriverError) -> AgentError:
    return AgentError("invalid" if error.code == "invalid" else "hypervisor failed", str(error))


def state_of(state: GuestState) -> VMState:
    """The lifecycle's state for a guest's (`other` for the hypervisor's other states)."""
    return VMState(state.value)
