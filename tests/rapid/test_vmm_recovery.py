"""What the VMM does when a peer or the hypervisor fails it, or a DS forgets
it: nothing is lost, what was left undone is done on a later pass, and no
peer hears a message more than RAPID's VMM would send. Also: what stays in
memory once requests are answered, and the helpers' warm pools."""

from __future__ import annotations

import logging
import threading
from functools import partial

import pytest

from pinfold.agent.drivers import DriverError, GuestState, SimDriver
from pinfold.rapid import ds as ds_link
from pinfold.rapid import protocol, wire
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.endpoint import helper_pools
from pinfold.rapid.protocol import ERROR, OK, Op
from pinfold.rapid.state import Pending, Status
from pinfold.rapid.wire import PeerError
from tests.rapid.peers import as_register, as_register_ds, no_reply, start_vm
from tests.rapid.rig import FAST, begin, close, make_rig, query, ran_once, start_with_as, user_ip, wait_until


def count(messages: list[tuple[object, ...]], opcode: int) -> int:
    return sum(1 for m in messages if m[0] == opcode)


# -- registration with the SLAM and the DS ---------------------------------------------------------


def test_the_slam_hears_from_this_vmm_once_not_at_every_recheck(rig):
    """The SLAM appends "ip|port" to a list at each VMM_REGISTER_SLAM."""
    rig.ds.wait_for(lambda got: count(got, Op.VMM_REGISTER_DS) >= 3)  # two rechecks done
    assert rig.slam.of(Op.VMM_REGISTER_SLAM) == [(Op.VMM_REGISTER_SLAM, "127.0.0.1", rig.port)]


def test_a_ds_that_forgot_this_vmm_hears_of_all_its_vms_again_whatever_id_it_gives(rig):
    """Even with the same id; a suspended VM is registered, then said to be
    suspended; a pass cut short by the DS is finished on the next one; the
    SLAM is told again, since the DS's registration was done again."""
    start_with_as(rig, 42)
    no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1))
    rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, rig.registered_vm(42)[6], 2) in got)
    rig.ds.received.clear()
    rig.ds.drop = {-1}  # the DS fails midway: after the helper -2, before -1 and user 42
    rig.ds.forget(7)
    rig.ds.wait_for(lambda got: any(m[0] == Op.VM_NOTIFY_DS and m[2] == 2 for m in got))
    registrations = rig.ds.of(Op.VM_REGISTER_DS)
    assert [m[4] for m in registrations] == [-2, -1, -1, 42]
    assert all(m[1:4] == (7, 1, 0) and m[5] == 1 for m in registrations[:3])
    assert registrations[3][1:6] == (7, 0, 0, 42, 1)
    vmids = {m[4]: m[6] for m in registrations}  # the last registration of each
    assert rig.ds.of(Op.VM_NOTIFY_DS) == [(Op.VM_NOTIFY_DS, vmids[42], 2)]
    assert sorted(rig.ds.of(Op.HELPER_NOTIFY_DS)) == sorted(
        (Op.HELPER_NOTIFY_DS, vmids[user], user_ip(rig, user)) for user in (-1, -2)
    )
    # the DS has the last notice before the VMM has its answer and clears what was pending
    wait_until(lambda: all(vm.pending is Pending.NONE for vm in rig.state.vms()))
    assert {vm.user_id: (vm.vmid, vm.pending) for vm in rig.state.vms()} == {
        user: (vmid, Pending.NONE) for user, vmid in vmids.items()
    }
    rig.slam.wait_for(lambda got: count(got, Op.VMM_REGISTER_SLAM) >= 2)
    assert len(rig.slam.of(Op.VMM_REGISTER_SLAM)) == 2


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
    assert (vm.as_sync, vm.vmid, vm.pending) == (True, rig.registered_vm(42)[6], Pending.NONE)


