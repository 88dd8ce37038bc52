"""Stale pins: a VM the hypervisor would not re-pin to its vNode (after a
delete or a resize, or at start) is kept in `_stale_pins`, re-pinned again
before every change and at every PoolKeeper tick, and no cold create is
accepted until that works (`stale pins`): it could hand the CPUs that VM
still holds to another vNode. `_repin` is the one place re-pins are made.
"""

from __future__ import annotations

from collections.abc import Mapping

from pinfold.agent.core import AgentCore, AgentError, StalePin, log
from pinfold.agent.drivers.base import DriverError
from pinfold.model.lifecycle import VMState
from pinfold.topology import format_cpulist

__all__ = ["PinKeeping"]


class PinKeeping(AgentCore):
    """Re-pinning VMs to their vNodes, and the VMs that could not follow."""

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
