"""Shared fixtures: the real topology files of ../shared/data/topologies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pinfold.topology import Topology
from tests.openstack_lab import openstack_connections, openstack_lab  # noqa: F401  (fixtures for every test)

SHARED = Path(os.environ.get("PINFOLD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
TOPOLOGIES = SHARED / "data" / "topologies"
I7 = TOPOLOGIES / "topology_i7-1185G7.json"
EPYC = TOPOLOGIES / "topology_EPYC-7662.json"
EPYC_EXP = TOPOLOGIES / "topology_EPYC-7662-exp.json"


@pytest.fixture(scope="session")
def i7() -> Topology:
    return Topology.load(I7)


@pytest.fixture(scope="session")
def epyc() -> Topology:
    return Topology.load(EPYC)


@pytest.fixture(scope="session")
def epyc_exp() -> Topology:
    return Topology.load(EPYC_EXP)


@pytest.fixture(autouse=True)
def _cli_settings_of_the_test_only(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI reads (and `pinfold up` writes) ~/.config/pinfold/cli.toml:
    a file left there by a real `pinfold up` on the machine would point the
    tests' CLI at another controller and CA. Each test gets a path of its own,
    absent until the test writes it (a test may set its own)."""
    monkeypatch.setenv("PINFOLD_CLI_CONFIG", str(tmp_path_factory.mktemp("cli") / "cli.toml"))