@pytest.mark.parametrize("failing", ["VM_REGISTER_DS", "HELPER_NOTIFY_DS"])
def test_a_helper_the_ds_could_not_be_told_about_is_told_on_a_later_pass(tmp_path, i7, peers, monkeypatch,
                                                                         failing):  # fmt: skip
    ds, slam = peers
    if failing == "VM_REGISTER_DS":
        ds.drop = {-1}
    else:
        failed: list[bool] = []

        def flaky(address, timeout_s, request, reply=None):
            if (
                isinstance(request, partial)
                and request.func is protocol.helper_notify_ds_request
                and not failed
            ):
                failed.append(True)
                raise PeerError("the DS went away")
            return wire.call(address, timeout_s, request, reply)

        monkeypatch.setattr(ds_link, "call", flaky)
    rig = make_rig(tmp_path, i7, ds, slam)
    try:
        assert rig.vmm.registered.wait(10)
        helper = rig.state.vm(-1)
        assert helper is not None
        last = [m for m in ds.of(Op.VM_REGISTER_DS) if m[4] == -1][-1]
        assert (helper.vmid, helper.pending) == (last[6], Pending.NONE)
        assert (Op.HELPER_NOTIFY_DS, helper.vmid, helper.ip) in ds.of(Op.HELPER_NOTIFY_DS)
        assert count(ds.of(Op.VM_REGISTER_DS), Op.VM_REGISTER_DS) == (3 if failing == "VM_REGISTER_DS" else 2)
    finally:
        close(rig)


# -- a DS registration while a handler talks to the DS ----------------------------------------------
#
# `registered` marks every row without the per-user locks: an exchange with the DS that began
# before it must not write back the old DS's vmid, nor clear the new mark, nor send a vmid the
# new DS never issued. Each test stalls the VMM mid-exchange, has the DS register it again, then
# lets the exchange finish; the register loop is kept quiet so that the test drives each pass.


def quiet_rig(tmp_path, i7, peers):
    settings = FAST.model_copy(update={"recheck_period_s": 3600})
    rig = make_rig(tmp_path, i7, peers[0], peers[1], settings=settings)
    assert rig.vmm.registered.wait(10)
    return rig


def stall_after(monkeypatch, func):
    """The VMM's first exchange with a request made by `func` is done, then
    held (`reached` set) until `release` is set."""
    reached, release = threading.Event(), threading.Event()

    def stalling(address, timeout_s, request, reply=None):
        answer = wire.call(address, timeout_s, request, reply)
        if isinstance(request, partial) and request.func is func and not reached.is_set():
            reached.set()
            assert release.wait(30)
        return answer

    monkeypatch.setattr(ds_link, "call", stalling)
    return reached, release


def in_background(function, *args):
    thread = threading.Thread(target=function, args=args, daemon=True)
    thread.start()
    return thread


def register_again(rig, vmm_id=8):
    """A DS whose database was reset meanwhile registers this VMM anew."""
    rig.ds.forget(vmm_id)
    rig.vmm.register()
    assert rig.state.vmm_id() == vmm_id


def last_registration(rig, user_id):
    return [m for m in rig.ds.of(Op.VM_REGISTER_DS) if m[4] == user_id][-1]


def test_a_vmid_the_ds_gave_before_registering_this_vmm_again_is_not_kept(tmp_path, i7, peers, monkeypatch):
    rig = quiet_rig(tmp_path, i7, peers)
    try:
        reached, release = stall_after(monkeypatch, protocol.vm_register_ds_request)
        answer: list[object] = []
        slam = threading.Thread(target=lambda: answer.append(start_vm(rig.port, 42)))
        slam.start()
        assert reached.wait(10)
        stale = rig.registered_vm(42)[6]
        register_again(rig)
        release.set()
        assert as_register(rig.port, user_ip(rig, 42)) == (OK, 42)
        slam.join(timeout=10)
        assert answer == [(OK, 42, user_ip(rig, 42))]
        vm = rig.state.vm(42)
        assert vm is not None
        assert (vm.vmid, vm.pending) == (0, Pending.DS)  # not the old DS's vmid, and still to be told
        rig.vmm.settle()
        again = last_registration(rig, 42)
        assert (again[1], again[6] != stale) == (8, True)
        vm = rig.state.vm(42)
        assert vm is not None
        assert (vm.vmid, vm.pending) == (again[6], Pending.NONE)
    finally:
        close(rig)


