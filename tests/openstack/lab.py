"""The real minimal OpenStack lab (scripts/openstack-up) for the tests of
pinfold.openstack and RAPID's OpenStack back-end.

PINFOLD_TEST_OPENSTACK_CLOUDS names the lab's clouds.yaml (clouds
`pinfold-lab`, a member user, and `pinfold-lab-admin`); without it the lab
tests skip, unless PINFOLD_REQUIRE_OPENSTACK=1 (CI), which makes that a
failure. A local stand-in for the lab's own fixture (`openstack_lab` of
tests/openstack_lab.py, on the lab's branch), named apart (`cloud_lab`) so
that both can be merged as they are, and then made one.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import openstack.config
import openstack.connection
import pytest

from pinfold.openstack.cloud import Cloud
from pinfold.openstack.settings import CloudSettings

CLOUDS_ENV = "PINFOLD_TEST_OPENSTACK_CLOUDS"
REQUIRE = os.environ.get("PINFOLD_REQUIRE_OPENSTACK") == "1"
MEMBER, ADMIN = "pinfold-lab", "pinfold-lab-admin"


@dataclass
class Lab:
    clouds: Path
    network: str  # the member's network for servers (a name)

    def settings(self, **changes: object) -> CloudSettings:
        values: dict[str, object] = {"cloud": MEMBER, "clouds_yaml": self.clouds, "network": self.network}
        return CloudSettings(**(values | changes))  # type: ignore[arg-type]

    def cloud(self, owner: str = "", **changes: object) -> Cloud:
        """A Cloud of the member user, as an owner of its own (each test's servers are its own)."""
        return Cloud.connect(self.settings(**changes), owner or f"pinfold-test-{uuid.uuid4().hex[:8]}")

    def connection(self, name: str = ADMIN) -> openstack.connection.Connection:
        """A plain openstacksdk connection (the admin's by default), for what the tests set up and check."""
        loader = openstack.config.OpenStackConfig(config_files=[str(self.clouds)], load_envvars=False)
        return openstack.connection.Connection(config=loader.get_one(cloud=name))

    def rapid_keys(self) -> dict[str, str]:
        """RAPID's OpenStack keys for the lab's member user: ids, as RAPID took them."""
        member = self.connection(MEMBER)
        try:
            member.authorize()
            auth = member.config.config["auth"]
            network = member.network.find_network(self.network)
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
                "androidNormalVmImageId": "lab-helper-image",  # the lab has two images: osType 1 takes this
                "androidHelperVmImageId": "lab-helper-image",
            }
        finally:
            member.close()


def _refuse(why: str) -> None:
    if REQUIRE:
        pytest.fail(f"the OpenStack lab is required (PINFOLD_REQUIRE_OPENSTACK=1): {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def cloud_lab() -> Lab:
    path = os.environ.get(CLOUDS_ENV, "")
    if not path:
        _refuse(f"{CLOUDS_ENV} names no clouds.yaml (scripts/openstack-up makes the lab)")
    clouds = Path(path)
    if not clouds.is_file():
        _refuse(f"{CLOUDS_ENV}={path}: no such file")
    lab = Lab(clouds, "")
    try:
        member = lab.connection(MEMBER)
        member.authorize()
    except Exception as error:  # any failure to reach the lab is a skip (a failure in CI)
        _refuse(f"the lab at {clouds} does not answer: {error}")
    networks = sorted(
        member.network.networks(),
        key=lambda network: (network.project_id != member.current_project_id, network.name),
    )
    if not networks:
        _refuse("the lab's member sees no network")
    lab.network = networks[0].name
    member.close()
    return lab
