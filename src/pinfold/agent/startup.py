"""The start step: make the agent's own network when it is missing, load
the store, restore the allocator, remove the overlays and cloud-init seeds a
crash left half made (or made for no VM stored), and make the hypervisor
match the store (`reconcile.plan`), re-pinning what a crash left on the
wrong CPUs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace

from pinfold.agent.core import log, state_of
from pinfold.agent.disks import DiskError
from pinfold.agent.domain import DomainXMLError
from pinfold.agent.drivers.base import DriverError, GuestInfo, GuestState
from pinfold.agent.making import Making
from pinfold.agent.reconcile import Action, Step, plan
from pinfold.agent.store import StoredVM
from pinfold.model.lifecycle import VMState
from pinfold.placement import HostAllocator

__all__ = ["StartUp"]

#: how often a start looks whether a migration the hypervisor carries out has ended
MIGRATION_POLL_S = 0.2


class StartUp(Making):
    """`start_up`, once, before any request: no I/O happens when an agent is built."""

    def start_up(self) -> list[Step]:
        """Load the store, restore the allocator from it, remove the overlays
        a crash left half made and make the hypervisor match (`reconcile`);
        the steps taken, also kept in `report`. Building an agent does none
        of this (no I/O in a constructor): requests are refused (`NotStartedError`)
        until it has run. A start-up that fails leaves the agent not started."""
        with self.lock:
            if self._vms is not None:
                raise RuntimeError("the agent is already started")
            self._ensure_own_network()
            self.disks.remove_partial_overlays()
            snapshot, vms = self.store.load()
            self.seeds.remove_leftovers(vm.domain for vm in vms.values())
            allocator = HostAllocator.restore(
                self.topology, snapshot, self.settings.critical_size, self.settings.reserved_memory_mib
            )
            self._vms, self._allocator = vms, allocator  # together: started, or (raised above) not
            try:
                self.report = self.reconcile()
            except BaseException:
                self._vms = self._allocator = None
                raise
            return self.report

    def _ensure_own_network(self) -> None:
        """Make the `own_network` (NAT, DHCP) when the hypervisor has none of
        that name, recorded as the agent's own first; start it when it is the
        agent's and stopped. One of that name the agent did not make is used
        as it is, never changed. Before the VMs are made again: their NICs
        may be on it. A hypervisor that refuses stops the start (DriverError):
        the operator asked for this network."""
        own = self.settings.own_network
        if own is None:
            return
        existing = {network.name: network for network in self.driver.networks()}
        network = existing.get(own.name)
        if network is None:
            self.store.own_network(own.name)
            self.driver.define_network(own.name, own.subnet)
            log.info("start: made the network %s (%s, NAT, DHCP)", own.name, own.subnet)
        elif own.name not in self.store.owned_networks():
            log.warning("start: network %s exists and is not the agent's: used as it is", own.name)
        elif not network.active:
            self.driver.start_network(own.name)
        if network is not None and network.subnet and network.subnet != str(own.subnet):
            log.warning(
                "start: network %s is on %s, not %s as configured", own.name, network.subnet, own.subnet
            )

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
                step = replace(step, action=self._carry_out(step, observed) or step.action)
            except (DriverError, DomainXMLError, DiskError) as error:
                log.error("start: cannot %s %s: %s", step.action.value, step.name, error)
                if step.name in self.vms:
                    self._set(step.name, VMState.ERROR, self.vms[step.name].pending)
                step = replace(step, error=str(error))
            steps.append(step)
        self._check_pins()
        self._give_consoles(observed)
        return steps + [Step(Action.REPIN, name, pin.error) for name, pin in self._stale_pins.items()]

    def _give_consoles(self, observed: Mapping[str, GuestInfo]) -> None:
        """Give each stored VM's domain defined before consoles (a file
        serial) a console from its next boot (`Driver.give_console`): a
        shut-off guest has it when it is started, a running one runs on as
        it is. A failure is logged: the VM works without a console."""
        for vm in self.vms.values():
            if vm.domain not in observed or observed[vm.domain].spec is None:
                continue
            try:
                if self.driver.give_console(vm.domain):
                    log.info("start: %s gets a console at its next boot (defined before consoles)", vm.domain)
            except DriverError as error:
                log.warning("start: cannot give %s a console: %s", vm.domain, error)

    def _carry_out(self, step: Step, observed: Mapping[str, GuestInfo]) -> Action | None:
        """Carry `step` out; the action it turned out to be when not the planned one."""
        vm = self.vms.get(step.name)
        if vm is None:  # an unknown domain: reported, never touched
            return None
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
        elif step.action is Action.STAY:
            return self._finish_migrate_out(vm)
        elif step.action in (Action.FINISH_SHUTDOWN, Action.ARRIVED):
            self._set(step.name, state_of(observed[vm.domain].state), None)
        elif step.action in (Action.LEFT, Action.DROP):
            self._forget_migrating(step.name)
        elif step.action is Action.MISSING:
            self._set(step.name, VMState.MISSING, None)
        return None

    def _finish_migrate_out(self, vm: StoredVM) -> Action | None:
        """A send cut short by the agent's death, its guest still here: the
        hypervisor may still be migrating it (peer to peer, the daemon goes on).
        Wait for that to end (at most `migration_wait_s`), then: gone, it left
        (forgotten, `left`); here, it stayed. One still leaving after the wait
        keeps its mark, for the next start."""
        deadline = time.monotonic() + self.settings.migration_wait_s
        while self.driver.migrating_out(vm.domain):
            if time.monotonic() > deadline:
                log.warning("start: %s is still migrating away: its mark is kept", vm.spec.name)
                return None
            time.sleep(MIGRATION_POLL_S)
        try:
            state = self.driver.info(vm.domain).state
        except DriverError as error:
            if error.code != "not found":
                raise
            self._forget_migrating(vm.spec.name)
            return Action.LEFT
        self._set(vm.spec.name, state_of(state), None)
        return None

    def _finish_create(self, vm: StoredVM, state: GuestState) -> None:
        """The domain exists: a hand-out cut short still has to be resumed;
        one defined but never started (the crash came between the two) is
        started, as the create would have; a pool member warms up again from now."""
        if state is GuestState.PAUSED and not vm.pool:
            self.driver.resume(vm.domain)
            state = GuestState.RUNNING
        elif state is GuestState.SHUTOFF:
            self.driver.start(vm.domain)
            state = GuestState.RUNNING
        self._set(vm.spec.name, (VMState.WARMING if vm.pool else state_of(state)), None)