def test_a_status_the_old_ds_heard_does_not_clear_the_new_registration_mark(tmp_path, i7, peers, monkeypatch):
    rig = quiet_rig(tmp_path, i7, peers)
    try:
        start_with_as(rig, 42)
        reached, release = stall_after(monkeypatch, protocol.vm_notify_ds_request)
        notify = in_background(no_reply, rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1))
        assert reached.wait(10)
        register_again(rig)
        release.set()
        notify.join(timeout=10)  # the VMM closes once the suspend is done
        assert not notify.is_alive()
        vm = rig.state.vm(42)
        assert vm is not None
        assert (vm.status, vm.vmid, vm.pending) == (Status.SUSPENDED, 0, Pending.DS)
        rig.vmm.settle()
        again = last_registration(rig, 42)
        assert again[1] == 8
        rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, again[6], 2) in got)
        vm = rig.state.vm(42)
        assert vm is not None
        assert (vm.vmid, vm.pending) == (again[6], Pending.NONE)
    finally:
        close(rig)


@pytest.mark.parametrize("action", [1, 2])
def test_a_vm_read_before_the_ds_registered_again_is_not_sent_with_its_old_vmid(
    tmp_path, i7, peers, monkeypatch, action
):
    """The suspend (1) or removal (2) read the VM, then the hypervisor took
    its time: the VM's old vmid may be another VM's at the new DS."""
    rig = quiet_rig(tmp_path, i7, peers)
    try:
        start_with_as(rig, 42)
        old = rig.registered_vm(42)[6]
        calling, release = threading.Event(), threading.Event()
        name = "suspend" if action == 1 else "delete"
        real = getattr(rig.agent, name)

        def slow(vm_name):
            if vm_name == "rapid-user-42":
                calling.set()
                assert release.wait(30)
            return real(vm_name)

        monkeypatch.setattr(rig.agent, name, slow)
        notify = in_background(no_reply, rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", action))
        assert calling.wait(10)
        register_again(rig)
        release.set()
        notify.join(timeout=10)
        assert not notify.is_alive()
        rig.vmm.settle()
        helpers = {last_registration(rig, user)[6] for user in (-1, -2)}  # told after the handler's messages
        rig.ds.wait_for(lambda got: {m[1] for m in got if m[0] == Op.HELPER_NOTIFY_DS} >= helpers)
        if action == 1:
            again = last_registration(rig, 42)
            rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, again[6], 2) in got)
            assert rig.ds.of(Op.VM_NOTIFY_DS) == [(Op.VM_NOTIFY_DS, again[6], 2)]
            vm = rig.state.vm(42)
            assert vm is not None
            assert (vm.status, vm.vmid, vm.pending) == (Status.SUSPENDED, again[6], Pending.NONE)
        else:  # gone before the new DS knew it: nothing to tell it
            assert rig.state.vm(42) is None
            assert [m for m in rig.ds.of(Op.VM_REGISTER_DS) if m[4] == 42 and m[1] == 8] == []
            assert not [m for m in rig.ds.of(Op.VM_NOTIFY_DS) if m[1] == old]
    finally:
        close(rig)


# -- a crash between the hypervisor's call and the record's change --------------------------------------
#
# A kill -9 after the hypervisor suspended or resumed the VM and before RAPID's record (or even
# the agent's) was changed: made here by doing the hypervisor's part behind the VMM's back,
# then starting a VMM again on the same store and the same (simulated) hypervisor.


def behind_the_vmms_back(rig, who, action):
    """`action` ("suspend", "resume") done on user 42's VM by the agent (RAPID
    killed before its record), or by the hypervisor alone (the agent killed
    before its own)."""
    if who == "agent":
        getattr(rig.agent, action)("rapid-user-42")
    else:
        getattr(rig.driver, action)(rig.agent.vms["rapid-user-42"].domain)


def guest_state(rig):
    return rig.driver.info(rig.agent.vms["rapid-user-42"].domain).state


