"""A VM deleted by another request while this one works on it: a DELETE of it
answers 404 "unknown vm" (as a DELETE sent just after would), and a heartbeat
settling its host's VMs skips it; neither ever answers 500.

One test races real DELETEs over HTTP against a real cluster (sim agents) on
both databases; the others make the VM vanish between the controller's read of
it and its write, every time, by deleting it from inside the store's read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinfold.controller.agents import AgentClient
from pinfold.controller.api import create_app
from pinfold.controller.credentials import Enrolment, digest
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.models import VMState
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore, HostRecord, SettledVM, VMRecord
from pinfold.model.vm import VMRequest
from pinfold.topology import Topology
from tests.controller.cluster import ADMIN, ADMIN_AUTH, AGENT, LocalCluster
from tests.controller.test_service import Clock
from tests.servers import serving

ROUNDS = 30
DELETERS = 4
#: h1's own credential, which its heartbeats present
CREDENTIAL = "h1-credential-0123456789abcdef"
AGENT_AUTH = {"Authorization": f"Bearer {CREDENTIAL}"}
PERIOD_S = 10.0


class QuietAgent(AgentClient):
    """An agent that deletes whatever it is asked to, and has nothing else."""

    def __init__(self) -> None:  # no HTTP client: nothing is sent
        pass

    def delete(self, name: str) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def cluster(tmp_path: Path, database_url: str, i7: Topology) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, database_url, i7)
    yield local
    local.close()


def test_deletes_of_one_vm_sent_at_once_answer_204_or_404_never_500(cluster: LocalCluster) -> None:
    cluster.add_host("h1")
    statuses: list[int] = []
    with ThreadPoolExecutor(max_workers=DELETERS) as pool:
        for round_ in range(ROUNDS):
            name = f"twin-{round_}"
            created = cluster.http.post("/api/v1/vms", json={"name": name, "vcpus": 1, "memory_mib": 256})
            assert created.status_code == 201, created.text
            start = threading.Barrier(DELETERS)

            def delete(vm: str = name, barrier: threading.Barrier = start) -> int:
                with httpx.Client(base_url=cluster.url, timeout=30, headers=ADMIN_AUTH) as http:
                    barrier.wait()
                    return http.delete(f"/api/v1/vms/{vm}").status_code

            answers = [f.result() for f in [pool.submit(delete) for _ in range(DELETERS)]]
            statuses += answers
            assert set(answers) <= {204, 404}, answers
            assert 204 in answers, answers
            assert cluster.http.get(f"/api/v1/vms/{name}").status_code == 404
    assert cluster.controller.vms() == []
    assert cluster.hosts["h1"].agent.user_vms() == []


def vanishing(store: ControllerStore, monkeypatch: pytest.MonkeyPatch, method: str) -> list[str]:
    """Make `store.<method>` delete the VMs it read, as another request would
    right after: the caller's next write meets no VM. The names it deleted."""
    read = getattr(store, method)
    deleted: list[str] = []

    def read_then_lose(*args: Any, **kwargs: Any) -> Any:
        result = read(*args, **kwargs)
        records = result if isinstance(result, list) else [result]
        for record in records:
            if isinstance(record, VMRecord | SettledVM) and store.delete_vm(record.name) is not None:
                deleted.append(record.name)
        return result

    monkeypatch.setattr(store, method, read_then_lose)
    return deleted


@pytest.fixture
def api(store: ControllerStore, i7_topology: dict[str, Any]) -> Iterator[tuple[httpx.Client, Clock]]:
    """A controller with one host, h1, and a running VM v1 on it, served on loopback."""
    clock = Clock()

    def agent_for(host: HostRecord) -> AgentClient:
        return QuietAgent()

    controller = Controller(store, agent_for, heartbeat_period_s=PERIOD_S, clock=clock)
    controller.register("h1", "http://h1:8099", i7_topology, 6, 0, proof=Enrolment(digest(CREDENTIAL)))
    store.reserve(VMRequest("v1", 1, 512, 2.0), "h1", Feasibility(), clock())
    store.set_vm_state("v1", VMState.RUNNING, clock())
    with serving(create_app(controller, ADMIN, AGENT)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http, clock


def test_a_delete_whose_vm_another_request_deleted_meanwhile_is_a_404(
    api: tuple[httpx.Client, Clock], store: ControllerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, _ = api
    deleted = vanishing(store, monkeypatch, "vm")
    response = http.delete("/api/v1/vms/v1", headers=ADMIN_AUTH)
    assert deleted == ["v1"]
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "unknown vm"


@pytest.mark.parametrize("reported", [{}, {"v1": "paused"}], ids=["gone-missing", "state-changed"])
def test_a_heartbeat_settling_a_vm_another_request_deleted_meanwhile_is_stored(
    api: tuple[httpx.Client, Clock],
    store: ControllerStore,
    monkeypatch: pytest.MonkeyPatch,
    reported: dict[str, str],
) -> None:
    """The heartbeat would mark v1 missing (or paused): it is gone by then."""
    http, clock = api
    clock.now += 3 * PERIOD_S  # v1's state is old enough for a heartbeat to change it
    deleted = vanishing(store, monkeypatch, "settled_on")  # what a heartbeat reads of its VMs
    response = http.post("/api/v1/hosts/h1/heartbeat", json={"vms": reported}, headers=AGENT_AUTH)
    assert deleted == ["v1"]
    assert response.status_code == 200, response.text
    host = store.host("h1")
    assert host is not None
    assert host.last_heartbeat == clock.now
    assert store.vms() == []
