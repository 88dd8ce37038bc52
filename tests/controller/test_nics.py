"""NICs through the controller: a create's NICs reach the agent, are kept in
the directory (migration 0005) and shown; the same create is compared with
them; an agent's refusal of a NIC is the client's answer (`no host`, the agent's
reason under its host), with nothing kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine

from pinfold.agent.drivers import SimDriver
from pinfold.controller.database import WRITE, alembic_config, upgrade
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.store import ControllerStore
from pinfold.model.vm import NIC, VMRequest
from tests.controller.cluster import ADMIN_AUTH, LocalCluster


@pytest.fixture
def cluster(tmp_path, database_url, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, database_url, i7)
    local.add_host("h1", driver=SimDriver(networks=["lab"]))
    yield local
    local.close()


def test_a_creates_nics_reach_the_agent_and_are_shown(cluster):
    nics = [{"network": "lab", "mac": "02:00:00:00:00:01"}, {"network": "lab"}]
    body = {"name": "web", "vcpus": 1, "memory_mib": 256, "nics": nics}
    created = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    assert created.status_code == 201, created.text
    # as asked until the agent's heartbeat reports them (tests/controller/test_addresses.py)
    for shown in (created.json()["nics"], cluster.http.get("/api/v1/vms/web").json()["nics"]):
        assert [(n["network"], n["bridge"]) for n in shown] == [("lab", None), ("lab", None)]
        assert shown[0]["mac"] == "02:00:00:00:00:01"
    on_agent = cluster.hosts["h1"].agent.find("web")
    assert on_agent is not None
    assert on_agent.nics[0].mac == "02:00:00:00:00:01"
    assert on_agent.nics[1].mac.startswith("52:54:00:")  # chosen by the agent
    assert cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 200
    other = cluster.http.post("/api/v1/vms", json={**body, "nics": nics[:1]}, headers=ADMIN_AUTH)
    assert (other.status_code, other.json()["error"]) == (409, "duplicate name")


def test_an_agents_refusal_of_a_nic_keeps_nothing(cluster):
    body = {"name": "web", "vcpus": 1, "memory_mib": 256, "nics": [{"network": "elsewhere"}]}
    refused = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    # another host may have that network: a host whose agent refuses it is one that does not fit
    assert (refused.status_code, refused.json()["error"]) == (409, "no host"), refused.text
    assert "unknown network" in refused.json()["hosts"]["h1"]
    assert cluster.http.get("/api/v1/vms/web").status_code == 404
    assert cluster.hosts["h1"].agent.find("web") is None


def test_migration_0005_gives_existing_vms_no_nics(engine: Engine, i7_topology: dict[str, Any]) -> None:
    store = ControllerStore(engine)
    store.register_host("h1", "http://h1:8099", i7_topology, 6, 0, 1000.0, 10.0)
    store.reserve(VMRequest("v1", 1, 512, nics=(NIC(network="lab"),)), "h1", Feasibility(), 1000.0)
    with engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with connection.begin():
            command.downgrade(alembic_config(connection), "0004")
    upgrade(engine)
    (vm,) = ControllerStore(engine).vms("h1")
    assert (vm.name, vm.nics) == ("v1", ())
    store.reserve(VMRequest("v2", 1, 512, nics=(NIC(bridge="br0", mac="02:00:00:00:00:09"),)), "h1",
                  Feasibility(), 1001.0)  # fmt: skip
    assert ControllerStore(engine).vm("v2").nics == (NIC(bridge="br0", mac="02:00:00:00:00:09"),)  # type: ignore[union-attr]


def test_vm_show_prints_the_nics(cluster):
    from typer.testing import CliRunner

    from pinfold.cli import app
    from tests.controller.cluster import ADMIN

    body = {
        "name": "web",
        "vcpus": 1,
        "memory_mib": 256,
        "nics": [{"network": "lab", "mac": "02:00:00:00:00:01"}],
    }
    assert cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 201
    env = {"PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": ADMIN, "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["vm", "show", "web"], env=env)
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "02:00:00:00:00:01" in line]
    assert "lab" in row