@pytest.mark.parametrize("who", ["agent", "hypervisor"])
def test_a_vm_a_crash_left_paused_but_recorded_started_is_suspended_and_resumed_by_a_start(
    tmp_path, i7, peers, who
):
    """It was: a start answered with the paused guest's address at once."""
    ds, slam = peers
    driver = SimDriver()
    first = make_rig(tmp_path, i7, ds, slam, driver=driver)
    assert first.vmm.registered.wait(10)
    start_with_as(first, 42)
    vmid, ip = first.registered_vm(42)[6], user_ip(first, 42)
    behind_the_vmms_back(first, who, "suspend")
    close(first)
    ds.received.clear()
    again = make_rig(tmp_path, i7, ds, slam, driver=driver)
    try:
        assert again.vmm.registered.wait(10)
        ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 2) in got)  # the DS hears the real status
        vm = again.state.vm(42)
        assert vm is not None
        assert (vm.status, vm.vmid, vm.pending) == (Status.SUSPENDED, vmid, Pending.NONE)
        answer: list[object] = []
        request = threading.Thread(target=lambda: answer.append(start_vm(again.port, 42)))
        request.start()
        ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 3) in got)
        assert guest_state(again) is GuestState.RUNNING
        assert as_register(again.port, ip) == (OK, 42)
        request.join(timeout=10)
        assert answer == [(OK, 42, ip)]
    finally:
        close(again)


@pytest.mark.parametrize("who", ["agent", "hypervisor"])
def test_a_vm_a_crash_left_running_but_recorded_suspended_is_resumed_and_started_at_once(
    tmp_path, i7, peers, who
):
    """It was: every start failed, resuming a VM that ran."""
    ds, slam = peers
    driver = SimDriver()
    first = make_rig(tmp_path, i7, ds, slam, driver=driver)
    assert first.vmm.registered.wait(10)
    start_with_as(first, 42)
    vmid, ip = first.registered_vm(42)[6], user_ip(first, 42)
    no_reply(first.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1))
    ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 2) in got)
    behind_the_vmms_back(first, who, "resume")
    close(first)
    ds.received.clear()
    again = make_rig(tmp_path, i7, ds, slam, driver=driver)
    try:
        assert again.vmm.registered.wait(10)
        ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 3) in got)
        vm = again.state.vm(42)
        assert vm is not None
        assert (vm.status, vm.vmid, vm.pending) == (Status.RESUMED, vmid, Pending.NONE)
        assert start_vm(again.port, 42) == (OK, 42, ip)
    finally:
        close(again)


@pytest.mark.parametrize("who", ["agent", "hypervisor"])
def test_a_start_for_a_suspended_vm_that_runs_already_takes_it_as_resumed(rig, who):
    start_with_as(rig, 42)
    vmid = rig.registered_vm(42)[6]
    no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1))
    rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 2) in got)
    behind_the_vmms_back(rig, who, "resume")
    answer: list[object] = []
    request = threading.Thread(target=lambda: answer.append(start_vm(rig.port, 42)))
    request.start()
    rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 3) in got)
    assert as_register(rig.port, user_ip(rig, 42)) == (OK, 42)
    request.join(timeout=10)
    assert answer == [(OK, 42, user_ip(rig, 42))]
    vm = rig.state.vm(42)
    assert vm is not None
    assert (vm.status, vm.pending) == (Status.RESUMED, Pending.NONE)
    assert guest_state(rig) is GuestState.RUNNING


# -- removals ---------------------------------------------------------------------------------------


class StubbornDriver(SimDriver):
    """A hypervisor that refuses to delete while `refuse` is set."""

    refuse = False

    def delete(self, name: str) -> None:
        if self.refuse:
            raise DriverError("failed", f"cannot destroy '{name}'")
        super().delete(name)


@pytest.mark.parametrize("message", ["AS_RM_NOTIFY_VMM", "DS_VM_DEREGISTER_VMM"])
def test_a_vm_the_hypervisor_would_not_delete_is_kept_hidden_and_deleted_later(tmp_path, i7, peers, message):
    """Not dropped (RAPID leaked it): hidden from peers, no STOPPED yet (a
    failure), a start for the user is an ERROR; deleted on a later pass, and
    then the DS hears STOPPED (one more than RAPID sends after a DS_VM_DEREGISTER_VMM)."""
    driver = StubbornDriver()
    rig = make_rig(tmp_path, i7, peers[0], peers[1], driver=driver)
    try:
        assert rig.vmm.registered.wait(10)
        start_with_as(rig, 42)
        vmid = rig.registered_vm(42)[6]
        driver.refuse = True
        if message == "AS_RM_NOTIFY_VMM":
            no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 2))
        else:
            no_reply(rig.port, Op.DS_VM_DEREGISTER_VMM, ("long", 42))
        vm = rig.state.vm(42)
        assert vm is not None
        assert vm.removing
        assert "rapid-user-42" in {g.name for g in driver.guests()}
        assert query(rig, Op.SLAM_GET_VMINFO_VMM, 42) == (ERROR,)
        assert as_register(rig.port, vm.ip) == (ERROR,)
        assert start_vm(rig.port, 42) == (ERROR,)
        assert (Op.VM_NOTIFY_DS, vmid, 4) not in rig.ds.received
        driver.refuse = False
        rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 4) in got)
        wait_until(lambda: rig.state.vm(42) is None)
        assert "rapid-user-42" not in {g.name for g in driver.guests()}
        assert "rapid-user-42" not in rig.agent.allocator
    finally:
        close(rig)


