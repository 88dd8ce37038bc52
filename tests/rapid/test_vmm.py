"""The RAPID VM Manager of an agent against Python peers that speak the
protocol (PROTOCOL.md section 10): a DS, a SLAM and ASs, over real sockets on
loopback, the agent on the sim driver and a real SQLite store. Waits that
RAPID counts in minutes are scaled down through the settings (`tests.rapid.rig`)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import replace

import pytest

from pinfold.agent.drivers import GuestState, SimDriver
from pinfold.rapid.codec import CodecError, Writer
from pinfold.rapid.protocol import ERROR, OK, Op
from pinfold.rapid.state import Status
from tests.rapid.peers import FakeASServer, as_register, no_reply, request, start_vm
from tests.rapid.rig import FAST, Rig, close, make_rig, query, ran_once, start_with_as, user_ip

# -- start-up and registration (scenarios 6-10) --------------------------------------------------


def test_first_start_registers_with_the_ds_then_the_slam_and_makes_two_helpers(rig):
    (register,) = rig.ds.of(Op.VMM_REGISTER_DS)
    assert register == (Op.VMM_REGISTER_DS, "127.0.0.1", 4, 12, 8, 2048, 0, 3072, "1000000000")
    assert rig.slam.of(Op.VMM_REGISTER_SLAM) == [(Op.VMM_REGISTER_SLAM, "127.0.0.1", rig.port)]
    assert (rig.state.vmm_id(), rig.state.slam()) == (7, ("127.0.0.1", rig.slam.port))
    helpers = rig.ds.of(Op.VM_REGISTER_DS)
    assert [m[:6] for m in helpers] == [
        (Op.VM_REGISTER_DS, 7, 1, 0, -1, 1),
        (Op.VM_REGISTER_DS, 7, 1, 0, -2, 1),
    ]
    rig.ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.HELPER_NOTIFY_DS) == 2)
    notices = rig.ds.of(Op.HELPER_NOTIFY_DS)
    assert [(m[1], m[2]) for m in notices] == [
        (helpers[0][6], user_ip(rig, -1)),
        (helpers[1][6], user_ip(rig, -2)),
    ]
    assert {vm.spec.name for vm in rig.agent.user_vms()} == {"rapid-helper-1", "rapid-helper-2"}


def test_heartbeats_reach_the_ds_every_period(rig):
    rig.ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.VMM_NOTIFY_DS) >= 3)
    assert rig.ds.of(Op.VMM_NOTIFY_DS)[0] == (Op.VMM_NOTIFY_DS, 7, 12, 2048, 0)


def test_a_stalled_ds_does_not_stop_later_heartbeats(rig):
    """Scenario 9, improved: the DS takes connections and then stalls, the
    registration recheck's and the heartbeats' alike; heartbeats go on at
    their period meanwhile (RAPID's one Timer thread waited for ever)."""
    rig.ds.holding = {Op.VMM_REGISTER_DS, Op.VMM_NOTIFY_DS}
    try:
        before = len(rig.ds.of(Op.VMM_REGISTER_DS))
        rig.ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.VMM_REGISTER_DS) > before)
        beats = len(rig.ds.of(Op.VMM_NOTIFY_DS))
        rig.ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.VMM_NOTIFY_DS) >= beats + 3, timeout_s=3)
        assert not rig.ds.released.is_set()  # the recheck is still stalled
    finally:
        rig.ds.released.set()


def test_a_restart_keeps_the_id_and_the_helpers(tmp_path, i7, peers):
    ds, slam = peers
    driver = SimDriver()
    first = make_rig(tmp_path, i7, ds, slam, driver=driver)
    assert first.vmm.registered.wait(10)
    close(first)
    ds.received.clear()  # the DS still knows this VMM: it answers ERROR to its registration
    again = make_rig(tmp_path, i7, ds, slam, driver=driver)
    try:
        assert again.vmm.registered.wait(10)
        assert again.state.vmm_id() == 7
        assert ds.of(Op.VM_REGISTER_DS) == []  # both helpers are still there
        assert len(slam.of(Op.VMM_REGISTER_SLAM)) == 2  # once per start, rechecks or not
    finally:
        close(again)


def test_helpers_the_hypervisor_lost_are_made_again(tmp_path, i7, peers):
    ds, slam = peers
    ran_once(tmp_path, i7, ds, slam)
    again = make_rig(tmp_path, i7, ds, slam, driver=SimDriver())  # a host reboot: no domains left
    try:
        assert again.vmm.registered.wait(10)
        assert {vm.spec.name for vm in again.agent.user_vms()} == {"rapid-helper-1", "rapid-helper-2"}
        ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.HELPER_NOTIFY_DS) == 2)
    finally:
        close(again)


