"""The agent's batch of creates (issue 16): POST /api/v1/vm-batches carries
a controller's bulk create for one host in one request, and answers each VM
as its single create would have; and the controller's client of it, which
asks an agent without the route once per VM.

A real uvicorn server on loopback in front of a sim-driver agent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Store, StoredVM
from pinfold.controller.agents import AgentClient, AgentRefusedError
from pinfold.model.lifecycle import VMState
from pinfold.web import install_error_handlers
from tests.agent.test_api import AUTH, TOKEN, serving
from tests.servers import serving as serving_app


@pytest.fixture
def agent_url(tmp_path, i7) -> Iterator[str]:
    with serving(tmp_path, i7) as url:
        yield url


def vm(name: str, vcpus: int = 2, **extra: Any) -> dict[str, Any]:
    return {"name": name, "vcpus": vcpus, "memory_mib": 512, **extra}


def test_a_batch_answers_each_vm_as_its_single_create_would(agent_url):
    """i7: 8 CPUs. A fits, B's name is A's, C (7 vCPUs) no longer fits after
    A, D fits: two made, two refused, each in its own words and status."""
    with httpx.Client(base_url=agent_url, timeout=10, headers=AUTH) as http:
        body = {"vms": [vm("A"), vm("A"), vm("C", 7), vm("D", 1, ratio=2.0)]}
        response = http.post("/api/v1/vm-batches", json=body)
        assert response.status_code == 200, response.text
        a, b, c, d = response.json()["vms"]
        assert (a["name"], a["state"], a["pinning"]) == ("A", "running", [0, 4])
        assert (b["error"], b["status"]) == ("duplicate name", 409)
        assert (c["error"], c["status"]) == ("not enough cpu", 409)
        assert c["refusal"]["code"] == "not enough cpu"
        assert d["name"] == "D"
        assert [v["name"] for v in http.get("/api/v1/vms").json()] == ["A", "D"]
        single = http.post("/api/v1/vms", json=vm("C", 7))
        assert (single.status_code, single.json()["error"]) == (409, c["error"])


@pytest.mark.parametrize(
    "body",
    [{"vms": []}, {"vms": [vm("ok"), vm("not ok")]}, {"vms": [vm("ok", 0)]}, {"vm": [vm("ok")]}, [vm("ok")]],
)
def test_a_bad_batch_is_refused_whole_and_makes_nothing(agent_url, body):
    with httpx.Client(base_url=agent_url, timeout=10, headers=AUTH) as http:
        response = http.post("/api/v1/vm-batches", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid request"
        assert http.get("/api/v1/vms").json() == []


def test_a_batch_needs_the_agent_token(agent_url):
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        response = http.post("/api/v1/vm-batches", json={"vms": [vm("A")]})
        assert response.status_code == 401
        assert http.get("/api/v1/vms").json() == []


def test_the_controllers_client_reads_each_answer_of_a_batch(agent_url):
    client = AgentClient(agent_url, TOKEN)
    try:
        made = client.create_many([VMRequest("A", 2, 512), VMRequest("A", 2, 512), VMRequest("C", 7, 512)])
    finally:
        client.close()
    assert isinstance(made[0], dict)
    assert made[0]["name"] == "A"
    assert isinstance(made[1], AgentRefusedError)
    assert (made[1].code, made[1].status) == ("duplicate name", 409)
    assert isinstance(made[2], AgentRefusedError)
    assert made[2].refusal is not None
    assert made[2].refusal.code.value == "not enough cpu"


def test_an_agent_without_batches_is_asked_once_per_vm():
    """An older agent (no /api/v1/vm-batches: FastAPI's 404) gets each create alone."""
    app = FastAPI()
    install_error_handlers(app)
    asked: list[str] = []

    @app.post("/api/v1/vms", status_code=201)
    def create(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(body["name"])
        return {"name": body["name"], "pinning": [0]}

    with serving_app(app) as url:
        client = AgentClient(url, TOKEN)
        try:
            made = client.create_many([VMRequest("A", 1, 64), VMRequest("B", 1, 64)])
        finally:
            client.close()
    assert asked == ["A", "B"]
    assert made == [{"name": "A", "pinning": [0]}, {"name": "B", "pinning": [0]}]


@contextmanager
def counted_transactions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The agent stores' transactions opened inside the block: `[n]` at its end."""
    count = [0]
    real = Store._transaction

    def counted(self: Store, durable: bool = True) -> Any:
        count[0] += 1
        return real(self, durable)

    monkeypatch.setattr(Store, "_transaction", counted)
    try:
        yield count
    finally:
        monkeypatch.undo()


def test_a_batch_commits_twice_and_pins_as_one_by_one_creates(tmp_path, i7, monkeypatch):
    """Agent.create_many: the VMs' placements all stored in one commit, all
    marked made in another (not two per VM made, as each single create
    commits); each VM and its neighbours end on the CPUs that one-by-one creates
    give them, the refused one (7 vCPUs, no longer fitting) leaves nothing,
    and a restart finds the same."""
    sizes = [("A", 2, 1.0), ("B", 1, 2.0), ("C", 7, 1.0), ("D", 2, 2.0), ("E", 1, 1.0), ("F", 3, 3.0)]
    requests = [VMRequest(name, vcpus, 512, ratio) for name, vcpus, ratio in sizes]
    singles = Agent.open(i7, SimDriver(), Store(tmp_path / "singles.db"), AgentSettings(domain_type="qemu"))
    expected: dict[str, Any] = {}
    for request in requests:
        try:
            expected[request.name] = singles.create(request).state
        except AgentError as error:
            expected[request.name] = error.code
    one_by_one = singles.snapshot().pins
    singles.close()

    driver = SimDriver()
    agent = Agent.open(i7, driver, Store(tmp_path / "batch.db"), AgentSettings(domain_type="qemu"))
    with counted_transactions(monkeypatch) as commits:
        made = agent.create_many(requests)
    assert commits == [2]
    answers = {
        r.name: m.state if isinstance(m, StoredVM) else m.code for r, m in zip(requests, made, strict=True)
    }
    assert answers == expected
    assert answers["C"] == "not enough cpu"
    assert agent.snapshot().pins == one_by_one
    assert {g.name: g.spec.cpuset for g in driver.guests() if g.spec} == {
        n: frozenset(p) for n, p in one_by_one.items()
    }
    agent.close()
    again = Agent.open(i7, driver, Store(tmp_path / "batch.db"), AgentSettings(domain_type="qemu"))
    try:
        assert again.snapshot().pins == one_by_one
        assert {name: vm.state for name, vm in again.snapshot().vms.items()} == dict.fromkeys(
            one_by_one, VMState.RUNNING
        )
    finally:
        again.close()


def test_a_batch_refuses_a_bad_name_and_a_taken_one_and_makes_the_rest(tmp_path, i7):
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    try:
        made = agent.create_many([VMRequest("A", 1, 64), VMRequest("not ok", 1, 64), VMRequest("A", 1, 64),
                                  VMRequest("B", 1, 64)])  # fmt: skip
        codes = [m.code if isinstance(m, AgentError) else m.spec.name for m in made]
        assert codes == ["A", "invalid request", "duplicate name", "B"]
        assert list(agent.snapshot().vms) == ["A", "B"]
    finally:
        agent.close()