def test_a_new_vm_without_address_that_would_not_go_is_recorded_for_removal(tmp_path, i7, peers, monkeypatch):
    driver = StubbornDriver()
    rig = make_rig(tmp_path, i7, peers[0], peers[1], driver=driver)
    try:
        assert rig.vmm.registered.wait(10)
        monkeypatch.setattr(rig.agent, "addresses", lambda name: [])
        driver.refuse = True
        assert start_vm(rig.port, 45) == (ERROR,)
        vm = rig.state.vm(45)
        assert vm is not None
        assert (vm.removing, vm.vmid) == (True, 0)
        driver.refuse = False
        wait_until(lambda: rig.state.vm(45) is None)
        assert "rapid-user-45" not in {g.name for g in driver.guests()}
        assert not [m for m in rig.ds.received if m[0] == Op.VM_REGISTER_DS and m[4] == 45]
    finally:
        close(rig)


def test_vms_that_vanished_are_dropped_and_the_ds_told_they_stopped(tmp_path, i7, peers):
    """PROTOCOL.md 8.3.9: a helper made again must not leave its old row at
    the DS looking alive."""
    ds, slam = peers
    first = make_rig(tmp_path, i7, ds, slam)
    assert first.vmm.registered.wait(10)
    start_with_as(first, 42)
    vmids = {m[4]: m[6] for m in ds.of(Op.VM_REGISTER_DS)}
    close(first)
    ds.received.clear()
    again = make_rig(tmp_path, i7, ds, slam, driver=SimDriver())  # a host reboot: no domains left
    try:
        assert again.vmm.registered.wait(10)
        stopped = [m for m in ds.of(Op.VM_NOTIFY_DS) if m[2] == 4]
        assert sorted(stopped) == sorted((Op.VM_NOTIFY_DS, vmid, 4) for vmid in vmids.values())
        assert again.state.vm(42) is None
        # the helpers, made again in their slots' rows, which are told they run
        assert ds.of(Op.VM_REGISTER_DS) == []
        # the helpers are made again one after the other, after the registration: wait for both
        ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.VM_NOTIFY_DS and m[2] == 1) >= 2)
        restarted = [m for m in ds.of(Op.VM_NOTIFY_DS) if m[2] == 1]
        assert sorted(restarted) == sorted((Op.VM_NOTIFY_DS, vmids[user], 1) for user in (-1, -2))
    finally:
        close(again)


def test_a_helper_made_again_keeps_the_one_row_of_its_slot_at_the_ds(tmp_path, i7, peers):
    """The genuine DS looks a helper's AS up by user id alone (selectOne):
    a second row for user -1, even one marked STOPPED, and the helper's AS
    never hears back (TooManyResultsException in DSEngine.asRmRegisterDs).
    A helper made again takes its slot's vmid: the row is told it runs
    again, at the new address, and no row is added. Twice, across restarts."""
    ds, slam = peers
    first = make_rig(tmp_path, i7, ds, slam)
    assert first.vmm.registered.wait(10)
    slots = {m[4]: m[6] for m in ds.of(Op.VM_REGISTER_DS)}
    close(first)
    for _ in range(2):
        ds.received.clear()
        again = make_rig(tmp_path, i7, ds, slam, driver=SimDriver())  # a host reboot: no domains left
        try:
            assert again.vmm.registered.wait(10)
            ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.HELPER_NOTIFY_DS) == 2)
            for user, vmid in slots.items():
                assert as_register_ds(ds.port, user) == (OK, vmid)
                assert ds.of_user(user)[vmid].ip == user_ip(again, user)
                helper = again.state.vm(user)
                assert helper is not None
                assert (ds.of_user(user)[vmid].status, helper.vmid) == (1, vmid)
            assert ds.of(Op.VM_REGISTER_DS) == []
        finally:
            close(again)