def test_a_ds_that_forgot_this_vmm_is_told_again_about_its_vms(tmp_path, i7, peers):
    ds, slam = peers
    first = ran_once(tmp_path, i7, ds, slam, forget=8)
    again = make_rig(tmp_path, i7, ds, slam, driver=first.driver)
    try:
        ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.VM_REGISTER_DS) == 2)
        assert again.state.vmm_id() == 8
        assert {m[1] for m in ds.of(Op.VM_REGISTER_DS)} == {8}
        ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.HELPER_NOTIFY_DS) == 2)
    finally:
        close(again)


# -- SLAM_START_VM_VMM (11-17) ------------------------------------------------------------------


def test_a_new_user_gets_a_vm_once_its_as_confirms(rig):
    assert start_with_as(rig, 42) == (OK, 42, user_ip(rig, 42))
    assert rig.registered_vm(42)[:6] == (Op.VM_REGISTER_DS, 7, 0, 0, 42, 1)
    vm = rig.state.vm(42)
    assert vm is not None
    assert (vm.status, vm.as_sync, vm.vmid, vm.vcpus, vm.memory_mb) == (
        Status.STARTED,
        True,
        rig.registered_vm(42)[6],
        1,
        512,
    )
    assert rig.agent.allocator.spec("rapid-user-42").memory_mib == 512
    # the same request again: at once, nothing created, nothing told to the DS
    before = len(rig.ds.received)
    assert start_vm(rig.port, 42) == (OK, 42, vm.ip)
    assert len(rig.ds.received) == before
    assert len([v for v in rig.agent.user_vms() if v.spec.name == "rapid-user-42"]) == 1


def test_an_as_that_never_registers_ends_in_error(rig):
    assert start_vm(rig.port, 43) == (ERROR,)
    assert rig.state.vm(43) is not None  # the VM stays, as RAPID's: the next start finds it


def test_an_as_that_answers_error_ends_the_start_at_once(rig):
    assert start_with_as(rig, 44, confirm=ERROR) == (ERROR,)


def test_no_address_means_no_vm(rig, monkeypatch):
    monkeypatch.setattr(rig.agent, "addresses", lambda name: [])
    assert start_vm(rig.port, 45) == (ERROR,)
    assert rig.state.vm(45) is None
    assert "rapid-user-45" not in rig.agent.allocator


def test_a_suspended_vm_is_resumed(rig):
    start_with_as(rig, 42)
    vmid = rig.registered_vm(42)[6]
    no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1))
    rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 2) in got)
    answer: list[object] = []
    slam = threading.Thread(target=lambda: answer.append(start_vm(rig.port, 42)))
    slam.start()
    rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 3) in got)
    assert as_register(rig.port, user_ip(rig, 42)) == (OK, 42)
    slam.join(timeout=10)
    assert answer == [(OK, 42, user_ip(rig, 42))]
    vm = rig.state.vm(42)
    assert vm is not None
    assert vm.status is Status.RESUMED


def test_two_starts_for_one_new_user_make_one_vm(rig):
    answers: list[object] = []
    slams = [threading.Thread(target=lambda: answers.append(start_vm(rig.port, 46))) for _ in range(2)]
    for slam in slams:
        slam.start()
    rig.ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == 46 for m in got))
    assert as_register(rig.port, user_ip(rig, 46)) == (OK, 46)
    for slam in slams:
        slam.join(timeout=10)
    assert answers == [(OK, 46, user_ip(rig, 46))] * 2
    assert sum(1 for m in rig.ds.of(Op.VM_REGISTER_DS) if m[4] == 46) == 1


@pytest.mark.parametrize(("vcpus", "memory_mb"), [(64, 512), (-1, 512), (1, -5), (1, 10**9)])
def test_sizes_the_host_cannot_hold_are_refused_before_the_hypervisor(rig, vcpus, memory_mb):
    before = {vm.spec.name for vm in rig.agent.user_vms()}
    assert start_vm(rig.port, 47, vcpus=vcpus, memory_mb=memory_mb) == (ERROR,)
    assert {vm.spec.name for vm in rig.agent.user_vms()} == before
    assert rig.state.vm(47) is None


# -- AS and DS messages (19-25) -------------------------------------------------------------------


