"""`Cloud` against the real minimal OpenStack (tests/openstack_lab.py): a
server's whole lifecycle with its address from its Neutron port, the flavor
choice over the lab's real flavors, refusals translated with nothing left
behind (no valid host for a flavor no host can take; a quota of 0 in a
project of the test's own), and bad credentials. Every server a test makes
is of an owner of the test's own, deleted by the lab's fixture also when the
test fails; waits are polls to a deadline."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator
from typing import Any

import openstack.connection
import pytest

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.openstack.cloud import NAME_KEY, OWNER_KEY, Cloud
from pinfold.openstack.flavors import choose_flavor, level_trait
from pinfold.openstack.settings import CloudSettings
from tests.openstack_lab import ADMIN_CLOUD, REQUIRE_OPENSTACK, OpenStackLab


@pytest.fixture
def cloud(openstack_lab: OpenStackLab) -> Iterator[Cloud]:
    """A Cloud of an owner of the test's own (the lab's fixture deletes its servers whatever happened)."""
    made = openstack_lab.cloud()
    try:
        yield made
    finally:
        made.close()


def _name() -> str:
    return f"pinfold-test-{uuid.uuid4().hex[:8]}"


def _orphan_ports(admin: openstack.connection.Connection) -> list[str]:
    """Ports Nova made for a server that no longer exists (any project)."""
    servers = {server.id for server in admin.compute.servers(all_projects=True)}
    return [
        port.id
        for port in admin.network.ports()
        if (port.device_owner or "").startswith("compute:") and port.device_id not in servers
    ]


def _ports(cloud: Cloud, server_id: str) -> list[object]:
    return list(cloud.connection.network.ports(device_id=server_id))


def test_a_servers_lifecycle(cloud: Cloud) -> None:
    flavors = cloud.flavors()
    small = choose_flavor(flavors, 1, 256, 0)
    image = next(cloud.connection.image.images()).name
    name = _name()

    made = cloud.create(name, small, image)
    assert (made.status, made.task_state, made.flavor) == ("ACTIVE", None, small.name)
    assert made.metadata[OWNER_KEY] == cloud.owner
    assert made.metadata[NAME_KEY] == name
    addresses = cloud.addresses(name)
    assert addresses
    assert ipaddress.ip_address(addresses[0]).version == 4
    assert [server.name for server in cloud.servers()] == [name]

    cloud.suspend(name)  # the fake driver keeps power state RUNNING: the status says SUSPENDED
    assert cloud.find(name).status == "SUSPENDED"  # type: ignore[union-attr]
    cloud.resume(name)
    cloud.stop(name)
    assert cloud.find(name).status == "SHUTOFF"  # type: ignore[union-attr]
    cloud.start(name)

    with pytest.raises(PinfoldError) as caught:
        cloud.create(name, small, image)
    assert caught.value.code is ErrorCode.DUPLICATE_NAME
    with pytest.raises(PinfoldError) as caught:
        cloud.resume(name)  # running: Nova refuses with 409
    assert caught.value.code is ErrorCode.INVALID

    cloud.delete(name)
    assert cloud.find(name) is None
    assert _ports(cloud, made.id) == []
    with pytest.raises(PinfoldError) as caught:
        cloud.delete(name)
    assert caught.value.code is ErrorCode.UNKNOWN_VM


@pytest.fixture
def levelled_flavor(openstack_lab: OpenStackLab) -> Iterator[str]:
    """A public flavor of a level no host of the lab offers (its trait, required,
    is on no resource provider: Placement has no candidate), within every
    quota; deleted after."""
    admin = openstack_lab.admin
    huge = admin.compute.create_flavor(name=_name(), vcpus=1, ram=128, disk=2, is_public=True)
    admin.compute.create_flavor_extra_specs(huge, {f"trait:{level_trait(9)}": "required"})
    try:
        yield huge.id
    finally:
        admin.compute.delete_flavor(huge, ignore_missing=True)


def test_a_resize_and_its_confirm_and_revert(cloud: Cloud) -> None:
    """Needs Nova's allow_resize_to_same_host on the lab's one compute host:
    without it every resize is no valid host, and the test says so."""
    flavors = cloud.flavors()
    small = choose_flavor(flavors, 1, 256, 0)
    bigger = choose_flavor(flavors, small.vcpus + 1, small.memory_mib, small.disk_gb)
    name = _name()
    cloud.create(name, small, next(cloud.connection.image.images()).name)
    try:
        cloud.resize(name, bigger)
    except PinfoldError as error:
        if error.code is ErrorCode.NO_VALID_HOST and not REQUIRE_OPENSTACK:
            pytest.skip(f"the lab cannot resize on its one host (allow_resize_to_same_host): {error}")
        raise
    assert cloud.find(name).status == "VERIFY_RESIZE"  # type: ignore[union-attr]
    cloud.confirm_resize(name)
    resized = cloud.find(name)
    assert resized is not None
    assert (resized.status, resized.flavor, resized.vcpus) == ("ACTIVE", bigger.name, bigger.vcpus)
    cloud.resize(name, small)
    cloud.revert_resize(name)
    assert cloud.find(name).flavor == bigger.name  # type: ignore[union-attr]


def test_a_resize_no_host_can_take_is_no_valid_host_and_the_server_stays(
    cloud: Cloud, levelled_flavor: str
) -> None:
    flavors = cloud.flavors()
    name = _name()
    cloud.create(name, choose_flavor(flavors, 1, 256, 0), next(cloud.connection.image.images()).name)
    with pytest.raises(PinfoldError) as caught:
        cloud.resize(name, next(flavor for flavor in flavors if flavor.id == levelled_flavor))
    assert caught.value.code is ErrorCode.NO_VALID_HOST
    assert "conductor_migrate_server" in caught.value.detail
    after = cloud.find(name)
    assert after is not None
    assert (after.status, after.flavor) == ("ACTIVE", choose_flavor(flavors, 1, 256, 0).name)


def test_another_owners_server_of_the_same_name_is_not_ours(
    openstack_lab: OpenStackLab, cloud: Cloud
) -> None:
    other = openstack_lab.cloud()
    try:
        flavor = choose_flavor(cloud.flavors(), 1, 256, 0)
        image = next(cloud.connection.image.images()).name
        name = _name()
        other.create(name, flavor, image, network="")
        assert cloud.find(name) is None
        assert cloud.servers() == []
        with pytest.raises(PinfoldError) as caught:
            cloud.suspend(name)
        assert caught.value.code is ErrorCode.UNKNOWN_VM
    finally:
        other.close()


def test_the_smallest_of_the_labs_flavors(cloud: Cloud) -> None:
    flavors = cloud.flavors()
    assert flavors
    for vcpus, memory in ((1, 1), (1, 1024), (2, 2048)):
        chosen = choose_flavor(flavors, vcpus, memory, 0)
        assert chosen.fits(vcpus, memory, 0)
        smaller = [
            f
            for f in flavors
            if f.fits(vcpus, memory, 0) and (f.vcpus, f.memory_mib) < (chosen.vcpus, chosen.memory_mib)
        ]
        assert smaller == []
    with pytest.raises(PinfoldError) as caught:
        cloud.create(_name(), choose_flavor(flavors, 1, 1, 0), "no-such-image-" + uuid.uuid4().hex)
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE


def test_a_flavor_no_host_can_take_is_no_valid_host_and_leaves_nothing(
    openstack_lab: OpenStackLab, cloud: Cloud, levelled_flavor: str
) -> None:
    admin = openstack_lab.admin
    flavor = next(f for f in cloud.flavors() if f.id == levelled_flavor)
    name = _name()
    with pytest.raises(PinfoldError) as caught:
        cloud.create(name, flavor, next(cloud.connection.image.images()).name)
    assert caught.value.code is ErrorCode.NO_VALID_HOST
    assert "No valid host" in caught.value.detail
    assert caught.value.code.status == 409
    assert cloud.find(name) is None
    assert [server.id for server in admin.compute.servers(all_projects=True) if server.name == name] == []
    assert _orphan_ports(admin) == []


def test_a_quota_of_zero_is_quota_exceeded_and_leaves_nothing(openstack_lab: OpenStackLab) -> None:
    """In a project of the test's own (the shared project's quota is left
    alone), the member user given the member role there."""
    admin = openstack_lab.admin
    member = openstack_lab.user
    identity: Any = admin.identity  # Keystone v3 (openstacksdk types it v2 or v3)
    project = identity.create_project(name=_name(), domain_id="default")
    try:
        identity.assign_project_role_to_user(project, member.current_user_id, identity.find_role("member"))
        admin.compute.update_quota_set(project.id, instances=0)
        auth = member.config.config["auth"]
        settings = CloudSettings(
            auth_url=auth["auth_url"], username=auth["username"], password=auth["password"],
            project_id=project.id, domain_name="Default",
        )  # fmt: skip
        cloud = Cloud.connect(settings, openstack_lab.owner())
        try:
            name = _name()
            with pytest.raises(PinfoldError) as caught:
                cloud.create(name, choose_flavor(cloud.flavors(), 1, 1, 0), next(admin.image.images()).id)
            assert caught.value.code is ErrorCode.QUOTA_EXCEEDED
            assert "Quota exceeded" in caught.value.detail
            assert list(admin.compute.servers(all_projects=True, project_id=project.id)) == []
            assert list(admin.network.ports(project_id=project.id)) == []
        finally:
            cloud.close()
    finally:
        admin.compute.revert_quota_set(project.id)
        identity.delete_project(project)


def test_bad_credentials_are_an_auth_failure(openstack_lab: OpenStackLab) -> None:
    auth = openstack_lab.user.config.config["auth"]
    bad = CloudSettings(
        auth_url=auth["auth_url"],
        username=auth["username"],
        password="wrong",
        project_name=auth["project_name"],
        domain_name="Default",
    )
    with pytest.raises(PinfoldError) as caught:
        Cloud.connect(bad, openstack_lab.owner())
    assert caught.value.code is ErrorCode.CLOUD_AUTH_FAILED
    assert "401" in caught.value.detail
    assert "\n" not in caught.value.detail


def _change_traits(admin: openstack.connection.Connection, provider: str, trait: str, present: bool) -> None:
    """Add or remove one trait of a resource provider, keeping the others
    (Placement's PUT replaces the list; a generation another writer moved is retried)."""
    placement: Any = admin.placement
    for _ in range(10):
        now = placement.get(f"/resource_providers/{provider}/traits", microversion="1.6").json()
        traits = (set(now["traits"]) | {trait}) if present else (set(now["traits"]) - {trait})
        body = {"traits": sorted(traits), "resource_provider_generation": now["resource_provider_generation"]}
        answer = placement.put(
            f"/resource_providers/{provider}/traits", json=body, microversion="1.6", raise_exc=False
        )
        if answer.status_code != 409:
            assert answer.status_code == 200, answer.text
            return
    raise AssertionError(f"the traits of {provider} kept changing")


@pytest.fixture
def level_4(openstack_lab: OpenStackLab) -> Iterator[str]:
    """The lab's compute hosts made level 4 (their VCPU allocation ratio is 4
    already) by the trait, and a flavor of level 4 requiring it (its id); both undone after."""
    admin = openstack_lab.admin
    trait = level_trait(4)
    placement: Any = admin.placement
    placement.put(f"/traits/{trait}", microversion="1.6")
    providers = [provider.id for provider in admin.placement.resource_providers()]
    flavor = admin.compute.create_flavor(name=_name(), vcpus=1, ram=128, disk=2, is_public=True)
    try:
        admin.compute.create_flavor_extra_specs(flavor, {f"trait:{trait}": "required"})
        for provider in providers:
            _change_traits(admin, provider, trait, present=True)
        yield flavor.id
    finally:
        admin.compute.delete_flavor(flavor, ignore_missing=True)
        for provider in providers:
            _change_traits(admin, provider, trait, present=False)


def test_a_level_is_a_trait_its_flavors_require_and_placement_counts_it(
    openstack_lab: OpenStackLab, cloud: Cloud, level_4: str
) -> None:
    """docs/design.md, "Levels on OpenStack", end to end: the flavor of level 4 is
    chosen for a VM of level 4, its server lands (on the host with the trait),
    and Placement's inventories and usages, grouped, show level 4's CPUs and use."""
    flavors = cloud.flavors()
    chosen = choose_flavor(flavors, 1, 128, 0, level=4.0)
    assert chosen.id == level_4
    assert chosen.level == 4.0
    name = _name()
    cloud.create(name, chosen, next(cloud.connection.image.images()).name)
    admin = Cloud.connect(openstack_lab.settings(cloud=ADMIN_CLOUD), "pinfold-test-levels")
    try:
        levels = admin.levels()
        assert list(levels) == [4.0]  # the lab's one host, its trait saying 4 (its ratio too)
        four = levels[4.0]
        vcpu = {provider.name: provider.inventories["VCPU"] for provider in admin.providers()}
        assert four.hosts == sorted(vcpu)
        assert four.cpus == sum(inventory.usable for inventory in vcpu.values())
        assert four.vcpus == 4 * four.cpus
        assert four.vcpus_used >= 1  # this test's server at least (others may run)
    finally:
        admin.close()


def test_unknown_image_and_network_ids_are_named_and_leave_nothing(
    openstack_lab: OpenStackLab, cloud: Cloud
) -> None:
    """Ids are passed to Nova without a lookup: its refusals are the same codes."""
    flavor = choose_flavor(cloud.flavors(), 1, 1, 0)
    image = next(cloud.connection.image.images()).id
    missing = str(uuid.uuid4())
    with pytest.raises(PinfoldError) as caught:
        cloud.create(_name(), flavor, missing)
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE
    with pytest.raises(PinfoldError) as caught:
        cloud.create(_name(), flavor, image, network=missing)
    assert caught.value.code is ErrorCode.UNKNOWN_NETWORK
    assert missing in caught.value.detail
    assert cloud.servers() == []


def test_unknown_image_and_network_names_are_named_and_leave_nothing(
    openstack_lab: OpenStackLab, cloud: Cloud
) -> None:
    """Names are looked up first (openstacksdk's find_*, which raises on a miss
    once asked not to ignore it): a miss is the same codes as an unknown id."""
    flavor = choose_flavor(cloud.flavors(), 1, 1, 0)
    image = next(cloud.connection.image.images()).id
    with pytest.raises(PinfoldError) as caught:
        cloud.create(_name(), flavor, "no-such-image")
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE
    assert "no-such-image" in caught.value.detail
    with pytest.raises(PinfoldError) as caught:
        cloud.create(_name(), flavor, image, network="no-such-network")
    assert caught.value.code is ErrorCode.UNKNOWN_NETWORK
    assert cloud.servers() == []


def test_an_images_min_disk_passes_over_the_flavors_with_less_disk(
    openstack_lab: OpenStackLab, cloud: Cloud
) -> None:
    """lab.small (2 GB) is the smallest flavor for 2 vCPUs, 512 MiB; an image
    of min_disk 5 GB makes Nova refuse it with a bare 400, so the choice, told
    the image, takes lab.medium (10 GB), and the server lands."""
    flavors = cloud.flavors()
    with openstack_lab.image(min_disk=5) as image:
        small = choose_flavor(flavors, 2, 512, 0)
        assert small.name == "lab.small"
        with pytest.raises(PinfoldError) as caught:
            cloud.create(_name(), small, image)
        assert caught.value.code is ErrorCode.INVALID_REQUEST
        needs = cloud.image_needs(image)
        assert (needs.id, needs.min_disk_gb, needs.min_ram_mib) == (image, 5, 0)
        chosen = choose_flavor(flavors, 2, 512, 0, image=needs)
        assert chosen.name == "lab.medium"
        assert cloud.create(_name(), chosen, image).status == "ACTIVE"
    with pytest.raises(PinfoldError) as caught:
        cloud.image_needs(image)  # deleted
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE
