"""Heartbeats through the controller's API, served on loopback with no agent
behind it: a malformed one is refused whole (422), before anything of it is
stored."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pinfold.controller.agents import AgentClient
from pinfold.controller.api import create_app
from pinfold.controller.credentials import Enrolment, digest
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore, HostRecord, NewVM
from tests.controller.cluster import ADMIN, AGENT
from tests.servers import serving

#: h1's own credential, which its heartbeats present
CREDENTIAL = "h1-credential-0123456789abcdef"
AGENT_AUTH = {"Authorization": f"Bearer {CREDENTIAL}"}
GOOD = {
    "vms": {"v1": "running"},
    "vnodes": {"2.0": [0, 1]},
    "usage": {
        "cpu": {"0": 0.5, "1": 0.25},
        "vnodes": {"2.0": {"cpus": 2, "used_cores": 0.75}},
        "host_cpu": 0.1,
    },
}


def no_agents(host: HostRecord) -> AgentClient:
    raise AssertionError(f"no agent call expected, not to {host.id}")


@pytest.fixture
def api(store: ControllerStore, i7_topology: dict[str, Any]) -> Iterator[httpx.Client]:
    """The API of a controller with one host, h1, and a VM reserved on it."""
    controller = Controller(store, no_agents, heartbeat_period_s=10.0)
    controller.register("h1", "http://h1:8099", i7_topology, 6, 0, proof=Enrolment(digest(CREDENTIAL)))
    store.reserve(NewVM("v1", 1, 512, 2.0), "h1", Feasibility(), controller.clock())
    with serving(create_app(controller, ADMIN, AGENT)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param({"vnodes": []}, id="vnodes-a-list"),
        pytest.param({"vnodes": {"2.0": {"used_cores": "x"}}}, id="used-cores-not-a-number"),
        pytest.param({"vnodes": {"2.0": [1, 2]}}, id="a-vnode-not-an-object"),
        pytest.param({"cpu": {"0": "busy"}}, id="cpu-share-not-a-number"),
        pytest.param({"cpu": [0.5]}, id="cpu-a-list"),
        pytest.param({"vnodes": {"2.0": {"used_cores": -1}}}, id="negative-cores"),
    ],
)
def test_a_malformed_heartbeat_is_refused_and_changes_nothing(
    api: httpx.Client, store: ControllerStore, usage: dict[str, Any]
) -> None:
    before = store.host("h1")
    history = api.get("/api/v1/hosts/h1/history", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    response = api.post("/api/v1/hosts/h1/heartbeat", json={**GOOD, "usage": usage}, headers=AGENT_AUTH)
    assert response.status_code == 422, response.text
    after = store.host("h1")
    assert after is not None
    assert before is not None
    assert (after.last_heartbeat, after.heartbeat) == (before.last_heartbeat, before.heartbeat)
    assert [vm.state.value for vm in store.vms("h1")] == ["reserved"]
    again = api.get("/api/v1/hosts/h1/history", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert again["samples"] == history["samples"]


def test_a_well_formed_heartbeat_is_stored_and_sampled(api: httpx.Client) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert api.post("/api/v1/hosts/h1/heartbeat", json=GOOD, headers=AGENT_AUTH).status_code == 200
    assert api.get("/api/v1/hosts/h1", headers=admin).json()["usage"]["host_cpu"] == 0.1
    samples = api.get("/api/v1/hosts/h1/history", headers=admin).json()["samples"]
    assert [(s["sizes"], s["used"]) for s in samples] == [({"2.0": 2}, {"2.0": 0.75})]
    cpus = api.get("/api/v1/hosts/h1/cpus", headers=admin).json()["cpus"]
    assert [c["busy"] for c in cpus[:2]] == [0.5, 0.25]