def test_an_as_with_an_unknown_address_is_refused_after_the_lookups(rig, monkeypatch):
    """Scenario 19: RAPID's four lookups 10 s apart, scaled down."""
    rig.vmm.settings = rig.vmm.settings.model_copy(update={"as_lookup_tries": 4, "as_lookup_interval_s": 0.1})
    lookups: list[str] = []
    by_ip = rig.state.by_ip

    def counted(ip: str):
        lookups.append(ip)
        return by_ip(ip)

    monkeypatch.setattr(rig.state, "by_ip", counted)
    began = time.monotonic()
    assert as_register(rig.port, "10.9.9.9") == (ERROR,)
    assert lookups == ["10.9.9.9"] * 4
    assert time.monotonic() - began >= 3 * 0.1


def test_as_notify_suspends_then_removes_without_replying(rig):
    start_with_as(rig, 42)
    vmid = rig.registered_vm(42)[6]
    assert no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1)) == b"\xac\xed\x00\x05"
    rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 2) in got)
    assert rig.driver.info("rapid-user-42").state is GuestState.PAUSED
    no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1))  # already suspended: refused
    assert no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 2)) == b"\xac\xed\x00\x05"
    rig.ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 4) in got)
    assert rig.ds.of(Op.VM_NOTIFY_DS).count((Op.VM_NOTIFY_DS, vmid, 2)) == 1
    assert rig.state.vm(42) is None
    assert "rapid-user-42" not in {g.name for g in rig.driver.guests()}


def test_notifications_for_unknown_users_or_actions_change_nothing(rig):
    start_with_as(rig, 42)
    before = (list(rig.ds.received), rig.state.vms())
    no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 99), ("int", 1))
    no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 3))
    assert (list(rig.ds.received), rig.state.vms()) == before


def test_ds_deregistration_removes_the_vm_silently(rig):
    start_with_as(rig, 42)
    before = len(rig.ds.received)
    assert no_reply(rig.port, Op.DS_VM_DEREGISTER_VMM, ("long", 42)) == b"\xac\xed\x00\x05"
    assert rig.state.vm(42) is None
    assert "rapid-user-42" not in rig.agent.allocator
    assert len(rig.ds.received) == before


# -- SLAM queries (26-29) ---------------------------------------------------------------------------


def test_vm_info_lists_running_vms_with_helpers(rig):
    start_with_as(rig, 42)
    start_with_as(rig, 43)
    no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", 43), ("int", 1))
    status, values = query(rig, Op.SLAM_GET_VMINFO_VMM, 0)
    tuples = [values[i : i + 6] for i in range(0, len(values), 6)]
    assert status == OK
    assert sorted(t[0] for t in tuples) == ["-1", "-2", "42"]
    mine = next(t for t in tuples if t[0] == "42")
    assert mine == ["42", str(rig.registered_vm(42)[6]), "1", "512", "20", "1200"]
    assert query(rig, Op.SLAM_GET_VMINFO_VMM, 43) == (ERROR,)


def test_vm_info_with_no_running_vm_is_an_error(rig):
    """Scenario 26: an empty list is ERROR, not OK and no tuples."""
    for helper in (-1, -2):
        no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", helper), ("int", 1))
    assert [vm.status for vm in rig.state.vms()] == [Status.SUSPENDED] * 2
    assert query(rig, Op.SLAM_GET_VMINFO_VMM, 0) == (ERROR,)


def test_cpu_and_memory_come_from_the_agents_monitor(rig):
    start_with_as(rig, 42)
    vmid = str(rig.registered_vm(42)[6])
    assert query(rig, Op.SLAM_GET_VMCPU_VMM, 42) == (OK, ["42", vmid, "12.5"])
    assert query(rig, Op.SLAM_GET_VMMEM_VMM, 42) == (OK, ["42", vmid, "512", "512.0"])
    assert query(rig, Op.SLAM_GET_VMCPU_VMM, 99) == (ERROR,)
    assert query(rig, Op.SLAM_GET_VMDISK_VMM, 42) == (ERROR,)  # a diskless VM has no disk to report
    rig.vmm.vm_usage = lambda name: None  # no sample yet: no CPU use, no memory.usage
    assert query(rig, Op.SLAM_GET_VMCPU_VMM, 42) == (ERROR,)
    assert query(rig, Op.SLAM_GET_VMMEM_VMM, 42) == (ERROR,)
    assert query(rig, Op.SLAM_GET_VMMEM_VMM, 0) == (ERROR,)


