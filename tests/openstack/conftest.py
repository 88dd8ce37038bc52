"""The OpenStack lab fixture (tests/openstack/lab.py says what it is)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.openstack.lab import CLOUDS_ENV, MEMBER, REQUIRE, Lab


def _refuse(why: str) -> None:
    if REQUIRE:
        pytest.fail(f"the OpenStack lab is required (PINFOLD_REQUIRE_OPENSTACK=1): {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def openstack_lab() -> Lab:
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
