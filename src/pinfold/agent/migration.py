"""Live migration, both ends (the protocol in docs/agent.md, "Live migration").

The controller drives it; agents never call each other. On the target,
`prepare_incoming` reserves the VM in the allocator exactly as a cold create
does (its level's vNode may grow, neighbours are re-pinned), stores it
`incoming` with an `incoming` pending mark and pre-creates its disk when
disks are copied; nothing is defined. On the source, `migrate_out` marks the
VM `migrating` (`migrate-out`), lets the lock go while the driver moves the
guest (seconds: every other request goes on meanwhile), and then forgets it
(its vNode may shrink). Back on the target, `commit_incoming` checks the
guest arrived and clears the mark; `abort_incoming` releases a reservation
whose migration failed. A crash between any two steps leaves a pending mark
that the next start resolves from what the hypervisor has (`reconcile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinfold.agent.core import AgentError, log
from pinfold.agent.disks import DiskError
from pinfold.agent.drivers.base import DriverError, MigrationTarget
from pinfold.agent.lifecycle import Lifecycle
from pinfold.agent.seed import image_problem
from pinfold.agent.store import Pending, StoredVM
from pinfold.model.failpoints import crash_point
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest, image_path_problem, valid_name
from pinfold.placement import PlacementError, VMSpec

__all__ = ["Incoming", "Migrating", "Outgoing"]


@dataclass(frozen=True)
class Incoming:
    """A prepared target: the CPUs the guest is to run on here, and where a
    peer's daemon reaches this host's (None, None for the sim driver)."""

    vm: StoredVM
    cpus: list[int]
    libvirt_uri: str | None
    migrate_uri: str | None


@dataclass(frozen=True)
class Outgoing:
    """Where the source sends a guest: the target's answer to its prepare."""

    target: str
    cpus: frozenset[int]
    libvirt_uri: str | None
    migrate_uri: str | None


