"""The agent's core: one host's allocator made real through a driver, with
every accepted change stored before the hypervisor is touched.

Order of a create: check that the VM would fit and its name is free (a
refusal costs no qemu-img), make the disk overlay (without the lock: qemu-img
may be slow), place in the allocator (refusals change nothing), store the VM and the
new vNode layout with a pending mark, create the domain, apply the re-pins the
allocator reported to the VMs already running, clear the mark. A delete
marks, deletes the domain, frees the placement and forgets the VM. A shutdown
marks, waits for the guest without the lock, and records how it ended.
A crash between any two steps is repaired at the next start (`reconcile`).
A create that matches a warm pool takes a ready member instead (see `pools`):
rename in the allocator and the store (pending), resume, clear the mark.

Every change is made under `Agent.lock`; only those two waits are not.

Whether start, shutdown, suspend or resume is legal is the lifecycle table's
(`pinfold.model.lifecycle`), asked with the state the guest is in before the
driver is called; the states stored are that module's `VMState`.

A VM that cannot follow its vNode (a re-pin the hypervisor refuses, after a
delete or a resize, or at start) is kept as a stale pin (`Agent.stale_pins()`)
and re-pinned again before every change and at every PoolKeeper tick. Until that works, no
cold create is accepted (`stale pins`): it could hand the CPUs that VM still
holds to another vNode. A hand-out from a pool moves no CPU and goes on.

`Agent` is the public facade; its parts are split by concern, each a class
the next one builds on: `core` (the state every part shares and its small
steps), `pins` (re-pinning, stale pins), `making` (a cold create's and a
delete's steps), `warm` (warm-pool upkeep and hand-out), `lifecycle` (the
requests), `migration` (a live migration's steps on either end) and
`startup` (the start step). Building an agent does no I/O:
`start_up()` loads the store, restores the allocator, removes the overlays
a crash left half made and reconciles (`Agent.open` builds and starts).
Other packages call `Agent`'s methods (`snapshot` for one consistent read)
and never touch its `vms`, `allocator`, `lock`, `driver`, `store` or
`disks`: tests/test_layers.py checks so.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinfold.agent.core import AgentError, AgentSettings, NotStartedError, StalePin, state_of
from pinfold.agent.drivers.base import Console, Driver, DriverError
from pinfold.agent.migration import Migrating
from pinfold.agent.reconcile import Action
from pinfold.agent.startup import StartUp
from pinfold.agent.store import Store, StoredVM
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import NIC, VMRequest
from pinfold.topology import Topology

__all__ = [
    "Agent",
    "AgentError",
    "AgentSettings",
    "AgentSnapshot",
    "NotStartedError",
    "StalePin",
    "VMRequest",
]


@dataclass(frozen=True)
class AgentSnapshot:
    """One consistent read of the agent (`Agent.snapshot`), taken under its
    lock: the VMs, their pins and the host's figures all from the same moment,
    for the HTTP API, the heartbeat and the monitor. Values only: reading it
    holds no lock and changes nothing."""

    #: the users' VMs by name, in the store's order (pool members are the agent's own)
    vms: Mapping[str, StoredVM]
    #: each user VM's CPUs, ascending
    pins: Mapping[str, list[int]]
    #: every stored VM, pool members included
    vm_count: int
    #: SlackVM's /status document of the host
    status: dict[str, Any]
    #: each level's vNode (its CPUs in the order they were added), levels ascending
    vnodes: dict[float, list[int]]
    usable_cpus: tuple[int, ...]
    host_count: int
    #: CPUs in no vNode
    free_cpus: int
    memory_usable_mib: int
    memory_allocated_mib: int
    memory_free_mib: int
    #: `Agent.pool_status`, `Agent.unknown_domains`, `Agent.stale_pins`
    pools: dict[str, dict[str, int | str | None]]
    unknown_domains: list[str]
    stale_pins: dict[str, dict[str, list[int] | str]]


class Agent(Migrating, StartUp):
    """One host's agent: build it (no I/O), then `start_up`; or `Agent.open`.
    The public API other packages use; its parts are in the modules above."""

    @classmethod
    def open(
        cls, topology: Topology, driver: Driver, store: Store, settings: AgentSettings | None = None
    ) -> Agent:
        """An agent built and started (`start_up`): what callers want."""
        agent = cls(topology, driver, store, settings or AgentSettings())
        agent.start_up()
        return agent

    def close(self) -> None:
        """Close the store (the daemon's last step)."""
        self.store.close()

    def snapshot(self) -> AgentSnapshot:
        """The agent as it is now, read in one go under the lock."""
        with self.lock:
            allocator = self.allocator
            vms = {vm.spec.name: vm for vm in self.user_vms()}
            return AgentSnapshot(
                vms=vms,
                pins={name: self._pins(name) for name in vms},
                vm_count=len(self.vms),
                status=allocator.status(),
                vnodes=self.vnode_layout(),
                usable_cpus=tuple(allocator.topology.usable_cpus),
                host_count=allocator.topology.host_count,
                free_cpus=allocator.free_cpu_count,
                memory_usable_mib=allocator.memory_usable_mib,
                memory_allocated_mib=allocator.memory_allocated_mib,
                memory_free_mib=allocator.memory_free_mib,
                pools=self.pool_status(),
                unknown_domains=self.unknown_domains(),
                stale_pins=self.stale_pins(),
            )

    def pinning(self, name: str) -> list[int]:
        """The CPUs VM `name` is pinned to, ascending; none for a VM not placed."""
        with self.lock:
            return self._pins(name)

    def _pins(self, name: str) -> list[int]:
        return sorted(self.allocator.pinning(name)) if name in self.allocator else []

    def status(self) -> dict[str, Any]:
        """The host in SlackVM's /status shape."""
        with self.lock:
            return self.allocator.status()

    def progress(self, vcpus: int, memory_mib: int, ratio: float) -> float:
        """SlackVM's progress score a VM of that size would have on this host."""
        with self.lock:
            return self.allocator.progress(vcpus, memory_mib, ratio)

    def user_vms(self) -> list[StoredVM]:
        """The VMs people asked for: every stored VM but the pool members."""
        with self.lock:
            return [vm for vm in self.vms.values() if not vm.pool]

    def unknown_domains(self) -> list[str]:
        """pinfold domains that no stored VM owns, as found at start: reported,
        never touched (another agent's, or left by a store that was lost)."""
        return [step.name for step in self.report if step.action is Action.UNKNOWN]

    def addresses(self, name: str) -> list[str]:
        """A user VM's IPv4 addresses, as the hypervisor knows them."""
        with self.lock:
            vm = self._get(name)
        try:
            return self.driver.addresses(vm.domain)
        except DriverError:
            return []

    def nic_addresses(self, name: str) -> list[tuple[NIC, list[str]]]:
        """A user VM's NICs, each with the addresses the hypervisor knows for
        its MAC (none yet: empty)."""
        with self.lock:
            vm = self._get(name)
        try:
            learnt = self.driver.nic_addresses(vm.domain)
        except DriverError:
            learnt = {}
        return [(nic, learnt.get(nic.mac, [])) for nic in vm.nics]

    def networks(self) -> list[dict[str, Any]]:
        """The host's networks as the hypervisor has them, each said to be the
        agent's own (it made it: `own_network`) or not; [] when it cannot say."""
        try:
            found = self.driver.networks()
        except DriverError:
            return []
        with self.lock:
            owned = self.store.owned_networks()
        return [
            {"name": n.name, "bridge": n.bridge, "subnet": n.subnet or None, "active": n.active,
             "owned": n.name in owned, "default": n.name == self.settings.default_network}
            for n in found
        ]  # fmt: skip

    def console_domain(self, name: str) -> str:
        """The domain of user VM `name` if its guest runs (a console needs a
        running guest): AgentError "unknown vm" (404), else "invalid" (409)."""
        with self.lock:
            vm = self._get(name)
        state = self.guest_state(name)
        if state is not VMState.RUNNING:
            shown = state.value if state is not None else "gone"
            raise AgentError("invalid", f"{name} is {shown}: a console needs a running VM")
        return vm.domain

    def open_console(
        self, domain: str, output: Callable[[bytes], None], closed: Callable[[str], None]
    ) -> Console:
        """The driver's console of `domain` (see `Driver.console`); a guest
        that is not running, or has gone, is "invalid" (409)."""
        try:
            return self.driver.console(domain, output, closed)
        except DriverError as error:
            if error.code in ("invalid", "not found"):
                raise AgentError("invalid", f"{domain}: {error.detail}") from error
            raise AgentError("hypervisor failed", str(error)) from error

    def console_log(self, name: str, limit: int) -> bytes:
        """The last `limit` bytes of user VM `name`'s console log (empty when
        the guest has printed nothing yet); AgentError "unknown vm" for none,
        "not found" when this agent keeps no console logs."""
        with self.lock:
            vm = self._get(name)
        path = self.serial_log(vm.domain)
        if path is None:
            raise AgentError("not found", "this agent keeps no console logs (it has no serial_dir)")
        try:
            with path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - limit))
                return log.read(limit)
        except FileNotFoundError:
            return b""

    @property
    def store_path(self) -> Path:
        """The agent's SQLite file: plug-ins (RAPID) keep their own tables in it."""
        return self.store.path

    def find(self, name: str) -> StoredVM | None:
        """Any stored VM by name, a pool member included, as stored now; None for none."""
        with self.lock:
            return self.vms.get(name)

    def guest_state(self, name: str) -> VMState | None:
        """The state VM `name`'s guest is in as the hypervisor has it now: the
        stored state may be older (a crash between a call and its write, a
        guest that powered itself off). The stored state when the hypervisor
        cannot say; None for no such VM."""
        vm = self.find(name)
        if vm is None:
            return None
        try:
            return state_of(self.driver.info(vm.domain).state)
        except DriverError:
            return vm.state

    def disk_allocated_bytes(self, name: str) -> int | None:
        """The bytes VM `name`'s disk overlay takes on the host; None for a VM
        without a disk (or none found)."""
        vm = self.find(name)
        if vm is None or not vm.image:
            return None
        overlay = self.disks.overlay_path(vm.domain)
        try:
            return overlay.stat().st_blocks * 512
        except FileNotFoundError:
            return None

    def vm_stats(self) -> dict[str, tuple[int, float]]:
        """The driver's per-domain stats under the VMs' names."""
        stats = self.driver.stats()
        with self.lock:
            return {name: stats[vm.domain] for name, vm in self.vms.items() if vm.domain in stats}

    def vnode_layout(self) -> dict[float, list[int]]:
        with self.lock:
            return {ratio: self.allocator.vnode(ratio) for ratio in self.allocator.levels}
