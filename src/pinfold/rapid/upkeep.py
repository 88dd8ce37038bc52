"""What RAPID's VMM does on its own: start-up recovery (`reconcile`), and in
the background the register loop (register with the DS and the SLAM, finish
what failures left undone, make missing helpers) and the heartbeats
(VMM_NOTIFY_DS). What recovery and each pass decide is `rapid.reconcile`'s
pure plan; this carries it out.
"""

from __future__ import annotations

from pinfold.model.errors import PinfoldError
from pinfold.rapid.core import log
from pinfold.rapid.reconcile import Action, plan, settling
from pinfold.rapid.state import Pending
from pinfold.rapid.vms import VMKeeper
from pinfold.rapid.wire import PeerError

__all__ = ["HELPERS", "Upkeep"]

HELPERS = (1, 2)


class Upkeep(VMKeeper):
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
                size = (self.settings.helper_vcpus, self.settings.helper_memory_mib)
                made = self._create_vm(
                    user_id, f"rapid-helper-{slot}", *size, image=self.config.helper_image(slot), helper=slot
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
