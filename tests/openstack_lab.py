"""The loopback OpenStack lab for the openstack driver's tests.

scripts/openstack-up (run as root by scripts/test) brings up Keystone,
Placement, Glance, neutron-server and Nova with the fake compute driver on
127.0.0.1 and prints the path of its clouds.yaml, which scripts/test exports
as PINFOLD_TEST_OPENSTACK_CLOUDS. Without it the tests that need the lab skip,
except in CI, which sets PINFOLD_REQUIRE_OPENSTACK=1 to make them fail.

tests/conftest.py imports the fixtures, so that any test can ask for
``openstack_lab``: connections as the lab's member user and its admin,
pinfold's settings and `Cloud`s for the lab, RAPID's keys for it. The lab is
shared by every test, and by any other run on the machine: what a test makes
carries its own ``prefix``, in the server's name (``name()``) or in the
``pinfold-owner`` metadata pinfold's code writes (``owner()``; ``own()`` for
an owner pinfold chose, such as a RAPID endpoint's), and the fixture deletes
every such server afterwards, in any project, and nothing else.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from keystoneauth1.exceptions import ClientException
from openstack.config.loader import OpenStackConfig
from openstack.connection import Connection
from openstack.exceptions import SDKException

from pinfold.openstack.cloud import OWNER_KEY, Cloud
from pinfold.openstack.settings import CloudSettings

CLOUDS = os.environ.get("PINFOLD_TEST_OPENSTACK_CLOUDS", "")
REQUIRE_OPENSTACK = os.environ.get("PINFOLD_REQUIRE_OPENSTACK") == "1"

# What scripts/openstack/bootstrap.py makes in the lab.
USER_CLOUD = "pinfold-lab"  # pinfold's project, a member
ADMIN_CLOUD = "pinfold-lab-admin"
FLAVORS = {"lab.tiny": (1, 128, 1), "lab.small": (2, 512, 2), "lab.medium": (4, 2048, 10)}
DEDICATED_FLAVOR = "lab.dedicated"  # 2 vCPUs, 512 MiB, 2 GB, hw:cpu_policy=dedicated
NO_HOST_FLAVOR = "lab.nohost"  # 700000 GB of disk: no host fits, within every quota
IMAGE = "lab-image"
HELPER_IMAGE = "lab-helper-image"
NETWORK = "lab-net"  # subnet lab-subnet, 10.99.0.0/24, routed nowhere
CIDR = "10.99.0.0/24"
# Create to ACTIVE takes 6-13 s on the fake driver; deletes about 1 s.
SERVER_TIMEOUT_S = 120


def openstack_or_skip(reason: str) -> None:
    if REQUIRE_OPENSTACK:
        pytest.fail(f"{reason} (PINFOLD_REQUIRE_OPENSTACK=1)")
    pytest.skip(reason)


def clouds_file() -> Path:
    """The lab's clouds.yaml, or a skip (a failure in CI) naming what is missing."""
    if not CLOUDS:
        openstack_or_skip("PINFOLD_TEST_OPENSTACK_CLOUDS is not set: run scripts/openstack-up as root")
    path = Path(CLOUDS)
    if not path.is_file():
        openstack_or_skip(f"PINFOLD_TEST_OPENSTACK_CLOUDS names no file: {path}")
    return path


def connect(clouds: Path, cloud: str, **overrides: Any) -> Connection:
    """A Connection to one cloud of ``clouds``, whatever OS_* variables or
    ~/.config/openstack files the machine has."""
    loader = OpenStackConfig(config_files=[str(clouds)], load_envvars=False)
    region = loader.get_one(cloud=cloud, **overrides)
    return Connection(config=region)


