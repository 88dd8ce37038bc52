"""A RAPID VM on the back-end: made, with its address (the back-end's, else
RAPID's `ipShellPath` script), and recorded; or removed (deleted, the DS
told it STOPPED, forgotten), marked to be removed again by `Upkeep.settle`
when the back-end or the DS fails.
"""

from __future__ import annotations

import subprocess
import time
from functools import partial

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.failpoints import crash_point
from pinfold.model.vm import VMRequest
from pinfold.rapid import protocol
from pinfold.rapid.core import log
from pinfold.rapid.ds import DSLink
from pinfold.rapid.state import Pending, RapidVM, Status
from pinfold.rapid.wire import PeerError

__all__ = ["START_DISK_GB", "VMKeeper"]

#: the disk RAPID assigns a start (type 0's 20 GB): recorded, reported, not a disk size here
START_DISK_GB = 20


class VMKeeper(DSLink):
    def _create_vm(
        self, user_id: int, name: str, vcpus: int, memory_mb: int, *, image: str = "", helper: int = 0,
        os_type: int = 0, gpu_cores: int = 0,
    ) -> RapidVM | None:  # fmt: skip
        """An agent VM for a RAPID user, with its address, recorded as one the
        DS is still to be told about; None when the agent refuses (sizes,
        room) or no address turns up (the VM is removed)."""
        request = VMRequest(
            name, vcpus, memory_mb, self.settings.ratio, owner=f"rapid:{user_id}", image=image
        )
        try:
            self.backend.create(request)
        except PinfoldError as error:
            log.warning("RAPID: no VM for user %d: %s", user_id, error)
            return None
        crash_point("rapid:created")
        ip = self._address(name)
        vm = RapidVM(
            user_id, name, Status.STARTED, vcpus, memory_mb, helper=helper, ip=ip or "", os_type=os_type,
            disk_gb=START_DISK_GB if not helper else 0, gpu_cores=gpu_cores, pending=Pending.DS,
        )  # fmt: skip
        if not ip:
            log.warning("RAPID: %s has no address, so it goes", name)
            self._remove(vm)
            return None
        return self.state.save(vm)

    def _address(self, name: str) -> str | None:
        """From libvirt (leases, guest agent), else RAPID's `ipShellPath` script."""
        deadline = time.monotonic() + self.settings.ip_wait_s
        while not self._stop.is_set():
            found = self.backend.addresses(name)
            if found:
                return found[0]
            scripted = self._scripted_address(name)
            if scripted:
                return scripted
            if time.monotonic() >= deadline:
                return None
            self._stop.wait(min(1.0, self.settings.ip_wait_s / 10))
        return None

    def _scripted_address(self, name: str) -> str | None:
        script = self.config.ip_script
        if script is None or not script.exists():
            return None
        domain = self.backend.hypervisor_name(name)
        if domain is None:
            return None
        try:  # RAPID's script has no shebang: run through sh, as the JDK ended up doing
            result = subprocess.run(
                ["sh", str(script), domain], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        first = result.stdout.splitlines()[0].strip() if result.stdout.strip() else ""
        return first if first and first != "null" else None

    def _remove(self, vm: RapidVM, tell_ds: bool = False) -> bool:
        """Delete the VM, then (`tell_ds`) tell the DS it STOPPED, then forget
        it. If the hypervisor refuses or the DS cannot be told, the record
        stays, marked (hidden from peers), and `settle` tries again, telling
        the DS then in any case: for a VM the DS itself deregistered, one
        STOPPED more than RAPID sends. True once it is all done."""
        try:
            self.backend.delete(vm.vm_name)
        except PinfoldError as error:
            if error.code is not ErrorCode.UNKNOWN_VM:  # gone already: as good as deleted
                log.warning(
                    "RAPID: cannot delete %s (user %d), will retry: %s", vm.vm_name, vm.user_id, error
                )
                self._mark_for_removal(vm)
                return False
        if tell_ds:  # the vmid as now recorded: a DS registration since `vm` was read took the old one
            current = self.state.vm(vm.user_id)
            vm = current if current is not None and current.vm_name == vm.vm_name else vm
        if tell_ds and vm.vmid:
            try:
                self._ds_send(
                    partial(protocol.vm_notify_ds_request, vmid=vm.vmid, status=int(Status.STOPPED))
                )
            except PeerError as error:
                log.warning("RAPID: the DS did not hear that user %d's VM stopped: %s", vm.user_id, error)
                self._mark_for_removal(vm)
                return False
        self.state.forget(vm.user_id)
        return True

    def _mark_for_removal(self, vm: RapidVM) -> None:
        """Field by field, as any change to a record; a new VM not yet
        recorded gets its record now, so that it is not forgotten."""
        if self.state.vm(vm.user_id) is None:
            self.state.save(vm.with_(pending=Pending.REMOVE))
        else:
            self.state.update(vm, pending=Pending.REMOVE)
