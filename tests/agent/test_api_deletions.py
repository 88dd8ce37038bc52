"""The agent's batch of deletes (issue 16): POST /api/v1/vm-deletions carries
the deletes a controller does together on one host in one request, answers
each as its single delete would have, and commits twice for all of them; and
the controller's client of it, which asks an agent without the route once
per VM.

A real uvicorn server on loopback in front of a sim-driver agent."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException

from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Pending, Store
from pinfold.controller.agents import AgentClient, AgentRefusedError
from pinfold.web import install_error_handlers
from tests.agent.test_api import AUTH, TOKEN, serving
from tests.agent.test_api_batches import counted_transactions
from tests.servers import serving as serving_app

#: name, vCPUs, level: on the i7's 8 CPUs, three vNodes whose VMs move when others go
SIZES = [("A", 2, 1.0), ("B", 1, 2.0), ("C", 1, 2.0), ("D", 2, 1.0), ("E", 1, 3.0), ("F", 1, 2.0)]


@pytest.fixture
def agent_url(tmp_path, i7) -> Iterator[str]:
    with serving(tmp_path, i7) as url:
        yield url


def made(agent: Agent) -> Agent:
    for name, vcpus, ratio in SIZES:
        agent.create(VMRequest(name, vcpus, 512, ratio))
    return agent


def test_a_batch_of_deletes_commits_twice_and_leaves_what_one_by_one_deletes_leave(tmp_path, i7, monkeypatch):
    """Agent.delete_many: all marked in one commit, all forgotten in another
    (one by one: two commits a VM); an unknown name, a name twice and a VM
    being migrated away each refused as a lone delete would be; the VMs left
    on the CPUs one-by-one deletes leave them on, their domains too, and a
    restart finds the same."""
    singles = made(Agent.open(i7, SimDriver(), Store(tmp_path / "s.db"), AgentSettings(domain_type="qemu")))
    for name in ("A", "C", "E"):
        singles.delete(name)
    expected = singles.snapshot().pins
    singles.close()

    driver = SimDriver()
    agent = made(Agent.open(i7, driver, Store(tmp_path / "b.db"), AgentSettings(domain_type="qemu")))
    agent._set("F", agent.vms["F"].state, Pending.MIGRATE_OUT)  # as a live migration away marks it
    with counted_transactions(monkeypatch) as commits:
        outcomes = agent.delete_many(["A", "ghost", "C", "A", "F", "E"])
    codes = [o.code if isinstance(o, AgentError) else o for o in outcomes]
    assert codes == [None, "unknown vm", None, "unknown vm", "invalid", None]
    assert commits == [2]
    agent._set("F", agent.vms["F"].state, None)  # the migration ended where it began
    assert agent.snapshot().pins == expected
    assert {g.name: g.spec.cpuset for g in driver.guests() if g.spec} == {
        name: frozenset(pins) for name, pins in expected.items()
    }
    agent.close()
    again = Agent.open(i7, driver, Store(tmp_path / "b.db"), AgentSettings(domain_type="qemu"))
    try:
        assert again.snapshot().pins == expected
    finally:
        again.close()


def test_a_batch_answers_each_delete_as_its_single_delete_would(agent_url):
    with httpx.Client(base_url=agent_url, timeout=10, headers=AUTH) as http:
        for name in ("A", "B"):
            assert (
                http.post("/api/v1/vms", json={"name": name, "vcpus": 1, "memory_mib": 64}).status_code == 201
            )
        response = http.post("/api/v1/vm-deletions", json={"names": ["A", "ghost", "B"]})
        assert response.status_code == 200, response.text
        a, ghost, b = response.json()["vms"]
        assert a == {"name": "A", "status": 204}
        assert (ghost["name"], ghost["error"], ghost["status"]) == ("ghost", "unknown vm", 404)
        assert b == {"name": "B", "status": 204}
        assert http.get("/api/v1/vms").json() == []
        single = http.delete("/api/v1/vms/ghost")
        assert (single.status_code, single.json()["error"]) == (404, ghost["error"])


@pytest.mark.parametrize(
    "body", [{"names": []}, {"names": ["ok", "not ok"]}, {"names": [1]}, {"vms": ["ok"]}, ["ok"]]
)
def test_a_bad_batch_of_deletes_is_refused_whole_and_deletes_nothing(agent_url, body):
    with httpx.Client(base_url=agent_url, timeout=10, headers=AUTH) as http:
        assert http.post("/api/v1/vms", json={"name": "ok", "vcpus": 1, "memory_mib": 64}).status_code == 201
        response = http.post("/api/v1/vm-deletions", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid request"
        assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["ok"]


def test_a_batch_of_deletes_needs_the_agent_token(agent_url):
    with httpx.Client(base_url=agent_url, timeout=10, headers=AUTH) as http:
        assert http.post("/api/v1/vms", json={"name": "A", "vcpus": 1, "memory_mib": 64}).status_code == 201
        refused = httpx.post(agent_url + "/api/v1/vm-deletions", json={"names": ["A"]}, timeout=10)
        assert refused.status_code == 401
        assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["A"]


def test_the_controllers_client_reads_each_answer_of_a_batch_of_deletes(agent_url):
    with httpx.Client(base_url=agent_url, timeout=10, headers=AUTH) as http:
        assert http.post("/api/v1/vms", json={"name": "A", "vcpus": 1, "memory_mib": 64}).status_code == 201
    client = AgentClient(agent_url, TOKEN)
    try:
        assert client.delete_many(["A", "ghost"]) == [True, False]  # False: the agent had no such VM
    finally:
        client.close()


def test_an_agent_without_batches_of_deletes_is_asked_once_per_vm():
    """An older agent (no /api/v1/vm-deletions: FastAPI's 404) gets each delete alone."""
    app = FastAPI()
    install_error_handlers(app)
    asked: list[str] = []

    @app.delete("/api/v1/vms/{name}", status_code=204)
    def delete(name: str) -> None:
        asked.append(name)
        if name == "stuck":
            raise HTTPException(502, "the domain would not go")

    with serving_app(app) as url:
        client = AgentClient(url, TOKEN)
        try:
            outcomes = client.delete_many(["A", "stuck", "B"])
        finally:
            client.close()
    assert asked == ["A", "stuck", "B"]
    assert outcomes[0] is True
    assert isinstance(outcomes[1], AgentRefusedError)
    assert outcomes[1].status == 502
    assert outcomes[2] is True
