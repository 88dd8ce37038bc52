"""What RAPID's VMM tells the DS and the SLAM (PROTOCOL.md 3.1-3.4):
VMM_REGISTER_DS and VMM_REGISTER_SLAM, VMM_NOTIFY_DS, a VM's registration
(VM_REGISTER_DS, or its helper slot's row again), its status
(VM_NOTIFY_DS) and a helper's address (HELPER_NOTIFY_DS). What the DS could
not hear stays marked in the VM's record (`Pending.DS`) for `Upkeep.settle`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pinfold.rapid import protocol
from pinfold.rapid.codec import Writer
from pinfold.rapid.core import VMMCore, log
from pinfold.rapid.protocol import CATEGORY_HELPER, CATEGORY_NORMAL
from pinfold.rapid.state import Pending, RapidVM, Status
from pinfold.rapid.wire import PeerError, call

__all__ = ["DSLink"]


class DSLink(VMMCore):
    def register(self) -> None:
        """VMM_REGISTER_DS, then VMM_REGISTER_SLAM. The DS answers ERROR to a
        VMM it knows already (same address): a VMM with an id keeps it. An OK
        means the DS does not know this VMM (first start, or a DS that forgot
        it, whatever id it gives): all its VMs are to be registered again
        (`settle`). The SLAM appends each registration to a list, so it is
        told once per start and again only after the DS registration was
        (re)done. Raises PeerError while the DS or the SLAM is unreachable,
        or the DS refuses a VMM that has no id yet."""
        usage = self.usage()
        request = partial(
            protocol.vmm_register_ds_request, vmm_ip=self.config.vmm_ip, cpu_load=usage.cpu_load_pct,
            cpu_cores=usage.cpu_cores, free_mem_mb=usage.free_memory_mb, gpu_util=usage.gpu_util_pct,
            gpu_cores=self.config.gpu_cores, available_type=self.config.available_type,
        )  # fmt: skip
        answer = call(self._ds, self.settings.socket_timeout_s, request, protocol.vmm_register_ds_reply)
        if answer is not None:
            if self.state.vmm_id():
                log.warning(
                    "RAPID: the DS did not know this VMM (id %d now): its VMs go to it again", answer.vmm_id
                )
            self.state.registered(answer.vmm_id, answer.slam_ip, answer.slam_port)
            self._slam_told = None
        elif not self.state.vmm_id():
            raise PeerError("the DS refused to register this VMM (is a SLAM registered with it?)")
        slam = self.state.slam()
        if slam is None:
            raise PeerError("no SLAM address known")
        if slam == self._slam_told:
            return
        hello = partial(
            protocol.vmm_register_slam_request, vmm_ip=self.config.vmm_ip, vmm_port=self.config.vmm_port
        )
        if not call(slam, self.settings.socket_timeout_s, hello, protocol.status_reply):
            raise PeerError("the SLAM refused this VMM")
        self._slam_told = slam

    def notify(self) -> None:
        """VMM_NOTIFY_DS, once registered: this host's usage."""
        vmm_id = self.state.vmm_id()
        if not vmm_id:
            return
        usage = self.usage()
        request = partial(
            protocol.vmm_notify_ds_request, vmm_id=vmm_id, cpu_load=usage.cpu_load_pct,
            free_mem_mb=usage.free_memory_mb, gpu_util=usage.gpu_util_pct,
        )  # fmt: skip
        self._ds_send(request)

    @property
    def _ds(self) -> tuple[str, int]:
        return self.config.ds_ip, self.config.ds_port

    def _ds_send(self, request: Callable[[Writer], None]) -> None:
        call(self._ds, self.settings.socket_timeout_s, request)

    def _ds_register_vm(self, category: int, user_id: int, epoch: int) -> int | None:
        """VM_REGISTER_DS: the vmid the DS gives; None, and nothing sent, if
        the DS registered this VMM since `epoch` (the VM is marked anew)."""
        vmm_id = self.state.vmm_id()
        if self.state.epoch() != epoch:
            return None
        request = partial(
            protocol.vm_register_ds_request, vmm_id=vmm_id, category=category, user_id=user_id,
            status=int(Status.STARTED),
        )  # fmt: skip
        return int(
            call(self._ds, self.settings.socket_timeout_s, request, protocol.vm_register_ds_reply) or 0
        )

    def _ds_status(self, vm: RapidVM, status: Status) -> None:
        """VM_NOTIFY_DS for a VM's new status. The status is saved marked
        first and the mark cleared once the DS heard it, so a DS away now (or
        a crash) leaves it for `settle`; so does a VM the DS must first be
        told more about (it was marked already: by a failure, or by a DS
        registration, which `vm` may be older than). The vmid sent is the
        row's as marked, and the mark is cleared only if no DS registration
        came meanwhile (`RapidState.ds_update`)."""
        marked = self.state.mark(vm, status=status)
        if marked is None:
            return
        vm, settled = marked
        if not settled or not vm.vmid:
            return
        try:
            self._ds_send(partial(protocol.vm_notify_ds_request, vmid=vm.vmid, status=int(status)))
        except PeerError as error:
            log.warning(
                "RAPID: the DS did not hear that user %d's VM is %s: %s", vm.user_id, status.name, error
            )
            return
        if self.state.ds_update(vm, pending=Pending.NONE) is None:
            log.info("RAPID: the DS registered this VMM again while told of user %d's VM", vm.user_id)

    def _tell_ds(self, vm: RapidVM) -> RapidVM:
        """All the DS should know about a VM and may not (PROTOCOL.md 3.4):
        its registration when it has no vmid (status 1, as RAPID sends it),
        a helper's address, a status other than STARTED; then the mark goes.
        Raises PeerError with the VM still marked. What the DS answers is
        written only if it did not register this VMM again meanwhile (a new
        epoch): then the VM stays marked, with no vmid, for `settle`, and
        this returns the row as it is."""
        if not vm.vmid:
            vmid = self._ds_row(vm)
            registered = None if vmid is None else self.state.ds_update(vm, vmid=vmid)
            if registered is None:
                return self._marked_again(vm)
            vm = registered
        if vm.helper and vm.ip:
            self._ds_send(partial(protocol.helper_notify_ds_request, vmid=vm.vmid, ip=vm.ip))
        if vm.status is not Status.STARTED:
            self._ds_send(partial(protocol.vm_notify_ds_request, vmid=vm.vmid, status=int(vm.status)))
        return self.state.ds_update(vm, pending=Pending.NONE) or self._marked_again(vm)

    def _ds_row(self, vm: RapidVM) -> int | None:
        """The vmid of the VM's row at the DS. A helper takes its slot's row
        if the DS gave it one since it registered this VMM: the DS finds a
        helper's AS by user id alone and fails on two rows, so a helper made
        again is not registered again; its row, told STOPPED when the
        helper went, is told it runs (its address follows). Otherwise
        VM_REGISTER_DS; None if the DS registered this VMM since `vm.epoch`."""
        reused = self.state.slot_vmid(vm.helper, vm.epoch) if vm.helper else 0
        if not reused:
            category = CATEGORY_HELPER if vm.helper else CATEGORY_NORMAL
            return self._ds_register_vm(category, vm.user_id, vm.epoch)
        self._ds_send(partial(protocol.vm_notify_ds_request, vmid=reused, status=int(Status.STARTED)))
        return reused

    def _marked_again(self, vm: RapidVM) -> RapidVM:
        log.info("RAPID: the DS registered this VMM again while told of user %d's VM", vm.user_id)
        return self.state.vm(vm.user_id) or vm
