"""Lifecycle actions through the controller, on a real cluster (a sim agent on
loopback): an action a VM's state forbids is 409 "invalid" naming the state,
whether the controller, the agent or the hypervisor knows it; never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pinfold.controller.service import ACTIONS
from pinfold.controller.settle import vm_state
from pinfold.model import lifecycle
from pinfold.model.lifecycle import AGENT_STATES, CONTROLLER_STATES, VMState
from pinfold.topology import Topology
from tests.controller.cluster import Host, LocalCluster

#: (action, status, state after): every action in each of running, paused and shutoff
WALK = [
    ("start", 409, "running"),
    ("resume", 409, "running"),
    ("suspend", 200, "paused"),
    ("suspend", 409, "paused"),
    ("start", 409, "paused"),
    ("resume", 200, "running"),
    ("shutdown", 200, "shutoff"),
    ("shutdown", 409, "shutoff"),
    ("suspend", 409, "shutoff"),
    ("resume", 409, "shutoff"),
    ("start", 200, "running"),
]


@pytest.fixture
def cluster(tmp_path: Path, i7: Topology) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    yield local
    local.close()


@pytest.fixture
def host(cluster: LocalCluster) -> Host:
    """h1, with the VM v running on it."""
    added = cluster.add_host("h1")
    created = cluster.http.post("/api/v1/vms", json={"name": "v", "vcpus": 1, "memory_mib": 256})
    assert created.status_code == 201, created.text
    return added


def test_each_action_in_each_state_is_done_or_refused_as_invalid(cluster: LocalCluster, host: Host) -> None:
    for action, status, state in WALK:
        response = cluster.http.post(f"/api/v1/vms/v/{action}")
        assert response.status_code == status, (action, response.text)
        if status == 409:
            assert response.json()["error"] == "invalid", (action, response.text)
        assert cluster.http.get("/api/v1/vms/v").json()["state"] == state, action


@pytest.mark.parametrize("action", ACTIONS)
def test_an_action_on_a_vm_its_agent_does_not_report_is_invalid(
    cluster: LocalCluster, host: Host, action: str
) -> None:
    host.agent.delete("v")  # behind the controller's back: its heartbeats no longer list v
    cluster.wait(lambda: cluster.http.get("/api/v1/vms/v").json()["state"] == "missing", "v to be missing")
    response = cluster.http.post(f"/api/v1/vms/v/{action}")
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "invalid"
    assert "v is missing" in response.json()["detail"]


@pytest.mark.parametrize("action", ACTIONS)
def test_an_action_on_a_vm_whose_domain_has_gone_is_invalid(
    cluster: LocalCluster, host: Host, action: str
) -> None:
    """The hypervisor lost the domain (the agent has not looked since): the
    agent finds out on the action, marks the VM missing and says so."""
    host.agent.driver.delete(host.agent.vms["v"].domain)
    response = cluster.http.post(f"/api/v1/vms/v/{action}")
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "invalid"
    assert "v is missing" in response.json()["detail"]
    assert host.agent.vms["v"].state == "missing"
    again = cluster.http.post(f"/api/v1/vms/v/{action}")
    assert again.status_code == 409, again.text
    assert cluster.http.delete("/api/v1/vms/v").status_code == 204


def test_the_lifecycle_table_is_served_to_admins(cluster: LocalCluster) -> None:
    """The dashboard's buttons come from the model's table, not from rules of its own."""
    served = cluster.http.get("/api/v1/lifecycle")
    assert served.status_code == 200, served.text
    assert served.json() == lifecycle.table()
    assert served.json()["paused"] == ["shutdown", "resume", "delete"]
    with httpx.Client(base_url=cluster.url) as anonymous:
        assert anonymous.get("/api/v1/lifecycle").status_code == 401


@pytest.mark.parametrize("action", ACTIONS)
def test_a_deleting_vm_is_refused_by_the_controller_without_asking_its_agent(
    cluster: LocalCluster, host: Host, action: str
) -> None:
    """`deleting` allows nothing but a delete in the table, whatever the agent has."""
    cluster.controller.store.set_vm_state("v", VMState.DELETING, cluster.controller.clock())
    response = cluster.http.post(f"/api/v1/vms/v/{action}")
    assert response.status_code == 409, response.text
    assert (response.json()["error"], response.json()["detail"]) == ("invalid", "v is deleting")
    assert host.agent.vms["v"].state is VMState.RUNNING  # the agent was not asked


@pytest.mark.parametrize("reported", sorted(set(AGENT_STATES) - set(CONTROLLER_STATES)), ids=str)
def test_an_agent_only_state_in_a_report_keeps_the_controllers_record(reported: VMState) -> None:
    """The enum is shared, but the controller stores only its own states: an
    agent's `stopping` or `creating` leaves the record as it was (the CHECK on
    vms.state would refuse it)."""
    assert vm_state(reported.value, VMState.RUNNING) is VMState.RUNNING
    assert vm_state("paused", VMState.RUNNING) is VMState.PAUSED