# -- flavors (30-31) ------------------------------------------------------------------------------


@pytest.fixture
def local_vms(tmp_path, rig, monkeypatch) -> Rig:
    """VMs whose address is 127.0.0.1 (RAPID's ipShellPath fallback), so the
    VMM reaches the fake AS server on loopback."""
    script = tmp_path / "getIp.sh"
    script.write_text("echo 127.0.0.1\n")  # no shebang, like RAPID's
    monkeypatch.setattr(rig.agent, "addresses", lambda name: [])
    rig.vmm.config = replace(rig.vmm.config, ip_script=script)
    return rig  # type: ignore[no-any-return]


@pytest.mark.parametrize(("reply", "expected"), [(OK, OK), (ERROR, ERROR), (None, ERROR)])
def test_a_flavor_change_needs_the_as_to_agree(local_vms, reply, expected):
    rig = local_vms
    as_server = FakeASServer(reply)
    rig.vmm.settings = rig.vmm.settings.model_copy(update={"as_port": as_server.port, "socket_timeout_s": 1})
    try:
        answer: list[object] = []
        slam = threading.Thread(target=lambda: answer.append(start_vm(rig.port, 42)))
        slam.start()
        rig.ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == 42 for m in got))
        as_register(rig.port, "127.0.0.1")
        slam.join(timeout=10)

        def change(out: Writer) -> None:
            out.write_byte(Op.SLAM_CHANGE_VMFLV_VMM)
            out.write_long(42)
            for value in (2, 0, 0):
                out.write_int(value)

        assert request(rig.port, change, lambda r: r.read_byte()) == expected
        assert as_server.of(Op.DS_MIGRATION_VM_AS) == [(Op.DS_MIGRATION_VM_AS, 42)]
        size = rig.agent.allocator.spec("rapid-user-42")
        assert (size.vcpus, size.memory_mib) == ((2, 1024) if expected == OK else (1, 512))
    finally:
        as_server.stop()


def test_confirm_ignores_trailing_bytes_and_knows_its_users(rig):
    start_with_as(rig, 42)

    def confirm(user_id: int) -> int:
        def write(out: Writer) -> None:
            out.write_byte(Op.SLAM_CONFIRM_VMFLV_VMM)
            out.write_long(user_id)
            for value in (2, 1024, 20):  # what the deployed SLAM adds
                out.write_int(value)

        return int(request(rig.port, write, lambda r: r.read_byte()))

    assert (confirm(42), confirm(99)) == (OK, ERROR)


# -- robustness (5, 32, 33, 35) --------------------------------------------------------------------


def test_bad_magic_and_unknown_opcodes_are_dropped_and_the_server_goes_on(rig):
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(100) == b"\xac\xed\x00\x05"
        try:
            rest = sock.recv(100)
        except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset
            rest = b""
        assert rest == b""
    assert no_reply(rig.port, 99) == b"\xac\xed\x00\x05"
    assert query(rig, Op.SLAM_GET_VMINFO_VMM, 0)[0] == OK


def test_silent_clients_are_dropped_and_do_not_starve_the_server(tmp_path, i7, peers):
    """100 silent connections, more than the workers and their queue: none
    takes a worker, so a request is answered while they are open; each is
    closed once its message deadline passes."""
    settings = FAST.model_copy(update={"message_deadline_s": 1.0})
    rig = make_rig(tmp_path, i7, peers[0], peers[1], settings=settings)
    silent = []
    try:
        assert rig.vmm.registered.wait(10)
        silent = [socket.create_connection(("127.0.0.1", rig.port), timeout=5) for _ in range(100)]
        assert query(rig, Op.SLAM_GET_VMINFO_VMM, 0)[0] == OK
        for sock in silent:  # the header, then the close: recv waits at most the socket's 5 s
            assert sock.recv(100) == b"\xac\xed\x00\x05"
            assert sock.recv(100) == b""
        assert rig.server.rejected == 0
    finally:
        for sock in silent:
            sock.close()
        close(rig)


def test_peers_outside_the_allow_list_are_refused(tmp_path, i7, peers):
    settings = FAST.model_copy(update={"allow": ("10.0.0.0/8",)})
    rig = make_rig(tmp_path, i7, peers[0], peers[1], settings=settings)
    try:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as sock:
            assert sock.recv(100) == b""  # closed before a header
        assert rig.server.rejected >= 1
    finally:
        close(rig)


