"""RAPID's `OpenStackBackend` against the real minimal OpenStack
(tests/openstack_lab.py), reached through RAPID's own keys as
configuration.xml names them: a user VM and a helper on their images and
flavors, their addresses from their ports, suspend and resume, a resize to
the flavor a VM has (nothing to do) and to one no flavor fits (refused, the
VM unchanged), the monitoring answers (vCPUs, cores from Placement or the
quota; the SLAM's per-VM queries from Nova's diagnostics for an admin, ERROR
for the member), delete, and the helper gone with it. Every server is of an owner of
the test's own, deleted by the lab's fixture also when the test fails."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from pinfold.openstack.records import Diagnostics
from pinfold.openstack.settings import from_rapid_keys
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.openstack_backend import OpenStackBackend
from pinfold.rapid.protocol import ERROR, OK, Op
from pinfold.rapid.server import RapidServer
from pinfold.rapid.state import RapidState, RapidVM, Status
from pinfold.rapid.vmm import VMM, Usage
from tests.openstack_lab import ADMIN_CLOUD, IMAGE, OpenStackLab
from tests.rapid.peers import FakeDS, FakeSLAM, as_register, no_reply, start_vm
from tests.rapid.rig import FAST, query_port


@pytest.fixture
def backend(openstack_lab: OpenStackLab) -> Iterator[OpenStackBackend]:
    made = OpenStackBackend.connect(from_rapid_keys(openstack_lab.rapid_keys()), openstack_lab.owner())
    try:
        yield made
    finally:
        made.cloud.close()


def test_rapids_vms_on_the_cloud(backend: OpenStackBackend) -> None:
    backend.create(
        VMRequest("rapid-user-7", 1, 1024, owner="rapid:7", image="/home/rapid/RAPID_VM_template.img")
    )
    backend.create(VMRequest("rapid-helper-1", 1, 1024, owner="rapid:-1"))
    assert backend.vms() == {"rapid-user-7": VMState.RUNNING, "rapid-helper-1": VMState.RUNNING}
    user = backend.cloud.find("rapid-user-7")
    helper = backend.cloud.find("rapid-helper-1")
    assert user is not None
    assert helper is not None
    images = {image.id: image.name for image in backend.cloud.connection.image.images()}
    servers = {server.name: server for server in backend.cloud.connection.compute.servers(details=True)}
    assert images[servers["rapid-user-7"].image.id] == "lab-image"  # a libvirt path means nothing here
    assert images[servers["rapid-helper-1"].image.id] == "lab-helper-image"
    # RAPID's type 1_1024_20 and the helper's 4_1024_20: the lab's smallest flavor of no level that fits
    assert (user.vcpus, user.memory_mib) == (4, 2048)
    assert backend.vcpus("rapid-helper-1") == 4
    assert backend.hypervisor_name("rapid-user-7") == user.id
    assert backend.disk_allocated_bytes("rapid-user-7") is None
    [address] = backend.addresses("rapid-user-7")
    assert ipaddress.ip_address(address).version == 4

    backend.suspend("rapid-user-7")
    assert backend.state("rapid-user-7") is VMState.PAUSED
    backend.resume("rapid-user-7")
    assert backend.state("rapid-user-7") is VMState.RUNNING

    backend.resize("rapid-user-7", 2, 2048)  # the same flavor: nothing to do (Nova refuses such a resize)
    with pytest.raises(PinfoldError) as caught:
        backend.resize("rapid-user-7", 4, 4096)
    assert caught.value.code is ErrorCode.UNKNOWN_FLAVOR
    assert backend.cloud.find("rapid-user-7").flavor == user.flavor  # type: ignore[union-attr]

    backend.delete("rapid-user-7")
    assert backend.state("rapid-user-7") is None
    assert backend.addresses("rapid-user-7") == []
    with pytest.raises(PinfoldError) as caught:
        backend.delete("rapid-user-7")
    assert caught.value.code is ErrorCode.UNKNOWN_VM
    assert backend.vms() == {"rapid-helper-1": VMState.RUNNING}


def test_cores_from_placement_or_the_quota(openstack_lab: OpenStackLab, backend: OpenStackBackend) -> None:
    """The member may not read Placement (its policy is admin's): the
    project's vCPU quota; the admin: the compute hosts' CPUs."""
    assert backend.cores() == backend.cloud.quota_cores() > 0
    admin = OpenStackBackend.connect(openstack_lab.settings(cloud=ADMIN_CLOUD), "rapid-test-admin")
    try:
        placement = admin.cloud.connection.placement
        expected = 0
        for provider in placement.resource_providers():
            for inventory in placement.resource_provider_inventories(provider):
                if inventory.resource_class in ("VCPU", "PCPU"):
                    expected += inventory.total - (inventory.reserved or 0)
        assert admin.cores() == expected > 0
    finally:
        admin.cloud.close()


def test_no_image_for_the_kind_is_refused_before_the_cloud_is_asked(openstack_lab: OpenStackLab) -> None:
    keys = openstack_lab.rapid_keys() | {"linuxNormalVmImageId": "", "androidNormalVmImageId": ""}
    backend = OpenStackBackend.connect(from_rapid_keys(keys), openstack_lab.owner())
    try:
        with pytest.raises(PinfoldError) as caught:
            backend.create(VMRequest("rapid-user-8", 1, 1024))
        assert caught.value.code is ErrorCode.UNKNOWN_IMAGE
        assert backend.vms() == {}
    finally:
        backend.cloud.close()


def test_the_slam_flow_on_the_cloud(tmp_path: Path, openstack_lab: OpenStackLab) -> None:
    """RAPID's whole flow with the VMM on OpenStack: helpers made as servers
    and their port addresses told to the DS; a SLAM start makes user 42's
    server, whose AS registers from the server's address; the AS asks for
    suspension (the server SUSPENDED), the next start resumes it, the DS
    deregisters it (the server gone). The SLAM's monitoring queries get ERROR:
    Nova refuses the member its servers' diagnostics. Every server is deleted at the end."""
    slam = FakeSLAM()
    ds = FakeDS(slam.port)
    config = RapidConfig(
        vmm_port=0,
        vmm_ip="127.0.0.1",
        ds_port=ds.port,
        openstack=openstack_lab.rapid_keys(),
        openstack_support=True,
    )
    backend = OpenStackBackend.connect(config.cloud_settings, openstack_lab.owner())
    settings = FAST.model_copy(update={"as_wait_s": 60, "ip_wait_s": 60})
    state = RapidState(tmp_path / "rapid.db")
    vmm = VMM(backend, state, config, settings, lambda: Usage(5, 1024, 0, backend.cores()), backend.vm_usage)
    server = RapidServer(vmm.handle, "127.0.0.1", 0, 4, settings.socket_timeout_s)
    server.start()
    vmm.start()
    try:
        assert vmm.registered.wait(60)
        ds.wait_for(lambda got: sum(1 for m in got if m[0] == Op.HELPER_NOTIFY_DS) == 2, timeout_s=120)
        helper_ips = {m[2] for m in ds.of(Op.HELPER_NOTIFY_DS)}
        assert helper_ips == {backend.addresses(f"rapid-helper-{n}")[0] for n in (1, 2)}

        answer: list[object] = []
        request = threading.Thread(
            target=lambda: answer.append(start_vm(server.port, 42, vcpus=1, memory_mb=1024, os_type=1))
        )
        request.start()
        ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == 42 for m in got), timeout_s=120)
        [ip] = backend.addresses("rapid-user-42")
        made = backend.cloud.connection.compute.get_server(str(backend.hypervisor_name("rapid-user-42")))
        assert backend.cloud.connection.image.get_image(made.image.id).name == "lab-helper-image"  # osType 1
        assert as_register(server.port, ip) == (OK, 42)
        request.join(timeout=60)
        assert answer == [(OK, 42, ip)]
        vmid = next(m[6] for m in ds.of(Op.VM_REGISTER_DS) if m[4] == 42)

        # the member may not read Nova's diagnostics (admin only by default): no figures, ERROR
        with pytest.raises(PinfoldError) as caught:
            backend.cloud.diagnostics("rapid-user-42")
        assert caught.value.code is ErrorCode.CLOUD_AUTH_FAILED
        asked = counted_diagnostics(backend)
        for opcode in (Op.SLAM_GET_VMCPU_VMM, Op.SLAM_GET_VMMEM_VMM, Op.SLAM_GET_VMDISK_VMM):
            assert query_port(server.port, opcode, 42) == (ERROR,)
            assert query_port(server.port, opcode, 0) == (ERROR,)
        assert len(asked) == 1  # the refusal is remembered: Nova is not asked per VM per query

        no_reply(server.port, Op.AS_RM_NOTIFY_VMM, ("long", 42), ("int", 1))
        ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 2) in got, timeout_s=60)
        assert backend.state("rapid-user-42") is VMState.PAUSED

        answer.clear()
        request = threading.Thread(
            target=lambda: answer.append(start_vm(server.port, 42, vcpus=1, memory_mb=1024))
        )
        request.start()
        ds.wait_for(lambda got: (Op.VM_NOTIFY_DS, vmid, 3) in got, timeout_s=60)
        assert backend.state("rapid-user-42") is VMState.RUNNING
        assert as_register(server.port, ip) == (OK, 42)
        request.join(timeout=60)
        assert answer == [(OK, 42, ip)]

        no_reply(server.port, Op.DS_VM_DEREGISTER_VMM, ("long", 42))
        assert backend.state("rapid-user-42") is None
        assert state.vm(42) is None
        assert set(backend.vms()) == {"rapid-helper-1", "rapid-helper-2"}
    finally:
        server.stop()
        vmm.stop()
        state.close()
        ds.stop()
        slam.stop()
        backend.cloud.close()


