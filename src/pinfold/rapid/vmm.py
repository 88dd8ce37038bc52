"""The RAPID VM Manager on top of a pinfold agent (PROTOCOL.md sections 3-4).

Peers see RAPID's VMM: the same opcodes, reply layouts and "no reply" cases,
its VM type table, one VM per user, two helper VMs (users -1 and -2). Under
it, each RAPID VM is an agent VM (`rapid-user-<id>`, `rapid-helper-<n>`),
placed by the agent's allocator on its level's vNode, and RAPID's own state
(VMM id, SLAM address, users' VMs) is kept in the agent's store.

Fixed here, without changing what peers see (section 8): requests for one user
are serialised (two starts make one VM); handlers change only the fields of a
VM's record they mean to (an AS confirmation or a DS vmid can no longer be
lost); every socket has a timeout; an AS that answers ERROR ends a start at
once rather than after 200 s; sizes are checked by the allocator before the
hypervisor is touched; the DS is asked now and then whether it still knows
this VMM, and told again about its VMs if it does not; what a peer or the
hypervisor failed to do (a DS registration, a notification, a delete) is
marked in the record and done again on a later pass; VMs that vanished are
dropped with the DS told, and helpers made again; nothing is sent to RAPID's
animation server. Failures are logged (logger `pinfold.rapid.vmm`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from pinfold.rapid import protocol
from pinfold.rapid.backend import Backend
from pinfold.rapid.codec import Writer
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.flavors import suitable_type
from pinfold.rapid.protocol import CATEGORY_HELPER, CATEGORY_NORMAL, ERROR, OK, Op
from pinfold.rapid.reconcile import Action, plan, settling
from pinfold.rapid.settings import RapidSettings
from pinfold.rapid.state import Pending, RapidState, RapidVM, Status
from pinfold.rapid.wire import Exchange, PeerError, call

__all__ = ["VMM", "Usage"]

log = logging.getLogger(__name__)

HELPERS = (1, 2)
#: the disk RAPID assigns a start (type 0's 20 GB): recorded, reported, not a disk size here
START_DISK_GB = 20


@dataclass(frozen=True)
class Usage:
    """What RAPID reports to the DS about this host."""

    cpu_load_pct: int
    free_memory_mb: int
    gpu_util_pct: int
    cpu_cores: int


class VMM:
    def __init__(
        self,
        backend: Backend,
        state: RapidState,
        config: RapidConfig,
        settings: RapidSettings,
        usage: Callable[[], Usage],
        vm_usage: Callable[[str], tuple[float, float] | None] = lambda name: None,
    ) -> None:
        """`vm_usage(vm)`: (CPU use in % of its vCPUs, memory in use in MB) from
        the agent's monitor, or None before the first sample."""
        self.backend = backend
        self.state = state
        self.config = config
        self.settings = settings
        self.usage = usage
        self.vm_usage = vm_usage
        self._users_lock = threading.Lock()
        self._user_locks: dict[int, _UserLock] = {}
        self._as_answers: dict[int, _ASAnswer] = {}
        #: the SLAM this process registered with (RAPID: once per start, and after a DS registration)
        self._slam_told: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.registered = threading.Event()
        #: the DS's addresses, for `known_peer` (a name is resolved once, here)
        self._ds_addresses = _addresses_of(config.ds_ip) if settings.allow_known_peers else frozenset()

    def known_peer(self, peer: str) -> bool:
        """Whether `peer` is one RAPID's VMM talks with: the DS, the SLAM the
        DS named, or a VM's own address (its AS)."""
        slam = self.state.slam()
        if peer in self._ds_addresses or (slam is not None and peer == slam[0]):
            return True
        return self.state.by_ip(peer) is not None

    # -- start-up and the DS -------------------------------------------------------------

    def start(self) -> None:
        """Settle RAPID's records with the agent's VMs, then, in the background,
        register with the DS and the SLAM (retrying), finish what failures
        left undone, make missing helpers, and send VMM_NOTIFY_DS every period."""
        self.reconcile()
        for target in (self._register_loop, self._notify_loop):
            thread = threading.Thread(target=target, name=f"rapid-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.socket_timeout_s + 5)

    def reconcile(self) -> None:
        """Carry out `reconcile.plan` (its table says why each step): a record
        whose VM is gone is marked for removal (the register loop drops it
        and tells the DS it STOPPED; a helper is made again then), one a crash
        left with another status than its VM's takes the VM's, marked for the
        DS, and a VM of RAPID's that no record names is deleted."""
        records = {vm.vm_name: vm for vm in self.state.vms()}
        for step in plan(records.values(), self.backend.vms()):
            vm = records.get(step.name)
            if step.action is Action.MARK_REMOVE and vm is not None:
                log.warning("RAPID: %s (user %d) is gone from the hypervisor", vm.vm_name, vm.user_id)
                self.state.update(vm, pending=Pending.REMOVE)
            elif step.action is Action.RECORD and vm is not None and step.status is not None:
                log.warning(
                    "RAPID: %s (user %d) is %s, not %s as recorded: now so recorded",
                    vm.vm_name, vm.user_id, step.status.name, vm.status.name,
                )  # fmt: skip
                self.state.mark(vm, status=step.status)
            elif step.action is Action.DELETE:
                try:
                    self.backend.delete(step.name)
                except PinfoldError as error:
                    log.warning("RAPID: cannot delete %s, which no record names: %s", step.name, error)

    def _register_loop(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.register()
                self.settle()
                self.make_helpers()
                self.registered.set()
                delay = self.settings.recheck_period_s
            except PeerError as error:
                log.warning("RAPID: %s; trying again", error)
                delay = (
                    min(delay * 2, 60.0) if not self.registered.is_set() else self.settings.recheck_period_s
                )
            except Exception:  # a bug must not end the loop that keeps this VMM known
                log.exception("RAPID: registration pass failed")
                delay = self.settings.recheck_period_s
            self._stop.wait(delay)

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

    def settle(self) -> None:
        """Finish what failures left undone: VMs to be removed are removed
        (and the DS hears they STOPPED), VMs the DS does not fully know about
        are told to it. A user a request is busy with is left for the next
        pass. Raises PeerError when the DS cannot be reached: the marks stay."""
        for vm in self.state.vms():
            if settling(vm) is None:
                continue
            with self._user(vm.user_id, wait=False) as free:
                current = self.state.vm(vm.user_id)
                if not free or current is None:
                    continue
                action = settling(current)
                if action is Action.REMOVE:
                    self._remove(current, tell_ds=True)
                elif action is Action.TELL_DS:
                    self._tell_ds(current)

    def make_helpers(self) -> None:
        """Helper VMs 1 and 2 (users -1, -2), from their warm pools when the
        agent keeps spares, registered with the DS with their addresses. A
        helper the DS could not be told about stays marked; `settle` tells it."""
        for slot in HELPERS:
            user_id = -slot
            with self._user(user_id):
                if self.state.vm(user_id) is not None:
                    continue
                image = self.config.helper_images[slot - 1]
                size = (self.settings.helper_vcpus, self.settings.helper_memory_mib)
                made = self._create_vm(
                    user_id, f"rapid-helper-{slot}", *size, image=str(image) if image else "", helper=slot
                )
                if made is not None:
                    self._tell_ds(made)

    def _notify_loop(self) -> None:
        while not self._stop.wait(self.settings.notify_period_s):
            try:
                self.notify()
            except PeerError as error:  # a DS away now may answer next time
                log.info("RAPID: VMM_NOTIFY_DS not delivered: %s", error)
            except Exception:  # nor may a bug end the heartbeats
                log.exception("RAPID: VMM_NOTIFY_DS failed")

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

    # -- requests ------------------------------------------------------------------------

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
        image = str(self.config.normal_image or "")
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
            time.sleep(min(1.0, self.settings.ip_wait_s / 10))
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

    @contextlib.contextmanager
    def _as_answer(self, user_id: int) -> Iterator[_ASAnswer]:
        """Where the AS of the user's VM will leave its answer, for as long as
        a start waits; gone after, however the start ends."""
        answer = _ASAnswer()
        with self._users_lock:
            self._as_answers[user_id] = answer
        try:
            yield answer
        finally:
            with self._users_lock:
                if self._as_answers.get(user_id) is answer:
                    del self._as_answers[user_id]

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

    # -- SLAM queries ------------------------------------------------------------------------

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
        """SLAM_GET_VMCPU_VMM: [user, vmid, CPU %] from the agent's monitor."""

        def row(vm: RapidVM) -> list[str] | None:
            used = self.vm_usage(vm.vm_name)
            return None if used is None else [_java_float(used[0])]

        self._reply_rows(exchange, row)

    def _vm_memory(self, exchange: Exchange, peer: str) -> None:
        """SLAM_GET_VMMEM_VMM: [user, vmid, size MB, in use MB]."""

        def row(vm: RapidVM) -> list[str] | None:
            used = self.vm_usage(vm.vm_name)
            return None if used is None else [str(vm.memory_mb), _java_float(used[1])]

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

    # -- flavor changes --------------------------------------------------------------------

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

    # -- per-user serialisation ------------------------------------------------------------

    @contextlib.contextmanager
    def _user(self, user_id: int, wait: bool = True) -> Iterator[bool]:
        """Requests about one user, one at a time. Yields whether the user's
        lock was taken: always, unless `wait` is False and it is held. A
        lock lives only while someone holds or waits for it, so user ids a
        peer makes up cost nothing once answered."""
        with self._users_lock:
            entry = self._user_locks.setdefault(user_id, _UserLock())
            entry.users += 1
        taken = entry.lock.acquire(blocking=wait)
        try:
            yield taken
        finally:
            if taken:
                entry.lock.release()
            with self._users_lock:
                entry.users -= 1
                if not entry.users:
                    del self._user_locks[user_id]


@dataclass
class _UserLock:
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: threads holding or waiting for it
    users: int = 0


class _ASAnswer:
    """What the AS of a starting VM said (its DS registration went well or
    not); the last answer wins, as RAPID's asSync flag."""

    def __init__(self) -> None:
        self._given = threading.Event()
        self._synced = False

    def give(self, synced: bool) -> None:
        self._synced = synced
        self._given.set()

    def wait(self, timeout_s: float) -> bool:
        """True if the AS confirmed within `timeout_s`."""
        return self._given.wait(timeout_s) and self._synced


def _addresses_of(host: str) -> frozenset[str]:
    """The IP addresses of `host` (itself if it is one); none if it cannot be resolved."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError as error:
        log.warning("RAPID: cannot resolve the DS's address %s: %s", host, error)
        return frozenset()


def _java_float(value: float) -> str:
    """Like Java's Float.toString for ordinary values: '12.5', '512.0'."""
    text = repr(float(round(value, 3)))
    return text if "e" not in text else f"{value:.1f}"