def test_two_users_racing_for_the_last_room_one_wins_the_other_hears_error(tmp_path, i7, peers):
    """Scenario 16: room for one more VM only; both starts are answered."""
    rig = make_rig(tmp_path, i7, peers[0], peers[1])
    try:
        assert rig.vmm.registered.wait(10)
        free = rig.agent.allocator.free_cpu_count  # premium VMs of this size take every free CPU
        answers: list[tuple[object, ...]] = []
        slams = [
            threading.Thread(target=lambda user=user: answers.append(start_vm(rig.port, user, vcpus=free)))
            for user in (50, 51)
        ]
        for slam in slams:
            slam.start()
        rig.ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] in (50, 51) for m in got))
        winner = next(m[4] for m in rig.ds.of(Op.VM_REGISTER_DS) if m[4] in (50, 51))
        as_register(rig.port, user_ip(rig, winner))
        for slam in slams:
            slam.join(timeout=10)
        assert sorted(answers, key=len) == [(ERROR,), (OK, winner, user_ip(rig, winner))]
    finally:
        close(rig)


def test_a_ds_that_refuses_a_new_vmm_is_asked_again_until_it_accepts(tmp_path, i7, peers):
    """Scenario 7, improved: no exit; registration retries with backoff."""
    ds, slam = peers
    ds.accept = False  # e.g. no SLAM has registered with it yet
    rig = make_rig(tmp_path, i7, ds, slam)
    try:
        ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.VMM_REGISTER_DS) >= 2)
        assert not rig.vmm.registered.is_set()
        assert rig.state.vmm_id() == 0
        assert slam.of(Op.VMM_REGISTER_SLAM) == []
        assert start_vm(rig.port, 42) == (ERROR,)  # the DS could not be told of its VM
        assert ds.of(Op.VM_REGISTER_DS) == []
        ds.accept = True
        assert rig.vmm.registered.wait(15)
        assert rig.state.vmm_id() == 7
    finally:
        close(rig)


def test_disk_size_and_allocation_of_a_vm_with_an_image(tmp_path, i7, peers):
    """Scenario 29: the third element is the type's 20 GB in bytes; the fourth
    what the VM's qcow2 overlay holds on disk."""
    images = tmp_path / "images"
    images.mkdir()
    base = images / "RAPID_VM_template.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    rig = make_rig(tmp_path, i7, peers[0], peers[1], normal_image=base)
    try:
        assert rig.vmm.registered.wait(10)
        start_with_as(rig, 42)
        status, values = query(rig, Op.SLAM_GET_VMDISK_VMM, 42)
        assert status == OK
        assert values[:3] == ["42", str(rig.registered_vm(42)[6]), str(20 * 2**30)]
        assert float(values[3]) > 0
    finally:
        close(rig)


def test_an_as_may_act_only_from_its_vms_address_when_so_configured(tmp_path, i7, peers):
    settings = FAST.model_copy(update={"as_must_match_ip": True})
    rig = make_rig(tmp_path, i7, peers[0], peers[1], settings=settings)
    try:
        assert rig.vmm.registered.wait(10)
        ip = user_ip(rig, -1)  # a helper's address: not 127.0.0.1, where this test connects from
        assert as_register(rig.port, ip) == (ERROR,)
        before = rig.state.vms()
        no_reply(rig.port, Op.AS_RM_NOTIFY_VMM, ("long", -1), ("int", 2))
        assert rig.state.vms() == before
    finally:
        close(rig)


def test_with_known_peers_only_the_ds_the_slam_and_the_vms_may_connect(tmp_path, i7, peers):
    """`allow_known_peers`: the DS and the SLAM (both at 127.0.0.1 here) and
    the VMs' own addresses (their ASs); 127.0.0.2, on loopback too, is none."""
    settings = FAST.model_copy(update={"allow_known_peers": True})
    rig = make_rig(tmp_path, i7, peers[0], peers[1], settings=settings)
    try:
        assert rig.vmm.registered.wait(10)
        assert query(rig, Op.SLAM_GET_VMINFO_VMM, 0)[0] == OK
        with pytest.raises((CodecError, OSError)):  # closed at once
            as_register(rig.port, "127.0.0.2", source="127.0.0.2")
        helper = rig.state.vm(-1)
        assert helper is not None
        rig.state.update(helper, ip="127.0.0.3")  # a VM whose address loopback can stand for
        assert as_register(rig.port, "127.0.0.3", source="127.0.0.3") == (OK, -1)
    finally:
        close(rig)
