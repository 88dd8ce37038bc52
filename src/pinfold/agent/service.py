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
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pinfold.agent.disks import DiskError, Disks
from pinfold.agent.domain import DomainSpec, DomainXMLError
from pinfold.agent.drivers.base import Driver, DriverError, GuestInfo, GuestState
from pinfold.agent.failpoints import crash_point
from pinfold.agent.pools import PoolSpec
from pinfold.agent.reconcile import Action, Step, plan
from pinfold.agent.store import Pending, Store, StoredVM
from pinfold.model.defaults import DEFAULT_CRITICAL_SIZE, DEFAULT_RESERVED_MEMORY_MIB, SHUTDOWN_TIMEOUT_S
from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import Action as LifecycleAction
from pinfold.model.lifecycle import Refused, VMState, transition
from pinfold.model.vm import VMRequest, image_path_problem, valid_name
from pinfold.placement import HostAllocator, PlacementError, Refusal, VMSpec
from pinfold.topology import Topology, format_cpulist

__all__ = ["Agent", "AgentError", "AgentSettings", "StalePin", "VMRequest"]

log = logging.getLogger(__name__)

#: the states of a pool member that will never be handed out (see `Agent.tend_pools`)
BROKEN = frozenset({VMState.ERROR, VMState.MISSING})


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
    guests boot this way, with or without a disk)."""

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


@dataclass(frozen=True)
class StalePin:
    """A VM the hypervisor would not re-pin: the CPUs it should be on, and why not."""

    cpuset: frozenset[int]
    error: str


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
        self.disks.remove_partial_overlays()
        self._warming_since: dict[str, float] = {}
        #: per pool, why its last step (adding or suspending a member) failed: why it does not fill
        self.pool_errors: dict[str, str] = {}
        #: called after a member is handed out (the daemon's PoolKeeper refills then)
        self.on_hand_out: Callable[[], None] = lambda: None
        #: VMs whose last re-pin failed (their live pins are not their vNode's): retried before every change
        self._stale_pins: dict[str, StalePin] = {}
        #: per VM shutting down, the token of that shutdown: its end is recorded only while it is the same
        self._shutdowns: dict[str, object] = {}
        snapshot, self.vms = self.store.load()
        self.allocator = HostAllocator.restore(
            self.topology, snapshot, self.settings.critical_size, self.settings.reserved_memory_mib
        )
        self.report: list[Step] = self.reconcile()

    # -- requests --------------------------------------------------------------

    def create(self, request: VMRequest) -> StoredVM:
        """A VM as asked: from a warm pool when one matches, else made cold.
        A cold VM's overlay is made without the lock and adopted under it
        (`_overlay_for`): no request waits for qemu-img. It is made only
        once the VM would fit: a refused create runs no qemu-img."""
        if not valid_name(request.name):
            raise AgentError("invalid request", "name: use 1-63 letters, digits, '.', '_', '-'")
        problem = image_path_problem(request.image) if request.image else None
        if problem is not None:
            raise AgentError("invalid request", problem)
        base = self._base_image(request.image)
        with self.lock:
            self._retry_stale_pins()
            self._refuse_taken(request.name)
            member = self._ready_member(request, base) if request.name not in self.allocator else None
            if member is not None:
                return self._hand_out(member, request)
            if base is None:
                return self._create_cold(request, None, pool="")
            self._refuse_unplaceable(request)
        with self._overlay_for(base) as prepared, self.lock:
            self._refuse_taken(request.name)  # again: the name may have gone meanwhile
            return self._create_cold(request, base, pool="", prepared=prepared)

    def _refuse_unplaceable(self, request: VMRequest) -> None:
        """What `_create_cold` would refuse before it places anything, asked
        before an overlay is made for it. The placement is only a check here:
        the real one follows, under the lock again, and may still refuse."""
        self._refuse_stale()
        spec = VMSpec(request.name, request.vcpus, request.memory_mib, float(request.ratio))
        refusal = self.allocator.check(spec)
        if refusal is not None:
            raise AgentError(refusal.code.value, refusal.describe())

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
        try:
            change = self.allocator.deploy(spec)
        except PlacementError as error:
            raise AgentError(error.code.value, error.refusal.describe(), error.refusal) from error
        vm = StoredVM(spec, request.owner, str(base or ""), VMState.CREATING, Pending.CREATE, pool=pool)
        try:
            self.store.save_vm(vm, self.allocator.snapshot())
        except BaseException:
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
        return self._set(spec.name, VMState.WARMING if pool else VMState.RUNNING, None)

    def delete(self, name: str) -> None:
        with self.lock:
            self._retry_stale_pins()
            self._delete(self._get(name))

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
        self._forget(name)

    def start(self, name: str) -> StoredVM:
        return self._act(name, self.driver.start, LifecycleAction.START)

    def shutdown(self, name: str) -> StoredVM:
        """Power the guest off gracefully, forced after `shutdown_timeout_s`.

        That wait (30 s by default) happens without the agent's lock, so that
        every other request, the monitor and the heartbeat go on meanwhile:
        the VM is stored "stopping", with a pending mark, before, and its end
        state recorded after. Other actions on it are refused until then (not
        a delete, which forces it off). A crash during the wait leaves the
        mark, and the next start records the state the domain is in. The
        end is matched by a token, not by the name: a VM deleted meanwhile and
        made again under that name (and shut down in turn) is another's."""
        token = object()
        with self.lock:
            self._retry_stale_pins()
            vm, after = self._allowed(name, LifecycleAction.SHUTDOWN, record_refused=True)
            before = vm.state
            vm = self._set(name, VMState.STOPPING, Pending.SHUTDOWN)
            self._shutdowns[name] = token
        failure: DriverError | None = None
        try:
            self.driver.shutdown(vm.domain, self.settings.shutdown_timeout_s)
        except DriverError as error:
            failure = error
        with self.lock:
            if self._shutdowns.get(name) is not token:
                raise AgentError("unknown vm", f"{name} (deleted while it shut down)")
            del self._shutdowns[name]
            if failure is None:
                return self._set(name, after, None)
            if failure.code == "not found":
                raise self._lost(name) from failure
            self._set(name, self._observed_state(vm.domain, before), None)
        raise _refusal(failure) from failure

    def suspend(self, name: str) -> StoredVM:
        return self._act(name, self.driver.suspend, LifecycleAction.SUSPEND)

    def resume(self, name: str) -> StoredVM:
        return self._act(name, self.driver.resume, LifecycleAction.RESUME)

    def resize(self, name: str, vcpus: int, memory_mib: int) -> StoredVM:
        """Give a VM another size: re-placed on its level's vNode now (refused,
        and nothing changed, when it does not fit), stored, and written into
        the domain's definition for its next boot. Refused while a pin is
        stale, as a create is: the VM's vNode may grow."""
        with self.lock:
            self._retry_stale_pins()
            vm = self._idle(name)
            self._refuse_stale()
            new = VMSpec(name, vcpus, memory_mib, vm.spec.ratio)
            before = self.allocator.snapshot()
            removed = self.allocator.remove(name)
            try:
                change = self.allocator.deploy(new)
            except PlacementError as error:
                # restored exactly (pins included), not deployed again: that could pick other CPUs
                s = self.settings
                self.allocator = HostAllocator.restore(
                    self.topology, before, s.critical_size, s.reserved_memory_mib
                )
                raise AgentError(error.code.value, error.refusal.describe(), error.refusal) from error
            self.store.resize_vm(name, vcpus, memory_mib, self.allocator.snapshot())
            vm = self.vms[name] = replace(vm, spec=new)
            failure: DriverError | None = None
            try:
                self.driver.resize(vm.domain, vcpus, memory_mib)
            except DriverError as error:
                failure = error
            # the resize stands: a VM that cannot follow (this one or a neighbour,
            # moved by the removal or by the new placement) is kept as a stale pin
            moved = [name, *removed.repinned, *change.repinned]
            self._repin({other: self.allocator.pinning(other) for other in moved if other in self.allocator})
            if failure is not None:
                raise AgentError("hypervisor failed", str(failure)) from failure
            if name in self._stale_pins:
                raise AgentError("hypervisor failed", f"cannot re-pin {name}: {self._stale_pins[name].error}")
            return vm

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
            return _state_name(self.driver.info(vm.domain).state)
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

    # -- warm pools --------------------------------------------------------------

    def pool_status(self) -> dict[str, dict[str, int | str | None]]:
        """Per pool: its size, members ready and warming, and `last_error`
        (None while it fills as it should)."""
        with self.lock:
            status: dict[str, dict[str, int | str | None]] = {}
            for pool in self.settings.pools:
                members = self._members(pool.name)
                ready = sum(1 for vm in members if vm.state is VMState.POOLED and vm.pending is None)
                status[pool.name] = {
                    "size": pool.size, "ready": ready, "warming": len(members) - ready,
                    "last_error": self.pool_errors.get(pool.name),
                }  # fmt: skip
            return status

    def tend_pools(self, now: float) -> bool:
        """One step of pool upkeep: replace broken members, suspend members
        whose warm-up is over, drop members no pool wants, add one missing
        member. True while there is more to do (a member still to add); a
        pool that does not fit on the host raises AgentError, leaving the
        others as they are.

        A broken member (left in state error or missing by a start, or with
        a pending mark, which under the lock only a failed start leaves) is
        deleted, and the pool refills as for a hand-out: members are all
        alike, so replacing one is simpler than finishing what a start could
        not. Otherwise it would count towards the pool's size until the next
        start, never to be handed out. When it cannot be deleted, the pool's
        `last_error` says so, the rest of the upkeep goes on (one stuck member
        must not stop every pool), and the error is raised at the end; the
        next tick tries again."""
        stuck: tuple[str, AgentError] | None = None
        with self.lock:
            self._retry_stale_pins()
            wanted = {pool.name: pool for pool in self.settings.pools}
            for vm in [vm for vm in self.vms.values() if vm.pool]:
                pool = wanted.get(vm.pool)
                if vm.pending is not None or vm.state in BROKEN:
                    try:
                        with self._tending(vm.pool):
                            self._replace_member(vm)
                    except AgentError as error:
                        stuck = stuck or (vm.pool, error)
                elif pool is None or self._members(pool.name).index(vm) >= pool.size:
                    self._delete(vm)
                elif (
                    vm.state is VMState.WARMING
                    and now - self._warming_since.setdefault(vm.spec.name, now) >= pool.warmup_s
                ):
                    with self._tending(pool.name):
                        self._suspend_member(vm)
            short = next((p for p in self.settings.pools if len(self._members(p.name)) < p.size), None)
        more = short is not None and self._fill(short, now)
        if stuck is not None:
            pool_name, failure = stuck
            with self.lock:  # a later step of the same pool that went well does not hide it
                self.pool_errors[pool_name] = str(failure)
            raise failure
        return more

    def _fill(self, short: PoolSpec, now: float) -> bool:
        """Add one member to `short`; True while some pool still lacks members."""
        with self._tending(short.name):
            base = self._base_image(short.image)
            if base is not None:
                with self.lock:  # a pool larger than the host runs no qemu-img every period
                    self._refuse_unplaceable(self._member_request(short))
            with self._overlay_for(base) as prepared, self.lock:
                if len(self._members(short.name)) < short.size:  # (only this thread adds members)
                    self._add_member(short, now, base, prepared)
                return any(len(self._members(p.name)) < p.size for p in self.settings.pools)

    @contextlib.contextmanager
    def _tending(self, pool: str) -> Iterator[None]:
        """Keep why a step of `pool`'s upkeep failed (shown by `pool_status`),
        until one succeeds; the error goes on up to the PoolKeeper."""
        try:
            yield
        except AgentError as error:
            with self.lock:
                self.pool_errors[pool] = str(error)
            raise
        with self.lock:
            self.pool_errors.pop(pool, None)

    def _replace_member(self, vm: StoredVM) -> None:
        """Delete a broken member (the pool refills); a failure is the pool's
        error (the PoolKeeper logs it once)."""
        what = f"{vm.state}, {vm.pending.value} pending" if vm.pending is not None else vm.state
        try:
            self._delete(vm)
        except AgentError as error:
            raise AgentError(
                error.code, f"cannot replace the broken member {vm.spec.name} ({what}): {error.detail}"
            ) from error
        log.warning(
            "warm pool %s: deleted the broken member %s (%s), to be replaced", vm.pool, vm.spec.name, what
        )

    def _members(self, pool: str) -> list[StoredVM]:
        return [vm for vm in self.vms.values() if vm.pool == pool]

    def _member_request(self, pool: PoolSpec) -> VMRequest:
        """A new member of `pool`, under the first member name no VM or domain has."""
        taken = set(self.vms) | {vm.domain for vm in self.vms.values()}
        name = next(pool.member_name(i) for i in range(len(taken) + 1) if pool.member_name(i) not in taken)
        return VMRequest(name, pool.vcpus, pool.memory_mib, pool.ratio, owner="pool", image=pool.image)

    def _add_member(self, pool: PoolSpec, now: float, base: Path | None, prepared: Path | None) -> None:
        request = self._member_request(pool)
        self._create_cold(request, base, pool=pool.name, prepared=prepared)
        self._warming_since[request.name] = now

    def _suspend_member(self, vm: StoredVM) -> None:
        try:
            self.driver.suspend(vm.domain)
        except DriverError as error:
            raise AgentError("hypervisor failed", str(error)) from error
        self._warming_since.pop(vm.spec.name, None)
        self._set(vm.spec.name, VMState.POOLED, None)

    def _ready_member(self, request: VMRequest, base: Path | None) -> StoredVM | None:
        for pool in self.settings.pools:
            if (pool.vcpus, pool.memory_mib, pool.ratio) != (
                request.vcpus,
                request.memory_mib,
                request.ratio,
            ):
                continue
            for vm in self._members(pool.name):
                if vm.state is VMState.POOLED and vm.pending is None and vm.image == str(base or ""):
                    return vm
        return None

    def _hand_out(self, member: StoredVM, request: VMRequest) -> StoredVM:
        """Rename the member (allocator, then store, pending), resume it, done."""
        try:
            self.allocator.rename(member.spec.name, request.name)
        except PlacementError as error:
            raise AgentError(error.code.value, error.refusal.describe(), error.refusal) from error
        vm = replace(
            member, spec=replace(member.spec, name=request.name), owner=request.owner,
            state=VMState.RESUMING, pending=Pending.CREATE, pool="",
        )  # fmt: skip
        try:
            self.store.hand_out(member.spec.name, vm)
        except BaseException:
            self.allocator.rename(request.name, member.spec.name)
            raise
        del self.vms[member.spec.name]
        self.vms[request.name] = vm
        if member.spec.name in self._stale_pins:
            self._stale_pins[request.name] = self._stale_pins.pop(member.spec.name)
        crash_point("take:stored")
        try:
            self.driver.resume(vm.domain)
        except DriverError as error:
            self._delete(vm)
            raise AgentError("hypervisor failed", str(error)) from error
        with contextlib.suppress(DriverError):  # metadata only: the store has the owner already
            self.driver.relabel(vm.domain, vm.owner)
        self.on_hand_out()
        return self._set(request.name, VMState.RUNNING, None)

    # -- start-up --------------------------------------------------------------

    def reconcile(self) -> list[Step]:
        """Make the hypervisor match the store (see `reconcile.plan`); returns
        the steps, including the VMs reported missing and unknown domains.

        A step that fails is logged and returned with its error, and its VM
        is left in state "error" with its pending mark, so the next start
        tries again: one broken VM must not keep the agent (and every other
        VM's API) from starting. Only a hypervisor that cannot list its
        domains stops the start. A VM that cannot be re-pinned to its vNode
        is returned as a `re-pin` step with its error (and kept as a stale
        pin, tried again before every change)."""
        observed = {guest.name: guest for guest in self.driver.guests()}
        steps = []
        for step in plan(self.vms, observed):
            try:
                self._carry_out(step, observed)
            except (DriverError, DomainXMLError, DiskError) as error:
                log.error("start: cannot %s %s: %s", step.action.value, step.name, error)
                if step.name in self.vms:
                    self._set(step.name, VMState.ERROR, self.vms[step.name].pending)
                step = replace(step, error=str(error))
            steps.append(step)
        self._check_pins()
        return steps + [Step(Action.REPIN, name, pin.error) for name, pin in self._stale_pins.items()]

    def _carry_out(self, step: Step, observed: Mapping[str, GuestInfo]) -> None:
        vm = self.vms.get(step.name)
        if vm is None:  # an unknown domain: reported, never touched
            return
        if step.action is Action.CREATE:
            self._make(vm)
            self._set(step.name, VMState.WARMING if vm.pool else VMState.RUNNING, None)  # as `_create_cold`
        elif step.action is Action.FINISH_CREATE:
            self._finish_create(vm, observed[vm.domain].state)
        elif step.action is Action.DELETE:
            self.driver.delete(vm.domain)
            self._forget(step.name)
        elif step.action is Action.FORGET:
            self._forget(step.name)
        elif step.action is Action.FINISH_SHUTDOWN:
            self._set(step.name, _state_name(observed[vm.domain].state), None)
        elif step.action is Action.MISSING:
            self._set(step.name, VMState.MISSING, None)

    def _check_pins(self) -> None:
        """Pins follow the restored layout, whatever the domains held before
        the crash; a domain that cannot be re-pinned is kept as a stale pin
        (with those that failed during the steps before)."""
        current = {guest.name: guest for guest in self.driver.guests()}
        wrong = {name: self.allocator.pinning(name) for name in self._stale_pins if name in self.allocator}
        for name, vm in self.vms.items():
            guest = current.get(vm.domain)
            cpuset = self.allocator.pinning(name)
            if guest is not None and guest.spec is not None and guest.spec.cpuset != cpuset:
                wrong[name] = cpuset
        self._repin(wrong)

    def _finish_create(self, vm: StoredVM, state: GuestState) -> None:
        """The domain exists: a hand-out cut short still has to be resumed;
        a pool member warms up again from now."""
        if state is GuestState.PAUSED and not vm.pool:
            self.driver.resume(vm.domain)
            state = GuestState.RUNNING
        self._set(vm.spec.name, (VMState.WARMING if vm.pool else _state_name(state)), None)

    def vnode_layout(self) -> dict[float, list[int]]:
        with self.lock:
            return {ratio: self.allocator.vnode(ratio) for ratio in self.allocator.levels}

    # -- internals -------------------------------------------------------------

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
        serial = s.serial_dir / f"{vm.domain}.log" if s.serial_dir is not None else None
        return DomainSpec(
            name=vm.domain, vcpus=vm.spec.vcpus, memory_mib=vm.spec.memory_mib, cpuset=cpuset,
            level=float(vm.spec.ratio), owner=vm.owner, image=vm.image, domain_type=s.domain_type,
            kernel=s.kernel, initrd=s.initrd, cmdline=s.cmdline, serial_log=serial, disk=disk,
        )  # fmt: skip

    def _repin(self, repinned: Mapping[str, frozenset[int]]) -> list[str]:
        """Re-pin the VMs whose vNode changed; the failures ("name: why").
        A failure is kept in `_stale_pins` (logged when it is new), a success
        clears it. A VM whose domain has gone is marked missing, as a start
        would find it; one still pending takes its pins when it is made."""
        failed = []
        for name, cpuset in repinned.items():
            vm = self.vms.get(name)
            if vm is None or vm.state is VMState.MISSING:
                self._stale_pins.pop(name, None)
                continue
            try:
                self.driver.repin(vm.domain, cpuset)
            except DriverError as error:
                if error.code != "not found":
                    stale = StalePin(cpuset, str(error))
                    if self._stale_pins.get(name) != stale:
                        log.error("cannot re-pin %s to CPUs %s: %s", name, format_cpulist(cpuset), error)
                    self._stale_pins[name] = stale
                    failed.append(f"{name}: {error}")
                    continue
                if vm.pending is None:
                    log.warning("the domain %s of %s has gone: marked missing", vm.domain, name)
                    self._set(name, VMState.MISSING, None)
            if self._stale_pins.pop(name, None) is not None:
                log.info("%s is re-pinned to CPUs %s", name, format_cpulist(cpuset))
        return failed

    def _retry_stale_pins(self) -> None:
        """Re-pin the VMs whose last re-pin failed, to their vNode as it is now."""
        for name in [name for name in self._stale_pins if name not in self.allocator]:
            del self._stale_pins[name]
        self._repin({name: self.allocator.pinning(name) for name in self._stale_pins})

    def _refuse_stale(self) -> None:
        """No CPUs are placed while a VM may still hold CPUs its vNode gave up."""
        if self._stale_pins:
            stuck = "; ".join(
                f"{name} to CPUs {format_cpulist(pin.cpuset)} ({pin.error})"
                for name, pin in self._stale_pins.items()
            )
            raise AgentError(
                "stale pins",
                f"no CPUs are handed out while a VM cannot be re-pinned: {stuck} "
                "(tried again before every change)",
            )

    def stale_pins(self) -> dict[str, dict[str, list[int] | str]]:
        """The VMs whose re-pin failed: the CPUs they should be on, and why not."""
        with self.lock:
            return {
                name: {"cpus": sorted(pin.cpuset), "error": pin.error}
                for name, pin in self._stale_pins.items()
            }

    def _forget(self, name: str) -> None:
        self.disks.remove_overlay(self.vms[name].domain)
        self._warming_since.pop(name, None)
        self._stale_pins.pop(name, None)
        self._shutdowns.pop(name, None)  # a shutdown still waiting records nothing
        change = self.allocator.remove(name)
        self.store.forget_vm(name, self.allocator.snapshot())
        self.vms.pop(name, None)
        # the VM is gone for good: a neighbour that cannot follow is kept as a stale pin
        self._repin(change.repinned)

    def _set(self, name: str, state: VMState, pending: Pending | None) -> StoredVM:
        self.store.set_state(name, state, pending)
        vm = self.vms[name] = replace(self.vms[name], state=state, pending=pending)
        return vm

    def _get(self, name: str) -> StoredVM:
        """A user's VM by name; pool members are the agent's own, not theirs."""
        vm = self.vms.get(name)
        if vm is None or vm.pool:
            raise AgentError("unknown vm", name)
        return vm

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
            raise _missing(name)
        return vm

    def _lost(self, name: str) -> AgentError:
        """An action found the VM's domain gone from the hypervisor: the VM is
        missing (as a re-pin would mark it), a state no action can leave, so
        the request is refused as invalid (409), not as a hypervisor failure."""
        log.warning("the domain of %s has gone: marked missing", name)
        self._set(name, VMState.MISSING, None)
        return _missing(name)

    def _observed_state(self, domain: str, otherwise: VMState) -> VMState:
        try:
            return _state_name(self.driver.info(domain).state)
        except DriverError:
            return otherwise

    def _act(self, name: str, operation: Callable[[str], None], action: LifecycleAction) -> StoredVM:
        with self.lock:
            self._retry_stale_pins()
            vm, state = self._allowed(name, action)
            try:
                operation(vm.domain)
            except DriverError as error:
                raise self._failed(name, error) from error
            return self._set(name, state, None)

    def _allowed(
        self, name: str, action: LifecycleAction, record_refused: bool = False
    ) -> tuple[StoredVM, VMState]:
        """A user's idle VM and the state `action` takes it to, by the lifecycle
        table from the state its guest is in now (the stored state may lag: a
        guest may power itself off). An illegal action is refused here, with
        the guest untouched; the driver's own check stays as a backstop.
        `record_refused`: a refusal records the state the guest is in (a
        shutdown does, as it records how a failed one left the guest)."""
        vm = self._idle(name)
        try:
            observed = _state_name(self.driver.info(vm.domain).state)
        except DriverError as error:
            raise self._failed(name, error) from error
        try:
            return vm, transition(observed, action)
        except Refused as refused:
            if record_refused:
                self._set(name, observed, None)
            raise AgentError(refused.code, refused.describe(name)) from None

    def _failed(self, name: str, error: DriverError) -> AgentError:
        """A driver's failure on `name`: its domain gone (`_lost`), or refused."""
        return self._lost(name) if error.code == "not found" else _refusal(error)


def _missing(name: str) -> AgentError:
    return AgentError("invalid", f"{name} is missing: its domain has gone from the hypervisor (delete it)")


def _refusal(error: DriverError) -> AgentError:
    return AgentError("invalid" if error.code == "invalid" else "hypervisor failed", str(error))


def _state_name(state: GuestState) -> VMState:
    """The lifecycle's state for a guest's (`other` for the hypervisor's other states)."""
    return VMState(state.value)
