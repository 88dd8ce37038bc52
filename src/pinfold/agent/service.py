"""The agent's core: one host's allocator made real through a driver, with
every accepted change stored before the hypervisor is touched.

Order of a create: place in the allocator (refusals change nothing), store
the VM and the new vNode layout with a pending mark, create the domain, apply
the re-pins the allocator reported to the VMs already running, clear the mark.
A delete marks, deletes the domain, frees the placement and forgets the VM.
A crash between any two steps is repaired at the next start (`reconcile`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pinfold.agent.disks import DiskError, Disks
from pinfold.agent.domain import DomainSpec, DomainXMLError, valid_name
from pinfold.agent.drivers.base import Driver, DriverError, GuestState
from pinfold.agent.failpoints import crash_point
from pinfold.agent.reconcile import Action, Step, plan
from pinfold.agent.store import Pending, Store, StoredVM
from pinfold.placement import HostAllocator, PlacementError, VMSpec
from pinfold.topology import Topology

__all__ = ["Agent", "AgentError", "AgentSettings", "VMRequest"]


class AgentError(Exception):
    """A request the agent refuses; `code` is stable (as the placement's)."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


@dataclass(frozen=True)
class AgentSettings:
    """`image_dirs` are where base images may be taken from; overlays go to
    `disk_dir`. `kernel`/`initrd`/`cmdline` boot guests directly (the test
    guests boot this way, with or without a disk)."""

    domain_type: str = "kvm"
    critical_size: int = 6
    reserved_memory_mib: int = 0
    shutdown_timeout_s: float = 30.0
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    serial_dir: Path | None = None
    image_dirs: tuple[Path, ...] = ()
    disk_dir: Path | None = None


@dataclass(frozen=True)
class VMRequest:
    name: str
    vcpus: int
    memory_mib: int
    ratio: float = 1.0
    owner: str = ""
    image: str = ""


@dataclass
class Agent:
    topology: Topology
    driver: Driver
    store: Store
    settings: AgentSettings = field(default_factory=AgentSettings)
    #: held around every change and read, so the allocator and the store move together
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        disk_dir = self.settings.disk_dir or self.store.path.parent / "disks"
        self.disks = Disks(self.settings.image_dirs, disk_dir)
        snapshot, self.vms = self.store.load()
        self.allocator = HostAllocator.restore(
            self.topology, snapshot, self.settings.critical_size, self.settings.reserved_memory_mib
        )
        self.report: list[Step] = self.reconcile()

    # -- requests --------------------------------------------------------------

    def create(self, request: VMRequest) -> StoredVM:
        if not valid_name(request.name):
            raise AgentError("invalid request", "name: use 1-63 letters, digits, '.', '_', '-'")
        spec = VMSpec(request.name, request.vcpus, request.memory_mib, float(request.ratio))
        base = None
        if request.image:
            try:
                base = self.disks.base_image(request.image)
            except DiskError as error:
                raise AgentError(error.code, error.detail) from error
        try:
            change = self.allocator.deploy(spec)
        except PlacementError as error:
            raise AgentError(error.code.value, error.refusal.describe()) from error
        vm = StoredVM(spec, request.owner, str(base or ""), "creating", Pending.CREATE)
        try:
            self.store.save_vm(vm, self.allocator.snapshot())
        except BaseException:
            self.allocator.remove(spec.name)
            raise
        self.vms[spec.name] = vm
        crash_point("create:stored")
        try:
            self._make(vm)
        except (DriverError, DomainXMLError, DiskError) as error:
            self._forget(spec.name)
            raise AgentError("hypervisor failed", str(error)) from error
        crash_point("create:made")
        self._repin(change.repinned)
        return self._set(spec.name, "running", None)

    def delete(self, name: str) -> None:
        vm = self._get(name)
        self._set(name, vm.state, Pending.DELETE)
        crash_point("delete:marked")
        try:
            self.driver.delete(name)
        except DriverError as error:
            if error.code != "not found":
                self._set(name, vm.state, None)
                raise AgentError("hypervisor failed", str(error)) from error
        crash_point("delete:unmade")
        self._forget(name)

    def start(self, name: str) -> StoredVM:
        return self._act(name, lambda: self.driver.start(name), "running")

    def shutdown(self, name: str) -> StoredVM:
        return self._act(
            name, lambda: self.driver.shutdown(name, self.settings.shutdown_timeout_s), "shutoff"
        )

    def suspend(self, name: str) -> StoredVM:
        return self._act(name, lambda: self.driver.suspend(name), "paused")

    def resume(self, name: str) -> StoredVM:
        return self._act(name, lambda: self.driver.resume(name), "running")

    # -- start-up --------------------------------------------------------------

    def reconcile(self) -> list[Step]:
        """Make the hypervisor match the store (see `reconcile.plan`); returns
        the steps, including the VMs reported missing and unknown domains."""
        observed = {guest.name: guest for guest in self.driver.guests()}
        steps = plan(self.vms, observed)
        for step in steps:
            if step.action is Action.CREATE:
                self._make(self.vms[step.name])
                self._set(step.name, "running", None)
            elif step.action is Action.FINISH_CREATE:
                self._set(step.name, _state_name(observed[step.name].state), None)
            elif step.action is Action.DELETE:
                self.driver.delete(step.name)
                self._forget(step.name)
            elif step.action is Action.FORGET:
                self._forget(step.name)
            elif step.action is Action.MISSING:
                self._set(step.name, "missing", None)
        # pins follow the restored layout, whatever the domains held before the crash
        current = {guest.name: guest for guest in self.driver.guests()}
        for name in self.vms:
            guest = current.get(name)
            if (
                guest is not None
                and guest.spec is not None
                and guest.spec.cpuset != self.allocator.pinning(name)
            ):
                self.driver.repin(name, self.allocator.pinning(name))
        return steps

    def vnode_layout(self) -> dict[float, list[int]]:
        with self.lock:
            return {ratio: self.allocator.vnode(ratio) for ratio in self.allocator.levels}

    # -- internals -------------------------------------------------------------

    def _make(self, vm: StoredVM) -> None:
        """The VM's disk (when it has an image), then its domain."""
        disk = self.disks.create_overlay(vm.spec.name, Path(vm.image)) if vm.image else None
        try:
            self.driver.create(self._domain(vm, self.allocator.pinning(vm.spec.name), disk))
        except BaseException:
            self.disks.remove_overlay(vm.spec.name)
            raise

    def _domain(self, vm: StoredVM, cpuset: frozenset[int], disk: Path | None) -> DomainSpec:
        s = self.settings
        serial = s.serial_dir / f"{vm.spec.name}.log" if s.serial_dir is not None else None
        return DomainSpec(
            name=vm.spec.name, vcpus=vm.spec.vcpus, memory_mib=vm.spec.memory_mib, cpuset=cpuset,
            level=float(vm.spec.ratio), owner=vm.owner, image=vm.image, domain_type=s.domain_type,
            kernel=s.kernel, initrd=s.initrd, cmdline=s.cmdline, serial_log=serial, disk=disk,
        )  # fmt: skip

    def _repin(self, repinned: Mapping[str, frozenset[int]]) -> None:
        for name, cpuset in repinned.items():
            if self.vms.get(name) is not None and self.vms[name].state != "missing":
                self.driver.repin(name, cpuset)

    def _forget(self, name: str) -> None:
        self.disks.remove_overlay(name)
        change = self.allocator.remove(name)
        self.store.forget_vm(name, self.allocator.snapshot())
        self.vms.pop(name, None)
        self._repin(change.repinned)

    def _set(self, name: str, state: str, pending: Pending | None) -> StoredVM:
        self.store.set_state(name, state, pending)
        vm = self.vms[name] = replace(self.vms[name], state=state, pending=pending)
        return vm

    def _get(self, name: str) -> StoredVM:
        vm = self.vms.get(name)
        if vm is None:
            raise AgentError("unknown vm", name)
        return vm

    def _act(self, name: str, operation: Callable[[], None], state: str) -> StoredVM:
        self._get(name)
        try:
            operation()
        except DriverError as error:
            raise AgentError(
                "invalid" if error.code == "invalid" else "hypervisor failed", str(error)
            ) from error
        return self._set(name, state, None)


def _state_name(state: GuestState) -> str:
    return "running" if state is GuestState.RUNNING else state.value
