"""A user's requests on VMs: create (from a warm pool or cold), delete,
the power actions (legal by `pinfold.model.lifecycle`'s table) and resize.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from pinfold.agent.core import AgentError, refusal_of, state_of
from pinfold.agent.drivers.base import DriverError
from pinfold.agent.store import Pending, StoredVM
from pinfold.agent.warm import WarmPools
from pinfold.model.lifecycle import Action as LifecycleAction
from pinfold.model.lifecycle import Refused, VMState, transition
from pinfold.model.vm import VMRequest, first_boot_problem, image_path_problem, valid_name
from pinfold.placement import HostAllocator, PlacementError, VMSpec

__all__ = ["Lifecycle"]


class Lifecycle(WarmPools):
    """The requests that change a VM, each under the lock (a shutdown's wait excepted)."""

    def create(self, request: VMRequest) -> StoredVM:
        """A VM as asked: from a warm pool when one matches, else made cold.
        A cold VM's overlay is made without the lock and adopted under it
        (`_overlay_for`): no request waits for qemu-img. It is made only
        once the VM would fit: a refused create runs no qemu-img. A VM with
        SSH keys or user data is always made cold: a pool member has booted
        already, so cloud-init would never read its seed."""
        if not valid_name(request.name):
            raise AgentError("invalid request", "name: use 1-63 letters, digits, '.', '_', '-'")
        problem = image_path_problem(request.image) if request.image else None
        problem = problem or first_boot_problem(request.ssh_keys, request.user_data)
        if problem is not None:
            raise AgentError("invalid request", problem)
        base = self._base_image(request.image)
        with self.lock:
            self._retry_stale_pins()
            self._refuse_taken(request.name)
            # a member has the default network's NIC and booted without a seed: a request
            # naming its own NICs, or with keys or user data, is made cold
            seeded = bool(request.ssh_keys or request.user_data)
            warm = request.name not in self.allocator and not request.nics and not seeded
            member = self._ready_member(request, base) if warm else None
            if member is not None:
                return self._hand_out(member, request)
            if base is None:
                return self._create_cold(request, None, pool="")
            self._refuse_unplaceable(request)
        with self._overlay_for(base) as prepared, self.lock:
            self._refuse_taken(request.name)  # again: the name may have gone meanwhile
            return self._create_cold(request, base, pool="", prepared=prepared)

    def create_many(self, requests: list[VMRequest]) -> list[StoredVM | AgentError]:
        """Each VM as `create` would make it, in order, each answered by its
        VM or its refusal. Runs of diskless VMs without a seed that no warm
        pool could serve are made together (`_create_cold_batch`: two commits
        for the run instead of two per VM); any other VM goes through `create`."""
        answers: list[StoredVM | AgentError] = []
        run: list[VMRequest] = []

        def flush() -> None:
            if run:
                with self.lock:
                    self._retry_stale_pins()
                    answers.extend(self._create_cold_batch(run))
                run.clear()

        for request in requests:
            if valid_name(request.name) and self._batchable(request):
                run.append(request)
                continue
            flush()
            try:
                answers.append(self.create(request))
            except AgentError as error:
                answers.append(error)
        flush()
        return answers

    def _batchable(self, request: VMRequest) -> bool:
        """A VM `_create_cold_batch` makes as `create` would: no disk to
        prepare, no seed to write, no pool of its size to take it from."""
        size = (request.vcpus, request.memory_mib, request.ratio)
        pooled = any((pool.vcpus, pool.memory_mib, pool.ratio) == size for pool in self.settings.pools)
        return not (request.image or request.ssh_keys or request.user_data or pooled)

    def delete(self, name: str) -> None:
        """Delete in any state but while a live migration moves the VM: the
        guest is in flight (the migration's end, or its abort, decides)."""
        with self.lock:
            self._retry_stale_pins()
            self._delete(self._deletable(name))

    def _deletable(self, name: str) -> StoredVM:
        """VM `name`, unless it is unknown or in flight (`AgentError`)."""
        vm = self._get(name)
        if vm.pending in (Pending.MIGRATE_OUT, Pending.INCOMING):
            raise AgentError("invalid", f"{name} is {vm.state}: its migration is not finished")
        return vm

    def delete_many(self, names: Sequence[str]) -> list[AgentError | None]:
        """`delete` for each of `names`, in turn, in one hold of the lock, with
        two commits for all of them (`_delete_batch`) instead of two each: each
        one's outcome in order, None for a VM deleted, else the error a lone
        delete would have raised (a name twice: `unknown vm` the second time)."""
        with self.lock:
            self._retry_stale_pins()
            outcomes: list[AgentError | None] = []
            chosen: dict[str, tuple[int, StoredVM]] = {}  # name: its place in `names`, the VM
            for name in names:
                try:
                    if name in chosen:  # deleted by its first mention
                        raise AgentError("unknown vm", name)
                    chosen[name] = (len(outcomes), self._deletable(name))
                    outcomes.append(None)
                except AgentError as error:
                    outcomes.append(error)
            failed = self._delete_batch([vm for _, vm in chosen.values()])
            for name, refused in failed.items():
                outcomes[chosen[name][0]] = refused
            return outcomes

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
        raise refusal_of(failure) from failure

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
            observed = state_of(self.driver.info(vm.domain).state)
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
        return self._lost(name) if error.code == "not found" else refusal_of(error)