def test_a_helper_made_again_for_a_ds_that_lost_its_tables_is_registered_afresh(tmp_path, i7, peers):
    """A DS that lost its tables is seen by its answer to the VMM's
    registration (OK: it does not know this VMM); the old slot vmids are
    then nobody's, and the helpers get new rows there, one each."""
    ds, slam = peers
    ran_once(tmp_path, i7, ds, slam, forget=8)
    again = make_rig(tmp_path, i7, ds, slam, driver=SimDriver())
    try:
        assert again.vmm.registered.wait(10)
        ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.HELPER_NOTIFY_DS) == 2)
        fresh = {m[4]: m[6] for m in ds.of(Op.VM_REGISTER_DS)}
        assert sorted(fresh) == [-2, -1]
        for user, vmid in fresh.items():
            assert as_register_ds(ds.port, user) == (OK, vmid)
            helper = again.state.vm(user)
            assert helper is not None
            assert helper.vmid == vmid
        assert ds.of(Op.VM_NOTIFY_DS) == []  # the old rows are gone with the tables: nothing to stop
    finally:
        close(again)


# -- bugs ---------------------------------------------------------------------------------------------


def test_a_bug_in_a_background_loop_is_logged_and_the_loop_goes_on(rig, caplog):
    """An unexpected exception used to end the thread silently: no more
    heartbeats, no more rechecks."""
    usage, broken = rig.vmm.usage, threading.Event()
    broken.set()

    def flaky_usage():
        if broken.is_set():
            raise RuntimeError("a bug in the usage probe")
        return usage()

    with caplog.at_level(logging.ERROR, logger="pinfold.rapid.vmm"):
        rig.vmm.usage = flaky_usage
        wait_until(lambda: {"RAPID: VMM_NOTIFY_DS failed", "RAPID: registration pass failed"}
                   <= {r.getMessage() for r in caplog.records})  # fmt: skip
    broken.clear()
    beats, checks = count(rig.ds.received, Op.VMM_NOTIFY_DS), count(rig.ds.received, Op.VMM_REGISTER_DS)
    rig.ds.wait_for(
        lambda got: count(got, Op.VMM_NOTIFY_DS) > beats and count(got, Op.VMM_REGISTER_DS) > checks
    )
    assert all(r.exc_info is not None for r in caplog.records if r.levelno >= logging.ERROR)


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


# -- helpers from the warm pool -------------------------------------------------------------------------


def test_helpers_come_from_their_warm_pools(tmp_path, i7, peers):
    settings = FAST.model_copy(update={"helper_spares": 1})
    rig = make_rig(
        tmp_path,
        i7,
        peers[0],
        peers[1],
        settings=settings,
        start=False,
        pools=helper_pools(RapidConfig(), settings),
    )
    try:
        while rig.agent.tend_pools(0.0):  # fill the pools, then let the members warm up
            pass
        rig.agent.tend_pools(3600.0)
        pooled = {vm.spec.name: vm.domain for vm in rig.agent.vms.values() if vm.pool}
        assert set(pooled) == {"pool-rapid-helper-1-0", "pool-rapid-helper-2-0"}
        assert {vm.state for vm in rig.agent.vms.values()} == {"pooled"}
        begin(rig)
        assert rig.vmm.registered.wait(10)
        domains = {rig.agent.vms[f"rapid-helper-{slot}"].domain for slot in (1, 2)}
        assert domains == set(pooled.values())  # the members, renamed and resumed
        assert not any(vm.pool for vm in rig.agent.vms.values())  # none made cold beside them
        for slot in (1, 2):
            helper = rig.state.vm(-slot)
            assert helper is not None
            assert (helper.status, helper.ip) == (
                Status.STARTED,
                rig.agent.addresses(f"rapid-helper-{slot}")[0],
            )
    finally:
        close(rig)
