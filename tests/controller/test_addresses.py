"""VMs' addresses through the controller: sim agents report their VMs' NICs
in heartbeats (the sim driver hands out documentation-range addresses), the
controller keeps them per VM (migration 0006), writing only when they
change, and shows them in its API, the CLI and /metrics."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import Engine, event, inspect
from typer.testing import CliRunner

from pinfold.agent.drivers import SimDriver
from pinfold.cli import app
from pinfold.controller.database import WRITE, alembic_config, upgrade
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.store import ControllerStore, ReportedNIC
from pinfold.model.vm import VMRequest
from tests.controller.cluster import ADMIN, ADMIN_AUTH, LocalCluster
from tests.controller.test_nics import cluster  # noqa: F401  (a fixture: h1, a sim agent with network lab)

DOCUMENTATION = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def reported(local: LocalCluster, name: str) -> dict[str, Any]:
    """VM `name` as the controller shows it once its agent reported an address."""
    local.wait(lambda: bool(local.http.get(f"/api/v1/vms/{name}").json()["addresses"]), f"{name}'s address")
    shown: dict[str, Any] = local.http.get(f"/api/v1/vms/{name}").json()
    return shown


def test_a_vms_address_reaches_the_api_cli_and_metrics_through_heartbeats(cluster):  # noqa: F811
    body = {"name": "web", "vcpus": 1, "memory_mib": 256, "nics": [{"network": "lab"}]}
    assert cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 201
    shown = reported(cluster, "web")
    on_agent = cluster.hosts["h1"].agent.find("web")
    assert on_agent is not None
    (nic,) = shown["nics"]
    assert (nic["network"], nic["bridge"], nic["mac"]) == (
        "lab",
        None,
        on_agent.nics[0].mac,
    )  # the agent's MAC
    (address,) = nic["addresses"]
    assert any(ipaddress.ip_address(address) in net for net in DOCUMENTATION)  # simulated, said so
    assert shown["addresses"] == [address]
    listed = {vm["name"]: vm for vm in cluster.http.get("/api/v1/vms").json()}
    assert listed["web"]["addresses"] == [address]

    env = {"PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": ADMIN, "COLUMNS": "250"}
    table = CliRunner().invoke(app, ["vm", "list"], env=env)
    assert table.exit_code == 0, table.output
    assert "address" in table.output.splitlines()[1]
    (row,) = [line for line in table.output.splitlines() if "web" in line]
    assert address in row
    details = CliRunner().invoke(app, ["vm", "show", "web"], env=env)
    assert details.exit_code == 0, details.output
    assert on_agent.nics[0].mac in details.output, details.output
    (nic_row,) = [line for line in details.output.splitlines() if on_agent.nics[0].mac in line]
    assert address in nic_row

    metrics = cluster.http.get("/metrics").text
    series = (
        f'pinfold_vm_address_info{{address="{address}",host="h1",mac="{on_agent.nics[0].mac}",vm="web"}} 1.0'
    )
    assert series in metrics
    # /metrics is open to all: an anonymous scrape gets the counts, not the VMs' names and addresses
    anonymous = httpx.get(cluster.url + "/metrics").text
    assert "pinfold_controller_vms" in anonymous
    assert address not in anonymous
    assert "pinfold_vm_address_info{" not in anonymous


@pytest.fixture
def quiet(tmp_path, database_url, i7) -> Iterator[LocalCluster]:
    """A cluster whose agent beats only when the test says (its period: an hour)."""
    local = LocalCluster(tmp_path, database_url, i7)
    local.add_host("h1", driver=SimDriver(networks=["lab"]), period_s=3600)
    yield local
    local.close()


def test_heartbeats_write_a_vms_nics_only_when_they_change(quiet):
    engine = quiet.controller.store.engine
    writes: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if re.match(r"\s*UPDATE vms SET reported_nics", statement):
            writes.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    body = {"name": "web", "vcpus": 1, "memory_mib": 256, "nics": [{"network": "lab"}]}
    assert quiet.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 201
    registrar = quiet.hosts["h1"].registrar
    registrar.beat()
    assert quiet.http.get("/api/v1/vms/web").json()["addresses"]
    written = len(writes)
    assert written == 1
    for _ in range(5):
        registrar.beat()
    assert registrar.last_error is None
    assert len(writes) == written  # five beats, nothing changed: no write
    agent = quiet.hosts["h1"].agent
    agent.suspend("web")  # a paused sim guest has no address: one write, then none
    for _ in range(3):
        registrar.beat()
    assert len(writes) == written + 1
    assert quiet.http.get("/api/v1/vms/web").json()["addresses"] == []
    agent.resume("web")  # its address again: one write
    for _ in range(3):
        registrar.beat()
    assert len(writes) == written + 2
    assert quiet.http.get("/api/v1/vms/web").json()["addresses"]
    event.remove(engine, "before_cursor_execute", count)


def test_vm_list_shows_a_dash_for_a_vm_without_an_address(cluster):  # noqa: F811
    body = {"name": "bare", "vcpus": 1, "memory_mib": 256}
    assert cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 201
    assert cluster.http.get("/api/v1/vms/bare").json()["addresses"] == []
    env = {"PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": ADMIN, "COLUMNS": "250"}
    table = CliRunner().invoke(app, ["vm", "list"], env=env)
    (row,) = [line for line in table.output.splitlines() if "bare" in line]
    assert re.search(r"│\s+-\s+│\s*$", row), row  # the last column: no address


def test_migration_0006_adds_reported_nics_and_its_downgrade_keeps_the_vms(
    engine: Engine, i7_topology: dict[str, Any]
) -> None:
    store = ControllerStore(engine)
    store.register_host("h1", "http://h1:8099", i7_topology, 6, 0, 1000.0, 10.0)
    store.reserve(VMRequest("v1", 1, 512), "h1", Feasibility(), 1000.0)
    nic = ReportedNIC("lab", None, "52:54:00:00:00:01", ("192.0.2.7",))
    store.set_reported_nics("h1", {"v1": (nic,)})
    assert store.vms("h1")[0].reported_nics == (nic,)
    with engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with connection.begin():
            command.downgrade(alembic_config(connection), "0005")
    assert "reported_nics" not in {c["name"] for c in inspect(engine).get_columns("vms")}
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT name, host_id FROM vms").all() == [("v1", "h1")]
    upgrade(engine)
    (vm,) = ControllerStore(engine).vms("h1")
    assert (vm.name, vm.reported_nics) == ("v1", None)  # not reported yet: the next heartbeat tells