def test_a_server_a_crash_left_without_a_record_is_removed_at_start(
    tmp_path: Path,
    openstack_lab: OpenStackLab,
) -> None:
    """A VMM killed between making a server and recording it: the restarted
    VMM (same owner, so the same metadata) finds the server by its metadata
    and deletes it in its start-up reconcile; another owner's server stays."""
    owner = openstack_lab.owner()
    keys = openstack_lab.rapid_keys()
    config = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1", ds_port=1, openstack=keys, openstack_support=True)
    before = OpenStackBackend.connect(config.cloud_settings, owner)
    other = OpenStackBackend.connect(config.cloud_settings, f"{owner}-other")
    try:
        before.create(VMRequest("rapid-user-9", 1, 1024))
        other.create(VMRequest("rapid-user-9", 1, 1024))
        restarted = OpenStackBackend.connect(config.cloud_settings, owner)
        state = RapidState(tmp_path / "rapid.db")
        try:
            VMM(restarted, state, config, FAST, lambda: Usage(5, 1024, 0, 4)).reconcile()
        finally:
            state.close()
            restarted.cloud.close()
        assert before.vms() == {}
        assert other.vms() == {"rapid-user-9": VMState.RUNNING}
    finally:
        for backend in (before, other):
            backend.cloud.close()


