"""Making and unmaking one VM: a cold create's steps (overlay, placement,
store with a pending mark, domain, re-pins, mark cleared) and a delete's
(mark, domain, placement, store), with their crash points; see `service`
for the order and why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from pinfold.agent.core import AgentError
from pinfold.agent.disks import DiskError
from pinfold.agent.domain import DomainSpec, DomainXMLError
from pinfold.agent.drivers.base import DriverError
from pinfold.agent.networks import NicRefusedError, resolve_nics
from pinfold.agent.pins import PinKeeping
from pinfold.agent.store import Pending, StoredVM
from pinfold.model.failpoints import crash_point
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import NIC, VMRequest
from pinfold.placement import Change, PlacementError, VMSpec

__all__ = ["Making"]


class Making(PinKeeping):
    """The steps a create and a delete take, shared by requests, warm pools and start-up."""

    def _refuse_unplaceable(self, request: VMRequest) -> None:
        """What `_create_cold` would refuse before it places anything, asked
        before an overlay is made for it. The placement is only a check here:
        the real one follows, under the lock again, and may still refuse."""
        self._refuse_stale()
        self._resolve_nics(request)
        spec = VMSpec(request.name, request.vcpus, request.memory_mib, float(request.ratio))
        refusal = self.allocator.check(spec)
        if refusal is not None:
            raise AgentError(refusal.code.value, refusal.describe(), refusal)

    def _resolve_nics(self, request: VMRequest, taken: set[str] | None = None) -> tuple[NIC, ...]:
        """The NICs the VM gets, each with its MAC (`networks.resolve_nics`);
        a refusal (4xx) before anything is placed, stored or defined.
        `taken`: the MACs in use (default: the store's), for a batch whose
        VMs are not stored yet."""
        try:
            return resolve_nics(
                request.nics, self.settings.default_nic, self.driver.networks(),
                self.driver.bridge_exists, self.store.macs() if taken is None else taken,
            )  # fmt: skip
        except NicRefusedError as refusal:
            raise AgentError(refusal.code, refusal.detail) from None
        except DriverError as error:
            raise AgentError("hypervisor failed", str(error)) from error

    def _refuse_taken(self, name: str) -> None:
        if any(vm.domain == name for vm in self.vms.values()):
            raise AgentError("duplicate name", f"{name} (the domain of another VM)")

    @contextlib.contextmanager
    def _overlay_for(self, base: Path | None) -> Iterator[Path | None]:
        """An overlay on `base`, made now, before the lock is taken (never
        call this holding it); `_make` adopts it under its VM's name, and
        one not adopted (a refused create) is removed on the way out."""
        if base is None:
            yield None
            return
        try:
            prepared = self.disks.prepare_overlay(base)
        except DiskError as error:
            raise AgentError(error.code, error.detail) from error
        try:
            yield prepared
        finally:
            prepared.unlink(missing_ok=True)

    def _create_cold(
        self, request: VMRequest, base: Path | None, pool: str, prepared: Path | None = None
    ) -> StoredVM:
        spec = VMSpec(request.name, request.vcpus, request.memory_mib, float(request.ratio))
        self._refuse_stale()
        nics = self._resolve_nics(request)
        try:
            change = self.allocator.deploy(spec)
        except PlacementError as error:
            raise AgentError(error.code.value, error.refusal.describe(), error.refusal) from error
        vm = StoredVM(
            spec, request.owner, str(base or ""), VMState.CREATING, Pending.CREATE, pool=pool, nics=nics
        )
        try:
            self._write_seed(request, nics)
            crash_point("create:seeded")
            self.store.save_vm(vm, self.allocator.snapshot())
        except BaseException:
            self.seeds.remove(vm.domain)
            self.allocator.remove(spec.name)
            raise
        self.vms[spec.name] = vm
        crash_point("create:stored")
        try:
            self._make(vm, prepared)
        except (DriverError, DomainXMLError, DiskError) as error:
            self._forget(spec.name)
            raise AgentError("hypervisor failed", str(error)) from error
        crash_point("create:made")
        failed = self._repin(change.repinned)
        if failed:  # its neighbours would overlap its vNode: undo it rather than break isolation
            self._delete(self.vms[spec.name])
            raise AgentError("hypervisor failed", "cannot re-pin " + "; ".join(failed))
        # the mark's clearing need not wait for the disk: lost, the next start finishes the create
        return self._set(spec.name, VMState.WARMING if pool else VMState.RUNNING, None, durable=False)

    def _create_cold_batch(self, requests: list[VMRequest]) -> list[StoredVM | AgentError]:
        """Diskless VMs without a seed, made cold as `_create_cold` makes each,
        but with one commit before their domains are made and one after:
        each is placed in turn (a refused one answers its error and leaves
        nothing), then all are stored pending in one transaction (a crash
        from there on leaves creates that the next start carries through, as
        a single create's), made, their neighbours re-pinned once to their
        final vNodes, and all marked running in one transaction, before any
        is acknowledged. Call it holding the lock."""
        answers: list[StoredVM | AgentError] = []
        placed: list[tuple[StoredVM, Mapping[str, frozenset[int]]]] = []
        taken = self.store.macs()
        for request in requests:
            try:
                self._refuse_taken(request.name)
                self._refuse_stale()
                nics = self._resolve_nics(request, taken)
                try:
                    change = self.allocator.deploy(request.spec)
                except PlacementError as error:
                    raise AgentError(error.code.value, error.refusal.describe(), error.refusal) from error
            except AgentError as error:
                answers.append(error)
                continue
            taken.update(nic.mac for nic in nics)
            vm = StoredVM(request.spec, request.owner, "", VMState.CREATING, Pending.CREATE, nics=nics)
            placed.append((vm, change.repinned))
            answers.append(vm)
        if not placed:
            return answers
        try:
            for vm, _ in placed:
                self.seeds.remove(vm.domain)  # as `_write_seed` does for a VM without one
            self.store.save_vms([vm for vm, _ in placed], self.allocator.snapshot())
        except BaseException:
            for vm, _ in placed:
                self.allocator.remove(vm.spec.name)
            raise
        self.vms.update((vm.spec.name, vm) for vm, _ in placed)
        crash_point("batch:stored")
        failed: dict[str, AgentError] = {}
        for vm, _ in placed:
            try:
                self._make(vm)
            except (DriverError, DomainXMLError, DiskError) as error:
                self._forget(vm.spec.name)
                failed[vm.spec.name] = AgentError("hypervisor failed", str(error))
            crash_point("batch:made")  # after the first: some made, the others not
        made = [vm for vm, _ in placed if vm.spec.name not in failed]
        # each was made on its final vNode; its neighbours follow once, to where they end up
        moved = {name for _, repinned in placed for name in repinned} - {vm.spec.name for vm in made}
        unpinned = self._repin(
            {name: self.allocator.pinning(name) for name in moved if name in self.allocator}
        )
        if unpinned:  # they would overlap the batch's vNodes: undo the batch rather than break isolation
            for vm in reversed(made):
                self._delete(self.vms[vm.spec.name])
                failed[vm.spec.name] = AgentError("hypervisor failed", "cannot re-pin " + "; ".join(unpinned))
            made = []
        running = [replace(vm, state=VMState.RUNNING, pending=None) for vm in made]
        self.store.set_states([vm.spec.name for vm in running], VMState.RUNNING, None)
        self.vms.update((vm.spec.name, vm) for vm in running)
        done = {vm.spec.name: vm for vm in running}
        return [
            answer
            if isinstance(answer, AgentError)
            else failed.get(answer.spec.name) or done[answer.spec.name]
            for answer in answers
        ]

    def _write_seed(self, request: VMRequest, nics: tuple[NIC, ...]) -> None:
        """The cloud-init seed of a VM with SSH keys or user data, written
        before the VM is stored: a crash leaves either a seed of no VM, which
        the next start removes, or a stored VM whose seed `_make` finds. A VM
        without keys or user data has none, whatever file lies under its name
        (`_make` attaches the seed it finds). Its network-config sets each
        NIC up by its MAC."""
        if not (request.ssh_keys or request.user_data):
            self.seeds.remove(request.name)
            return
        try:
            self.seeds.write(
                request.name, request.ssh_keys, request.user_data, macs=tuple(nic.mac for nic in nics)
            )
        except OSError as error:
            raise AgentError("disk failed", f"cannot write the cloud-init seed: {error}") from error

    def _delete(self, vm: StoredVM) -> None:
        name = vm.spec.name
        self._set(name, vm.state, Pending.DELETE)
        crash_point("delete:marked")
        try:
            self.driver.delete(vm.domain)
        except DriverError as error:
            if error.code != "not found":
                self._set(name, vm.state, vm.pending)  # as it was: a shutdown waiting records its end
                raise AgentError("hypervisor failed", str(error)) from error
        crash_point("delete:unmade")
        self._forget(name, durable=False)  # lost, the stored mark makes the next start forget it

    def _delete_batch(self, vms: list[StoredVM]) -> dict[str, AgentError]:
        """`_delete` for each of `vms`, with one commit before their domains
        are removed (all marked `Pending.DELETE`: a crash from there on leaves
        deletes that the next start finishes, as a single delete's) and one
        after (all forgotten, not waiting for the disk, as `_delete`), their
        neighbours re-pinned once to where they end up. The error of each one
        whose domain would not go (kept, as it was). Call it holding the lock."""
        if not vms:
            return {}
        self.store.set_pending([vm.spec.name for vm in vms], Pending.DELETE)
        self.vms.update((vm.spec.name, replace(vm, pending=Pending.DELETE)) for vm in vms)
        crash_point("deletions:marked")
        failed: dict[str, AgentError] = {}
        for vm in vms:
            try:
                self.driver.delete(vm.domain)
            except DriverError as error:
                if error.code != "not found":
                    self._set(vm.spec.name, vm.state, vm.pending)  # as it was
                    failed[vm.spec.name] = AgentError("hypervisor failed", str(error))
            crash_point("deletions:unmade")  # after the first: some removed, the others not
        gone = [vm.spec.name for vm in vms if vm.spec.name not in failed]
        moved: set[str] = set()
        for name in gone:
            moved.update(self._release(name).repinned)
        self.store.forget_vms(gone, self.allocator.snapshot(), durable=False)
        for name in gone:
            self.vms.pop(name, None)
        # gone for good: a neighbour that cannot follow is kept as a stale pin
        self._repin({name: self.allocator.pinning(name) for name in moved if name in self.allocator})
        return failed

    def _forget(self, name: str, keep_disk: bool = False, durable: bool = True) -> None:
        """Forget VM `name` here: its files (`keep_disk`: not its disk and
        seed, which a migration's target now uses on shared storage), its
        placement and its row; neighbours follow the vNode. `durable`=False:
        only for a VM stored with `Pending.DELETE` (`Store.forget_vm`)."""
        change = self._release(name, keep_disk)
        self.store.forget_vm(name, self.allocator.snapshot(), durable)
        self.vms.pop(name, None)
        # the VM is gone for good: a neighbour that cannot follow is kept as a stale pin
        self._repin(change.repinned)

    def _release(self, name: str, keep_disk: bool = False) -> Change:
        """What `_forget` lets go of before the store forgets the VM: its
        files (not its disk and seed with `keep_disk`), what is kept about it
        in memory, and its place (the change: the neighbours it moves)."""
        if not keep_disk:
            self.disks.remove_overlay(self.vms[name].domain)
            self.seeds.remove(self.vms[name].domain)
        self._remove_serial_log(self.vms[name].domain)
        self._warming_since.pop(name, None)
        self._stale_pins.pop(name, None)
        self._shutdowns.pop(name, None)  # a shutdown still waiting records nothing
        return self.allocator.remove(name)

    def _forget_migrating(self, name: str) -> None:
        """Forget a VM that a live migration moves (here or away): its disk
        file is this host's own only when disks are copied; on shared storage
        it is the one the guest runs on, on whichever host, and stays."""
        self._forget(name, keep_disk=self.settings.migration_storage != "copy")

    def _remove_serial_log(self, domain: str) -> None:
        """The console log goes with its VM (a VM made again later under the
        same name starts a log of its own)."""
        log_path = self.serial_log(domain)
        if log_path is not None:
            log_path.unlink(missing_ok=True)

    def _make(self, vm: StoredVM, prepared: Path | None = None) -> None:
        """The VM's disk (the overlay prepared for it, else one made now, when
        it has an image), then its domain."""
        disk = None
        if prepared is not None:
            disk = self.disks.adopt_overlay(vm.domain, prepared)
        elif vm.image:
            disk = self.disks.create_overlay(vm.domain, Path(vm.image))
        try:
            self.driver.create(self._domain(vm, self.allocator.pinning(vm.spec.name), disk))
        except BaseException:
            self.disks.remove_overlay(vm.domain)
            raise

    def _domain(self, vm: StoredVM, cpuset: frozenset[int], disk: Path | None) -> DomainSpec:
        s = self.settings
        serial = self.serial_log(vm.domain)
        return DomainSpec(
            name=vm.domain, vcpus=vm.spec.vcpus, memory_mib=vm.spec.memory_mib, cpuset=cpuset,
            level=float(vm.spec.ratio), owner=vm.owner, image=vm.image, domain_type=s.domain_type,
            kernel=s.kernel, initrd=s.initrd, cmdline=s.cmdline, serial_log=serial, disk=disk, nics=vm.nics,
            seed=self.seeds.existing(vm.domain),
        )  # fmt: skip
