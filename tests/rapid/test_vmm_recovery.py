"""What the VMM does when a peer or the hypervisor fails it, or a DS forgets
it: nothing is lost, what was left undone is done on a later pass, and no
peer hears a message more than RAPID's VMM would send. Also: what stays in
memory once requests are answered."""

from __future__ import annotations

import threading

from pinfold.rapid.protocol import ERROR, OK, Op
from tests.rapid.peers import as_register, no_reply, start_vm
from tests.rapid.rig import user_ip, wait_until


def count(messages: list[tuple[object, ...]], opcode: int) -> int:
    return sum(1 for m in messages if m[0] == opcode)


# -- registration with the SLAM and the DS ---------------------------------------------------------


def test_the_slam_hears_from_this_vmm_once_not_at_every_recheck(rig):
    """The SLAM appends "ip|port" to a list at each VMM_REGISTER_SLAM."""
    rig.ds.wait_for(lambda got: count(got, Op.VMM_REGISTER_DS) >= 3)  # two rechecks done
    assert rig.slam.of(Op.VMM_REGISTER_SLAM) == [(Op.VMM_REGISTER_SLAM, "127.0.0.1", rig.port)]


def test_an_as_that_confirms_while_the_ds_registers_its_vm_is_not_lost(rig):
    """The AS registers (and its flag is saved) while the start still waits
    for the DS's vmid: saving the vmid must not undo the flag."""
    rig.ds.holding = {Op.VM_REGISTER_DS}
    answer: list[object] = []
    slam = threading.Thread(target=lambda: answer.append(start_vm(rig.port, 42)))
    slam.start()
    rig.ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == 42 for m in got))
    try:
        assert as_register(rig.port, user_ip(rig, 42)) == (OK, 42)
        wait_until(lambda: rig.state.vm(42).as_sync)
    finally:
        rig.ds.released.set()
    slam.join(timeout=10)
    assert answer == [(OK, 42, user_ip(rig, 42))]
    vm = rig.state.vm(42)
    assert vm is not None
    assert (vm.as_sync, vm.vmid) == (True, rig.registered_vm(42)[6])


# -- memory ---------------------------------------------------------------------------------------


def test_answered_requests_leave_no_locks_or_waiters_behind(rig, monkeypatch):
    monkeypatch.setattr(rig.agent, "addresses", lambda name: [])
    assert start_vm(rig.port, 45) == (ERROR,)  # no address
    assert start_vm(rig.port, 46, vcpus=64) == (ERROR,)  # too big
    for user_id in range(1000, 1050):  # users nobody knows
        no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", user_id), ("int", 1))
        no_reply(rig.port, Op.DS_VM_DEREGISTER_VMM, ("long", user_id))
    wait_until(lambda: not rig.vmm._user_locks)  # the register loop may hold a helper's a moment
    assert rig.vmm._as_answers == {}