def test_an_images_min_ram_is_asked_of_the_flavor_before_nova_is(openstack_lab: OpenStackLab) -> None:
    """RAPID's type 1_1024_20 gets the lab's 2048 MiB flavor, too small for an
    image of min_ram 4096 MiB, which Nova refuses with a 400 (`invalid
    request`, naming neither): no flavor fits, said before the cloud is asked."""
    with openstack_lab.image(min_ram=4096) as image:
        keys = openstack_lab.rapid_keys() | {"linuxNormalVmImageId": image}
        backend = OpenStackBackend.connect(from_rapid_keys(keys), openstack_lab.owner())
        try:
            with pytest.raises(PinfoldError) as caught:
                backend.create(VMRequest("rapid-user-11", 1, 1024))
            assert caught.value.code is ErrorCode.UNKNOWN_FLAVOR, caught.value
            assert "needs 4096 MiB" in caught.value.detail
            assert backend.vms() == {}
        finally:
            backend.cloud.close()


def test_the_slams_monitoring_from_novas_diagnostics(tmp_path: Path, openstack_lab: OpenStackLab) -> None:
    """SLAM_GET_VMCPU/VMMEM/VMDISK_VMM over RAPID's wire, the VMM on the admin
    cloud (Nova's diagnostics are admin's by default policy): the first CPU
    reading is the driver's utilisation (the fake driver's 15 %), the next a
    rate between two readings (the fake's CPU time never moves: 0 %); memory in
    use from the diagnostics beside the VM's size; disk: no API gives a
    server's allocated bytes, so no VM has both figures: ERROR, as for a user
    without a VM. (The member's answers: test_the_slam_flow_on_the_cloud.)"""
    backend = OpenStackBackend.connect(openstack_lab.settings(cloud=ADMIN_CLOUD), openstack_lab.owner())
    state = RapidState(tmp_path / "rapid.db")
    config = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1", ds_port=1, openstack_support=True)
    vmm = VMM(backend, state, config, FAST, lambda: Usage(5, 1024, 0, 4), backend.vm_usage)  # as the endpoint
    server = RapidServer(vmm.handle, "127.0.0.1", 0, 2, FAST.socket_timeout_s)
    try:
        [tiny] = [flavor for flavor in backend.cloud.flavors() if flavor.name == "lab.tiny"]
        made = backend.cloud.create("rapid-user-5", tiny, IMAGE)
        state.save(RapidVM(5, "rapid-user-5", Status.STARTED, 1, 128, vmid=77, disk_gb=1))
        server.start()
        nova = backend.cloud.connection.compute.get_server_diagnostics(made.id)
        asked = counted_diagnostics(backend)
        backend.reading_ttl_s = 600  # however slow this machine: the second query reuses the reading
        assert query_port(server.port, Op.SLAM_GET_VMCPU_VMM, 5) == (OK, ["5", "77", "15.0"])
        assert nova.cpu_details[0]["utilisation"] == 15
        assert query_port(server.port, Op.SLAM_GET_VMMEM_VMM, 0) == (OK, ["5", "77", "128", "0.0"])
        assert asked == ["rapid-user-5"]  # one reading answered both queries
        backend.reading_ttl_s = 0  # the next query reads Nova again
        assert query_port(server.port, Op.SLAM_GET_VMCPU_VMM, 0) == (OK, ["5", "77", "0.0"])
        assert query_port(server.port, Op.SLAM_GET_VMMEM_VMM, 5) == (
            OK,
            ["5", "77", "128", f"{float(nova.memory_details['used'])}"],
        )
        assert query_port(server.port, Op.SLAM_GET_VMDISK_VMM, 5) == (ERROR,)
        assert query_port(server.port, Op.SLAM_GET_VMCPU_VMM, 6) == (ERROR,)  # a user without a VM
    finally:
        server.stop()
        state.close()
        backend.cloud.close()


def counted_diagnostics(backend: OpenStackBackend) -> list[str]:
    """The names the back-end reads Nova's diagnostics of, from now on (the real calls, counted)."""
    asked: list[str] = []
    diagnostics = backend.cloud.diagnostics

    def counted(name: str) -> Diagnostics:
        asked.append(name)
        return diagnostics(name)

    backend.cloud.diagnostics = counted  # type: ignore[method-assign]
    return asked