class Migrating(Lifecycle):
    """The four steps of a live migration (the module's docstring)."""

    def prepare_incoming(
        self, request: VMRequest, domain: str, source: str, seed: bytes | None = None
    ) -> Incoming:
        """Reserve `request` here for a guest coming from `source`, under
        domain name `domain` (the source's: a running domain keeps its name).
        Refused as a create is: bad name or image (422), no room (409), a name,
        domain or MAC taken here (409); nothing is stored then. `seed` is the
        guest's cloud-init seed as the source has it: with copied disks it is
        written here, where this host's seed of `domain` goes (libvirt copies
        no read-only disk, and the guest's CD-ROM must open on arrival); on
        shared storage the source's file is the one the guest keeps."""
        for name in (request.name, domain):
            if not valid_name(name):
                raise AgentError("invalid request", "name: use 1-63 letters, digits, '.', '_', '-'")
        problem = image_path_problem(request.image) if request.image else None
        problem = problem or (image_problem(seed) if seed is not None else None)
        if problem is not None:
            raise AgentError("invalid request", problem)
        copied = self.settings.migration_storage == "copy"
        base = self._base_image(request.image) if copied else None
        with self.lock:
            self._retry_stale_pins()
            if request.name in self.vms:
                raise AgentError("duplicate name", f"{request.name} (a VM of this host)")
            self._refuse_taken(domain)
            self._refuse_stale()
            # the NICs it has, MACs included; none stays none (no default NIC is added)
            nics = self._resolve_nics(request) if request.nics else ()
            spec = VMSpec(request.name, request.vcpus, request.memory_mib, float(request.ratio))
            try:
                change = self.allocator.deploy(spec)
            except PlacementError as error:
                raise AgentError(error.code.value, error.refusal.describe(), error.refusal) from error
            vm = StoredVM(
                spec,
                request.owner,
                request.image,
                VMState.INCOMING,
                Pending.INCOMING,
                domain=domain,
                nics=nics,
            )
            try:
                if copied and seed is not None:  # before the row: a crash leaves a seed of no VM
                    self._write_incoming_seed(domain, seed)
                    crash_point("incoming:seeded")
                self.store.save_vm(vm, self.allocator.snapshot())
            except BaseException:
                if copied:
                    self.seeds.remove(domain)
                self.allocator.remove(spec.name)
                raise
            self.vms[spec.name] = vm
            crash_point("incoming:stored")
            self._ready_disk(vm, base)
            failed = self._repin(change.repinned)
            if failed:  # its neighbours would overlap its vNode: give the room back
                self._forget_migrating(spec.name)
                raise AgentError("hypervisor failed", "cannot re-pin " + "; ".join(failed))
            log.info(
                "prepared %s to come from %s on CPUs %s",
                spec.name,
                source,
                sorted(self.allocator.pinning(spec.name)),
            )
            s = self.settings
            migrate_uri = f"tcp://{s.migration_address}" if s.migration_address else None
            return Incoming(
                vm, sorted(self.allocator.pinning(spec.name)), s.peer_libvirt_uri or None, migrate_uri
            )

    def _write_incoming_seed(self, domain: str, seed: bytes) -> None:
        try:
            self.seeds.write_image(domain, seed)
        except OSError as error:
            raise AgentError("disk failed", f"cannot write the cloud-init seed: {error}") from error

    def seed_of(self, name: str) -> bytes:
        """The cloud-init seed of VM `name`, byte for byte, for its
        migration's target; "unknown vm", or "not found" when it has none."""
        with self.lock:
            vm = self._get(name)
        try:
            image = self.seeds.read(vm.domain)
        except OSError as error:
            raise AgentError("disk failed", f"cannot read the cloud-init seed: {error}") from error
        if image is None:
            raise AgentError("not found", f"{name} has no cloud-init seed")
        return image

    def _ready_disk(self, vm: StoredVM, base: Path | None) -> None:
        """A copied disk needs its file here before the guest's data comes:
        an overlay on the same base image (same size), made now."""
        if base is None or not vm.image:
            return
        try:
            self.disks.create_overlay(vm.domain, self.disks.base_image(vm.image))
        except DiskError as error:
            self._forget(vm.spec.name)
            raise AgentError(error.code, error.detail) from error

    def migrate_out(self, name: str, to: Outgoing) -> tuple[StoredVM, float, int | None]:
        """Send running VM `name` live to `to`, then forget it here; the VM
        as it was, the job's seconds and the downtime (None if unknown).
        A VM not running (or busy) is refused (409) and untouched; a failed
        migration leaves it running here, its row back to running (502)."""
        with self.lock:
            self._retry_stale_pins()
            vm = self._idle(name)
            observed = self._observed_state(vm.domain, vm.state)
            if observed is not VMState.RUNNING:
                raise AgentError("invalid", f"{name} is {observed}: only a running VM migrates")
            vm = self._set(name, VMState.MIGRATING, Pending.MIGRATE_OUT)
        crash_point("migrate:marked")
        storage = self.settings.migration_storage
        target = MigrationTarget(
            to.cpus, to.libvirt_uri, to.migrate_uri, copy_disks=storage == "copy" and bool(vm.image),
            unsafe=storage == "shared-local", timeout_s=self.settings.migration_timeout_s,
        )  # fmt: skip
        try:
            done = self.driver.migrate(vm.domain, target)
        except DriverError as error:
            return self._migration_failed(vm, to.target, error)
        crash_point("migrate:sent")
        with self.lock:
            self._forget_migrating(name)
        log.info("%s migrated to %s in %.2f s", name, to.target, done.seconds)
        return vm, done.seconds, done.downtime_ms

    def _migration_failed(
        self, vm: StoredVM, target: str, error: DriverError
    ) -> tuple[StoredVM, float, None]:
        """The guest still here: its row back to running, the failure raised
        (502). Gone from here despite the error: it left, so it is forgotten
        as after a success (the target's commit finds it). One cancelled
        for its time limit answers `migration timed out` (504)."""
        name = vm.spec.name
        with self.lock:
            try:
                still = self.driver.info(vm.domain)
            except DriverError:
                still = None
            if still is None:
                log.warning(
                    "%s: the migration to %s reported %s, but the guest left: forgotten", name, target, error
                )
                self._forget_migrating(name)
                return vm, 0.0, None
            self._set(name, self._observed_state(vm.domain, VMState.RUNNING), None)
        code = "migration timed out" if error.code == "timed out" else "migration failed"
        raise AgentError(code, f"{name} to {target}: {error.detail}") from error

    def commit_incoming(self, name: str) -> StoredVM:
        """The guest arrived: it runs here, pinned to its vNode; the mark goes.
        One that has not arrived is refused (409), its reservation kept."""
        with self.lock:
            vm = self._get(name)
            if vm.pending is None and self._observed_state(vm.domain, vm.state) is VMState.RUNNING:
                # committed before (a retry), or a restart found it arrived: it runs here
                return vm if vm.state is VMState.RUNNING else self._set(name, VMState.RUNNING, None)
            if vm.pending is not Pending.INCOMING:
                raise AgentError("invalid", f"{name} is {vm.state}: it is not an incoming VM")
            overlay = self.disks.overlay_path(vm.domain)
            spec = self._domain(vm, self.allocator.pinning(name), overlay if vm.image else None)
            try:
                self.driver.receive(spec)
            except DriverError as error:
                if error.code in ("not found", "invalid"):  # none here, or still coming in (paused)
                    raise AgentError("invalid", f"{name} has not arrived: {error.detail}") from error
                raise AgentError("hypervisor failed", str(error)) from error
            crash_point("incoming:arrived")
            self._repin({name: self.allocator.pinning(name)})
            return self._set(name, VMState.RUNNING, None)

    def abort_incoming(self, name: str) -> None:
        """Give back the room an incoming VM held (idempotent: nothing
        prepared is nothing to do). A guest that arrived and runs here is
        the only copy once its source has forgotten it: refused (409), never
        destroyed; one left paused by a failed migration is removed."""
        with self.lock:
            vm = self.vms.get(name)
            if vm is None or vm.pool:
                return
            if vm.pending is not Pending.INCOMING:
                raise AgentError("invalid", f"{name} is {vm.state} here: it is not an incoming VM")
            try:
                arrived = self.driver.info(vm.domain)
            except DriverError:
                arrived = None
            if arrived is not None:
                if arrived.state.value == VMState.RUNNING:
                    raise AgentError("invalid", f"{name} runs here: commit it (or migrate it back)")
                try:
                    self.driver.delete(vm.domain)
                except DriverError as error:
                    if error.code != "not found":
                        raise AgentError("hypervisor failed", str(error)) from error
            self._forget_migrating(name)
