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
requests) and `startup` (the start step). Building an agent does no I/O:
`start_up()` loads the store, restores the allocator, removes the overlays
a crash left half made and reconciles (`Agent.open` builds and starts).
"""

from __future__ import annotations

from pathlib import Path

from pinfold.agent.core import AgentError, AgentSettings, NotStartedError, StalePin, state_of
from pinfold.agent.drivers.base import Driver, DriverError
from pinfold.agent.lifecycle import Lifecycle
from pinfold.agent.reconcile import Action
from pinfold.agent.startup import StartUp
from pinfold.agent.store import Store, StoredVM
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from pinfold.topology import Topology

__all__ = ["Agent", "AgentError", "AgentSettings", "NotStartedError", "StalePin", "VMRequest"]


class Agent(Lifecycle, StartUp):
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
