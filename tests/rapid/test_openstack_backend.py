"""RAPID's `OpenStackBackend` against the real minimal OpenStack
(tests/openstack/lab.py), reached through RAPID's own keys as
configuration.xml names them: a user VM and a helper on their images and
flavors, their addresses from their ports, suspend and resume, a resize to
the flavor a VM has (nothing to do) and to one no flavor fits (refused, the
VM unchanged), the monitoring answers (vCPUs, cores from Placement or the
quota), delete, and the helper gone with it. Every server is deleted, also
when the test fails."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator

import pytest

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from pinfold.openstack.settings import from_rapid_keys
from pinfold.rapid.openstack_backend import OpenStackBackend
from tests.openstack.lab import ADMIN, MEMBER, Lab, openstack_lab  # noqa: F401  (fixture)


def rapid_keys(lab: Lab) -> dict[str, str]:
    """RAPID's OpenStack keys for the lab's member user: ids, as RAPID took them."""
    member = lab.connection(MEMBER)
    try:
        member.authorize()
        auth = member.config.config["auth"]
        network = member.network.find_network(lab.network)
        assert network is not None
        return {
            "authAddress": auth["auth_url"],
            "openStackUserId": str(member.current_user_id),
            "openStackPasswd": auth["password"],
            "projectId1": str(member.current_project_id),
            "projectId2": "default",
            "networkId": str(network.id),
            "offloadingSecurity": "default",
            "linuxNormalVmImageId": "lab-image",
            "androidHelperVmImageId": "lab-helper-image",
        }
    finally:
        member.close()


@pytest.fixture
def backend(openstack_lab: Lab) -> Iterator[OpenStackBackend]:  # noqa: F811
    made = OpenStackBackend.connect(
        from_rapid_keys(rapid_keys(openstack_lab)), f"rapid-test-{uuid.uuid4().hex[:8]}"
    )
    try:
        yield made
    finally:
        for name in made.vms():
            made.delete(name)
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


def test_cores_from_placement_or_the_quota(openstack_lab: Lab, backend: OpenStackBackend) -> None:  # noqa: F811
    """The member may not read Placement (its policy is admin's): the
    project's vCPU quota; the admin: the compute hosts' CPUs."""
    assert backend.cores() == backend.cloud.quota_cores() > 0
    admin = OpenStackBackend.connect(openstack_lab.settings(cloud=ADMIN), "rapid-test-admin")
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


def test_no_image_for_the_kind_is_refused_before_the_cloud_is_asked(openstack_lab: Lab) -> None:  # noqa: F811
    keys = rapid_keys(openstack_lab) | {"linuxNormalVmImageId": ""}
    backend = OpenStackBackend.connect(from_rapid_keys(keys), f"rapid-test-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(PinfoldError) as caught:
            backend.create(VMRequest("rapid-user-8", 1, 1024))
        assert caught.value.code is ErrorCode.UNKNOWN_IMAGE
        assert backend.vms() == {}
    finally:
        backend.cloud.close()
