"""The requests RAPID's VMM answers (PROTOCOL.md 3.3-3.6): the SLAM's
(start a VM, the VMs' info and metrics, flavor changes), the ASs'
(registration, suspend or remove) and the DS's (deregister a VM). Reply
layouts and "no reply" cases are the Java VMM's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pinfold.model.errors import PinfoldError
from pinfold.model.lifecycle import VMState
from pinfold.rapid import protocol
from pinfold.rapid.core import log
from pinfold.rapid.flavors import suitable_type
from pinfold.rapid.protocol import ERROR, OK, Op
from pinfold.rapid.state import RapidVM, Status
from pinfold.rapid.vms import VMKeeper
from pinfold.rapid.wire import Exchange, PeerError, call

__all__ = ["Handlers"]


class Handlers(VMKeeper):
    def handle(self, exchange: Exchange, peer: str) -> None:
        """One request: dispatch on its opcode. Unknown opcodes, and requests
        that end in an error RAPID answers with silence, close without a reply."""
        opcode = exchange.reader.read_byte()
        handler = self._handlers().get(opcode)
        if handler is not None:
            handler(exchange, peer)

    def _handlers(self) -> dict[int, Callable[[Exchange, str], None]]:
        return {
            Op.SLAM_START_VM_VMM: self._start_vm,
            Op.AS_RM_REGISTER_VMM: self._as_register,
            Op.AS_RM_NOTIFY_VMM: self._as_notify,
            Op.DS_VM_DEREGISTER_VMM: self._deregister,
            Op.SLAM_GET_VMINFO_VMM: self._vm_info,
            Op.SLAM_GET_VMCPU_VMM: self._vm_cpu,
            Op.SLAM_GET_VMMEM_VMM: self._vm_memory,
            Op.SLAM_GET_VMDISK_VMM: self._vm_disk,
            Op.SLAM_CHANGE_VMFLV_VMM: self._change_flavor,
            Op.SLAM_CONFIRM_VMFLV_VMM: self._confirm_flavor,
        }

    def _start_vm(self, exchange: Exchange, peer: str) -> None:
        read = exchange.reader
        user_id, os_type, vcpus, memory_mb, gpu_cores = (
            read.read_long(), read.read_int(), read.read_int(), read.read_int(), read.read_int(),
        )  # fmt: skip
        ip = self.start_vm(user_id, os_type, vcpus, memory_mb, gpu_cores)
        out = exchange.writer
        if ip is None:
            out.write_byte(ERROR)
        else:
            out.write_byte(OK)
            out.write_long(user_id)
            out.write_utf(ip)
        exchange.send()

    def start_vm(self, user_id: int, os_type: int, vcpus: int, memory_mb: int, gpu_cores: int) -> str | None:
        """SLAM_START_VM_VMM: the user's VM address once its AS confirmed, or
        None (ERROR). One user at a time: a second start waits for the first.
        Before this VMM is registered with the DS (RAPID did not listen yet)
        a start is an ERROR: the DS could not be told of the VM."""
        if user_id < 1 or not self.state.vmm_id():
            return None  # helpers are the VMM's own; user ids come from the DS, from 1
        with self._user(user_id), self._as_answer(user_id) as answer:
            vm = self.state.vm(user_id)
            if vm is not None and vm.removing:
                if not self._remove(vm, tell_ds=True):
                    return None
                vm = None
            if vm is not None and vm.running:
                return vm.ip
            if vm is None:
                vm = self._create_user_vm(user_id, os_type, vcpus, memory_mb, gpu_cores)
                if vm is None:
                    return None
            else:  # suspended
                self.state.update(vm, as_sync=False)
                if self.backend.state(vm.vm_name) is VMState.RUNNING:  # a crash cut a resume short
                    log.warning("RAPID: %s runs already: taken as resumed", vm.vm_name)
                else:
                    try:
                        self.backend.resume(vm.vm_name)
                    except PinfoldError as error:
                        log.warning("RAPID: cannot resume %s: %s", vm.vm_name, error)
                        return None
                self._ds_status(vm, Status.RESUMED)
            return vm.ip if answer.wait(self.settings.as_wait_s) else None

    def _create_user_vm(
        self, user_id: int, os_type: int, vcpus: int, memory_mb: int, gpu_cores: int
    ) -> RapidVM | None:
        """A user's new VM, registered with the DS; None (and no VM) when the
        agent or the DS fails."""
        image = self.config.user_image(os_type)
        vm = self._create_vm(
            user_id, f"rapid-user-{user_id}", vcpus, memory_mb, os_type=os_type, gpu_cores=gpu_cores,
            image=image,
        )  # fmt: skip
        if vm is None:
            return None
        try:
            return self._tell_ds(vm)
        except PeerError as error:
            log.warning("RAPID: the DS did not register user %d's VM, so it goes: %s", user_id, error)
            self._remove(vm)
            return None

    def _as_register(self, exchange: Exchange, peer: str) -> None:
        """AS_RM_REGISTER_VMM: the AS names its address, learns its user id,
        registers with the DS, then tells us (one more byte) how that went."""
        as_ip = exchange.reader.read_utf()
        vm = None
        for attempt in range(self.settings.as_lookup_tries):
            vm = self.state.by_ip(as_ip)
            if vm is not None or attempt == self.settings.as_lookup_tries - 1:
                break
            self._stop.wait(self.settings.as_lookup_interval_s)
        if vm is None or (self.settings.as_must_match_ip and peer != as_ip):
            exchange.writer.write_byte(ERROR)
            exchange.send()
            return
        exchange.writer.write_byte(OK)
        exchange.writer.write_long(vm.user_id)
        exchange.send()
        synced = exchange.reader.read_byte() == OK
        # not under the user's lock (the start waiting for this answer holds it):
        # one field, and only if the row still holds this VM
        self.state.update(vm, as_sync=synced)
        with self._users_lock:
            answer = self._as_answers.get(vm.user_id)
        if answer is not None:
            answer.give(synced)

    def _as_notify(self, exchange: Exchange, peer: str) -> None:
        """AS_RM_NOTIFY_VMM: 1 suspend, 2 remove; never a reply. The DS hears
        SUSPENDED or STOPPED once done (later, if it cannot hear it now)."""
        user_id, action = exchange.reader.read_long(), exchange.reader.read_int()
        with self._user(user_id):
            vm = self.state.vm(user_id)
            if vm is None or vm.removing or (self.settings.as_must_match_ip and peer != vm.ip):
                return
            if action == 1 and vm.running:
                try:
                    self.backend.suspend(vm.vm_name)
                except PinfoldError as error:
                    log.warning("RAPID: cannot suspend %s: %s", vm.vm_name, error)
                    return
                self._ds_status(vm, Status.SUSPENDED)
            elif action == 2:
                self._remove(vm, tell_ds=True)

    def _deregister(self, exchange: Exchange, peer: str) -> None:
        """DS_VM_DEREGISTER_VMM: remove the user's VM; no reply, nothing told to the DS."""
        user_id = exchange.reader.read_long()
        with self._user(user_id):
            vm = self.state.vm(user_id)
            if vm is not None and not vm.removing:
                self._remove(vm)

    # -- SLAM queries ------------------------------------------------------------------

    def _queried(self, exchange: Exchange) -> list[RapidVM] | None:
        """The running VMs a SLAM query is about (user 0: all, helpers too),
        or None for a user without a running VM."""
        user_id = exchange.reader.read_long()
        running = [vm for vm in self.state.vms() if vm.running]  # not those being removed
        if user_id == 0:
            return running
        chosen = [vm for vm in running if vm.user_id == user_id]
        return chosen or None

    def _reply_list(self, exchange: Exchange, values: list[str] | None) -> None:
        if not values:
            exchange.writer.write_byte(ERROR)
        else:
            exchange.writer.write_byte(OK)
            exchange.writer.write_string_list(values)
        exchange.send()

    def _vm_info(self, exchange: Exchange, peer: str) -> None:
        """SLAM_GET_VMINFO_VMM: 6-tuples [user, vmid, vCPUs, MB, disk GB, GPU cores]
        (the real sizes: RAPID's libvirt back-end sent zeros)."""
        vms = self._queried(exchange)
        values = [
            str(v)
            for vm in vms or ()
            for v in (vm.user_id, vm.vmid, vm.vcpus, vm.memory_mb, vm.disk_gb, vm.gpu_cores)
        ]
        self._reply_list(exchange, values)

    def _reply_rows(self, exchange: Exchange, row: Callable[[RapidVM], list[str] | None]) -> None:
        """A metric query's reply: [user, vmid, *row] for each queried VM that
        has data (RAPID left out VMs without), ERROR when none has."""
        values = []
        for vm in self._queried(exchange) or ():
            found = row(vm)
            if found is not None:
                values += [str(vm.user_id), str(vm.vmid), *found]
        self._reply_list(exchange, values)

    def _vm_cpu(self, exchange: Exchange, peer: str) -> None:
        """SLAM_GET_VMCPU_VMM: [user, vmid, CPU %] from `vm_usage` (the agent's
        monitor, or Nova's diagnostics)."""

        def row(vm: RapidVM) -> list[str] | None:
            cpu = (self.vm_usage(vm.vm_name) or (None, None))[0]
            return None if cpu is None else [_java_float(cpu)]

        self._reply_rows(exchange, row)

    def _vm_memory(self, exchange: Exchange, peer: str) -> None:
        """SLAM_GET_VMMEM_VMM: [user, vmid, size MB, in use MB]."""

        def row(vm: RapidVM) -> list[str] | None:
            used = (self.vm_usage(vm.vm_name) or (None, None))[1]
            return None if used is None else [str(vm.memory_mb), _java_float(used)]

        self._reply_rows(exchange, row)

    def _vm_disk(self, exchange: Exchange, peer: str) -> None:
        """SLAM_GET_VMDISK_VMM: [user, vmid, size bytes, allocated bytes] of the VM's overlay."""

        def row(vm: RapidVM) -> list[str] | None:
            disk = self._disk(vm)
            return None if disk is None else [str(disk[0]), _java_float(float(disk[1]))]

        self._reply_rows(exchange, row)

    def _disk(self, vm: RapidVM) -> tuple[int, int] | None:
        allocated = self.backend.disk_allocated_bytes(vm.vm_name)
        return None if allocated is None else (vm.disk_gb * 2**30, allocated)

    # -- flavor changes ----------------------------------------------------------------

    def _change_flavor(self, exchange: Exchange, peer: str) -> None:
        """SLAM_CHANGE_VMFLV_VMM: the AS must agree (no offloaded task running),
        then the VM is given the nearest type's size. The agent re-places it
        on its vNode at once; the hypervisor applies the new size at the VM's
        next boot. An AS that does not answer in time is an ERROR, not silence."""
        read = exchange.reader
        user_id, vcpus, memory_mb, disk_gb = (
            read.read_long(),
            read.read_int(),
            read.read_int(),
            read.read_int(),
        )
        ok = self.change_flavor(user_id, vcpus, memory_mb, disk_gb)
        exchange.writer.write_byte(OK if ok else ERROR)
        exchange.send()

    def change_flavor(self, user_id: int, vcpus: int, memory_mb: int, disk_gb: int) -> bool:
        with self._user(user_id):
            vm = self.state.vm(user_id)
            if vm is None or not vm.running or not self._as_agrees(vm):
                return False
            chosen = suitable_type(vcpus or vm.vcpus, memory_mb or vm.memory_mb, disk_gb or vm.disk_gb)
            try:
                self.backend.resize(vm.vm_name, chosen.vcpus, chosen.memory_mb)
            except PinfoldError:
                return False
            self.state.update(vm, vcpus=chosen.vcpus, memory_mb=chosen.memory_mb, disk_gb=chosen.disk_gb)
            return True

    def _as_agrees(self, vm: RapidVM) -> bool:
        try:
            request = partial(protocol.migration_request, user_id=vm.user_id)
            timeout_s = min(10.0, self.settings.socket_timeout_s)
            return bool(call((vm.ip, self.settings.as_port), timeout_s, request, protocol.status_reply))
        except PeerError:
            return False

    def _confirm_flavor(self, exchange: Exchange, peer: str) -> None:
        """SLAM_CONFIRM_VMFLV_VMM: OK for a known user (the change is already
        in effect here); trailing bytes, as the deployed SLAM sends, are ignored."""
        vm = self.state.vm(exchange.reader.read_long())
        exchange.writer.write_byte(OK if vm is not None and not vm.removing else ERROR)
        exchange.send()


def _java_float(value: float) -> str:
    """Like Java's Float.toString for ordinary values: '12.5', '512.0'."""
    text = repr(float(round(value, 3)))
    return text if "e" not in text else f"{value:.1f}"
