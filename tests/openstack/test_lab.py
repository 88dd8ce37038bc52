"""The loopback OpenStack lab itself, through openstacksdk alone: what the
openstack driver's tests rely on (scripts/openstack-up, tests/openstack_lab.py).

A server boots from the lab's flavor, image and network to ACTIVE with a
Neutron address, suspends and resumes, and is deleted with its port; a wrong
password is refused by Keystone; a flavor no host fits ends in "No valid host";
the fixture deletes a server a test left.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from keystoneauth1.exceptions.http import Unauthorized

from tests.openstack_lab import (
    CIDR,
    DEDICATED_FLAVOR,
    FLAVORS,
    HELPER_IMAGE,
    IMAGE,
    NETWORK,
    NO_HOST_FLAVOR,
    SERVER_TIMEOUT_S,
    USER_CLOUD,
    OpenStackLab,
    connect,
)


def wait_status(lab: OpenStackLab, server: Any, status: str) -> Any:
    return lab.user.compute.wait_for_server(server, status=status, interval=0.5, wait=SERVER_TIMEOUT_S)


def test_a_server_boots_suspends_resumes_and_goes_with_its_port(openstack_lab: OpenStackLab) -> None:
    lab = openstack_lab
    server = wait_status(lab, lab.create_server(), "ACTIVE")

    ports = list(lab.user.network.ports(device_id=server.id))
    assert len(ports) == 1
    address = ports[0].fixed_ips[0]["ip_address"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(CIDR)
    assert [a["addr"] for a in server.addresses[NETWORK]] == [address]

    # The fake driver leaves power_state RUNNING when it suspends: the status tells.
    lab.user.compute.suspend_server(server)
    assert wait_status(lab, server, "SUSPENDED").status == "SUSPENDED"
    lab.user.compute.resume_server(server)
    assert wait_status(lab, server, "ACTIVE").status == "ACTIVE"

    lab.user.compute.delete_server(server)
    lab.user.compute.wait_for_delete(server, interval=0.5, wait=SERVER_TIMEOUT_S)
    assert lab.user.compute.find_server(server.id) is None
    assert list(lab.user.network.ports(device_id=server.id)) == []


def test_a_wrong_password_is_refused_by_keystone(openstack_lab: OpenStackLab) -> None:
    # openstacksdk lets keystoneauth's own exception through: the driver translates that one.
    intruder = connect(openstack_lab.clouds, USER_CLOUD, auth={"password": "not-the-password"})
    with pytest.raises(Unauthorized) as refused:
        list(intruder.compute.flavors())
    assert refused.value.http_status == 401


def test_the_lab_has_the_flavors_images_and_network_the_tests_name(openstack_lab: OpenStackLab) -> None:
    compute = openstack_lab.user.compute
    for name, (vcpus, ram, disk) in FLAVORS.items():
        flavor = compute.find_flavor(name, ignore_missing=False)
        assert (flavor.vcpus, flavor.ram, flavor.disk) == (vcpus, ram, disk)
    dedicated = compute.find_flavor(DEDICATED_FLAVOR, ignore_missing=False)
    assert compute.fetch_flavor_extra_specs(dedicated).extra_specs == {"hw:cpu_policy": "dedicated"}
    for name in (IMAGE, HELPER_IMAGE):
        assert openstack_lab.user.image.find_image(name, ignore_missing=False).status == "active"
    network = openstack_lab.user.network.find_network(NETWORK, ignore_missing=False)
    assert [s.cidr for s in openstack_lab.user.network.subnets(network_id=network.id)] == [CIDR]
    # The compute host's inventory is in Placement (the driver reports capacity from it).
    providers = list(openstack_lab.admin.placement.resource_providers())
    assert providers
    inventories = {
        i.resource_class for i in openstack_lab.admin.placement.resource_provider_inventories(providers[0])
    }
    assert {"VCPU", "MEMORY_MB", "DISK_GB"} <= inventories


def test_the_fixture_deletes_the_servers_a_test_left(openstack_lab: OpenStackLab) -> None:
    lab = openstack_lab
    left = wait_status(lab, lab.create_server(), "ACTIVE")
    assert [s.id for s in lab.servers()] == [left.id]
    lab.delete_servers()
    assert lab.servers() == []
    assert lab.user.compute.find_server(left.id) is None


def test_a_flavor_no_host_fits_ends_in_no_valid_host(openstack_lab: OpenStackLab) -> None:
    lab = openstack_lab
    server = wait_status(lab, lab.create_server(flavor=NO_HOST_FLAVOR), "ERROR")
    assert "No valid host" in lab.admin.compute.get_server(server.id).fault["message"]
    # No port is left behind for a server that never landed.
    assert list(lab.user.network.ports(device_id=server.id)) == []