@dataclass
class OpenStackLab:
    """Connections to the lab and the prefix of what this test makes."""

    clouds: Path
    user: Connection
    admin: Connection
    prefix: str
    owners: set[str] = field(default_factory=set)  # owners of no prefix this test's cleanup takes too

    def name(self, suffix: str = "") -> str:
        """A server name that this test's cleanup will find."""
        return f"{self.prefix}{suffix or uuid.uuid4().hex[:6]}"

    def owner(self) -> str:
        """An owner (the `pinfold-owner` metadata) whose servers this test's cleanup will find."""
        return self.name(f"owner-{uuid.uuid4().hex[:6]}")

    def own(self, owner: str) -> str:
        """Have this test's cleanup take the servers of `owner` too (one pinfold named itself)."""
        self.owners.add(owner)
        return owner

    def settings(self, **changes: Any) -> CloudSettings:
        """pinfold's settings for the lab's member user (`changes` for another cloud, network, ...)."""
        values: dict[str, Any] = {"cloud": USER_CLOUD, "clouds_yaml": self.clouds, "network": NETWORK}
        return CloudSettings(**(values | changes))

    def cloud(self, **changes: Any) -> Cloud:
        """A `Cloud` of the member user, as an owner of this test's own."""
        return Cloud.connect(self.settings(**changes), self.owner())

    def rapid_keys(self) -> dict[str, str]:
        """RAPID's OpenStack keys (configuration.xml) for the lab's member user: ids, as RAPID took them."""
        auth = self.user.config.config["auth"]
        return {
            "authAddress": auth["auth_url"],
            "openStackUserId": str(self.user.current_user_id),
            "openStackPasswd": auth["password"],
            "projectId1": str(self.user.current_project_id),
            "projectId2": "default",
            "networkId": str(self.user.network.find_network(NETWORK, ignore_missing=False).id),
            "offloadingSecurity": "default",
            "linuxNormalVmImageId": IMAGE,
            "androidNormalVmImageId": HELPER_IMAGE,  # the lab has two images: osType 1 takes this
            "androidHelperVmImageId": HELPER_IMAGE,
        }

    def create_server(self, name: str | None = None, flavor: str = "lab.tiny", **attrs: Any) -> Any:
        """A server of the lab's image on its network, as pinfold's user (not waited for)."""
        return self.user.compute.create_server(
            name=name or self.name(),
            flavor_id=self.user.compute.find_flavor(flavor, ignore_missing=False).id,
            image_id=self.user.image.find_image(IMAGE, ignore_missing=False).id,
            networks=[{"uuid": self.user.network.find_network(NETWORK, ignore_missing=False).id}],
            **attrs,
        )

    @contextmanager
    def image(self, **attrs: Any) -> Iterator[str]:
        """A private image of the member's project (the lab images' 4 KiB of zeros, raw) with
        `attrs` (min_ram, min_disk), its id; deleted after (its servers first, by the caller)."""
        image = self.user.image.create_image(
            name=self.name("image"), data=bytes(4096), disk_format="raw", container_format="bare",
            visibility="private", wait=True, **attrs,
        )  # fmt: skip
        try:
            yield str(image.id)
        finally:
            self.delete_servers()
            self.user.image.delete_image(str(image.id), ignore_missing=True)

    def servers(self) -> list[Any]:
        """Every server of any project that this test made: its name or owner carries
        this test's prefix, or its owner is one of `owners`."""
        return [server for server in self.admin.compute.servers(all_projects=True) if self._made(server)]

    def _made(self, server: Any) -> bool:
        owner = (server.metadata or {}).get(OWNER_KEY, "")
        return bool(
            server.name.startswith(self.prefix) or owner.startswith(self.prefix) or owner in self.owners
        )

    def delete_servers(self) -> None:
        """Delete this test's servers and wait until Nova has forgotten them."""
        servers = self.servers()
        for server in servers:
            self.admin.compute.delete_server(server, ignore_missing=True)
        for server in servers:
            self.admin.compute.wait_for_delete(server, interval=0.5, wait=SERVER_TIMEOUT_S)


@pytest.fixture(scope="session")
def openstack_connections() -> Iterator[tuple[Path, Connection, Connection]]:
    """One pair of logged-in connections for the whole session: each login
    costs Keystone most of a second."""
    clouds = clouds_file()
    user = connect(clouds, USER_CLOUD)
    admin = connect(clouds, ADMIN_CLOUD)
    try:
        user.authorize()
        admin.authorize()
    except (SDKException, ClientException) as exc:
        openstack_or_skip(f"the OpenStack lab of {clouds} does not answer (scripts/openstack-up): {exc}")
    yield clouds, user, admin
    user.close()
    admin.close()


@pytest.fixture
def openstack_lab(openstack_connections: tuple[Path, Connection, Connection]) -> Iterator[OpenStackLab]:
    """The lab, with every server this test named with its prefix deleted after it."""
    clouds, user, admin = openstack_connections
    lab = OpenStackLab(clouds, user, admin, prefix=f"pt-{uuid.uuid4().hex[:8]}-")
    try:
        yield lab
    finally:
        lab.delete_servers()
