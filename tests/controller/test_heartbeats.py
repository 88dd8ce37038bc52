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
from pinfold.controller.store import ControllerStore, HostRecord
from pinfold.model.vm import VMRequest
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
    store.reserve(VMRequest("v1", 1, 512, 2.0), "h1", Feasibility(), controller.clock())
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


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
VM_BODY = {"name": "w", "vcpus": 1, "memory_mib": 256}


@pytest.mark.parametrize(
    "change",
    [
        {"vcpus": "1"},
        {"vcpus": True},
        {"vcpus": 1.0},
        {"memory_mib": "256"},
        {"memory_mib": True},
        {"ratio": "2.0"},
        {"ratio": True},
        {"owner": 7},
        {"image": 0},
        {"policy": 1},
    ],
    ids=str,
)
def test_a_create_with_a_field_of_another_json_type_is_refused(
    api: httpx.Client, store: ControllerStore, change: dict[str, Any]
) -> None:
    """No coercion at the edge: `"1"` or `true` is not a vCPU count."""
    response = api.post("/api/v1/vms", json={**VM_BODY, **change}, headers=ADMIN_HEADERS)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid request"
    assert [vm.name for vm in store.vms()] == ["v1"]


def registration(topology: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {
        "host_id": "h2",
        "address": "http://h2:8099",
        "topology": topology,
        "critical_size": 6,
        "reserved_memory_mib": 0,
        **change,
    }


def with_memset(topology: dict[str, Any], total: Any) -> dict[str, Any]:
    return {**topology, "memset": {**topology["memset"], "total": total, "allowed": total}}


def with_first_cpu(topology: dict[str, Any], **change: Any) -> dict[str, Any]:
    cpus = topology["cpuset"]["cpu_list"]
    return {**topology, "cpuset": {**topology["cpuset"], "cpu_list": [{**cpus[0], **change}, *cpus[1:]]}}


@pytest.mark.parametrize(
    "case",
    [
        lambda t: registration(with_memset(t, 1e308)),
        lambda t: registration(with_memset(t, 2**62)),
        lambda t: registration(with_memset(t, "31776")),
        lambda t: registration(with_first_cpu(t, cpu_id="0")),
        lambda t: registration(with_first_cpu(t, cpu_id=True)),
        lambda t: registration(with_first_cpu(t, sib_cpu=list(range(100_000)))),
        lambda t: registration(with_first_cpu(t, max_freq=10**30)),
        lambda t: registration(t, critical_size=True),
        lambda t: registration(t, critical_size="6"),
        lambda t: registration(t, reserved_memory_mib=2**50),
        lambda t: registration(t, heartbeat_period_s="10"),
        lambda t: registration(t, heartbeat_period_s=True),
    ],
    ids=[
        "memory-1e308", "memory-2**62", "memory-a-string", "cpu-id-a-string", "cpu-id-true",
        "100k-siblings", "frequency-1e30", "critical-true", "critical-a-string", "reserved-2**50",
        "period-a-string", "period-true",
    ],
)  # fmt: skip
def test_a_registration_out_of_bounds_or_of_another_type_is_refused(
    api: httpx.Client, store: ControllerStore, i7_topology: dict[str, Any], case: Any
) -> None:
    response = api.post("/api/v1/hosts", json=case(i7_topology), headers=AGENT_AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid request"
    assert store.host("h2") is None


@pytest.mark.parametrize(
    "beat",
    [
        {"vms": {f"vm-{i}": "running" for i in range(16_385)}},
        {"vms": {"x" * 10_000: "running"}},
        {"vms": {"v1": "r" * 10_000}},
        {"pins": {"v1": list(range(100_000))}},
        {"pins": {"v1": [10**12]}},
        {"pins": {"v1": ["0"]}},
        {"pins": {"v1": [True]}},
        {"vnodes": {"2.0": [0, 2**40]}},
        {"vnodes": {f"{i}.0": [0] for i in range(10_000)}},
        {"usage": {"cpu": {"0": 1e308}}},
        {"usage": {"cpu": {"0": True}}},
        {"usage": {"cpu": {str(i): 0.5 for i in range(8_193)}}},
        {"usage": {"vnodes": {"2.0": {"used_cores": 1e308}}}},
        {"status": {f"k{i}": i for i in range(10_000)}},
    ],
    ids=[
        "16385-vms", "long-vm-name", "long-state", "100k-pins", "huge-cpu-id", "pin-a-string",
        "pin-true", "huge-vnode-cpu", "10k-levels", "share-1e308", "share-true", "8193-cpus",
        "cores-1e308", "status-10k-keys",
    ],
)  # fmt: skip
def test_a_heartbeat_out_of_bounds_or_of_another_type_is_refused(
    api: httpx.Client, store: ControllerStore, beat: dict[str, Any]
) -> None:
    before = store.host("h1")
    response = api.post("/api/v1/hosts/h1/heartbeat", json=beat, headers=AGENT_AUTH)
    assert response.status_code == 422, response.text
    after = store.host("h1")
    assert after is not None
    assert before is not None
    assert (after.last_heartbeat, after.heartbeat) == (before.last_heartbeat, before.heartbeat)


NIC = {"network": "lab", "bridge": None, "mac": "52:54:00:00:00:01", "addresses": ["192.0.2.7"]}


@pytest.mark.parametrize(
    "nics",
    [
        {"v1": [{**NIC, "addresses": ["not-an-address"]}]},
        {"v1": [{**NIC, "addresses": ["192.0.2.300"]}]},
        {"v1": [{**NIC, "addresses": ["192.0.2.7"] * 17}]},
        {"v1": [{**NIC, "addresses": ["1" * 100]}]},
        {"v1": [{**NIC, "mac": "52-54-00-00-00-01"}]},
        {"v1": [{**NIC, "network": "a b"}]},
        {"v1": [NIC] * 9},
        {"v1": NIC},
        {"x" * 300: [NIC]},
        {f"v{i}": [] for i in range(16_385)},
    ],
    ids=["not-an-address", "octet-300", "17-addresses", "long-address", "dashed-mac", "bad-network",
         "9-nics", "nics-not-a-list", "long-vm-name", "16385-vms"],
)  # fmt: skip
def test_a_heartbeats_nics_out_of_bounds_are_refused_and_nothing_stored(
    api: httpx.Client, store: ControllerStore, nics: dict[str, Any]
) -> None:
    test_a_heartbeat_out_of_bounds_or_of_another_type_is_refused(api, store, {**GOOD, "nics": nics})
    assert [vm.reported_nics for vm in store.vms("h1")] == [None]


def test_a_heartbeats_nics_are_kept_per_vm_and_an_older_agents_beat_keeps_them(
    api: httpx.Client, store: ControllerStore
) -> None:
    beat = {**GOOD, "nics": {"v1": [NIC], "not-here": [NIC]}}
    assert api.post("/api/v1/hosts/h1/heartbeat", json=beat, headers=AGENT_AUTH).status_code == 200
    (vm,) = store.vms("h1")
    assert vm.reported_nics is not None
    assert [nic.to_dict() for nic in vm.reported_nics] == [NIC]
    host = store.host("h1")
    assert host is not None
    assert host.heartbeat is not None
    assert "nics" not in host.heartbeat  # kept per VM, not again in the host's row
    # an agent older than the nics field: accepted, and what was reported stays
    assert api.post("/api/v1/hosts/h1/heartbeat", json=GOOD, headers=AGENT_AUTH).status_code == 200
    assert store.vms("h1")[0].reported_nics == vm.reported_nics
    shown = api.get("/api/v1/vms/v1", headers=ADMIN_HEADERS).json()
    assert (shown["nics"], shown["addresses"]) == ([NIC], ["192.0.2.7"])


def test_a_heartbeat_reads_its_hosts_vms_light_and_their_nics_only_when_it_has_some(
    api: httpx.Client, store: ControllerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beat settles its host's VMs from their names, states and last
    changes (`settled_on`), never from whole records (every JSON column
    decoded: half of a beat's time with 50 VMs, issue 16), reads the NICs
    last reported only when it reports NICs, and writes only those changed."""
    whole_reads: list[tuple[Any, ...]] = []
    nics_read: list[bool] = []
    written: list[list[str]] = []
    vms, settled_on, set_reported_nics = store.vms, store.settled_on, store.set_reported_nics

    def noted_vms(*args: Any) -> Any:
        whole_reads.append(args)
        return vms(*args)

    def noted_settled_on(host_id: str, nics: bool = False) -> Any:
        nics_read.append(nics)
        return settled_on(host_id, nics)

    def noted_set_reported_nics(host_id: str, changed: Any) -> None:
        written.append(sorted(changed))
        set_reported_nics(host_id, changed)

    monkeypatch.setattr(store, "vms", noted_vms)
    monkeypatch.setattr(store, "settled_on", noted_settled_on)
    monkeypatch.setattr(store, "set_reported_nics", noted_set_reported_nics)
    with_nics = {**GOOD, "nics": {"v1": [NIC]}}
    for beat in (GOOD, with_nics, with_nics):
        assert api.post("/api/v1/hosts/h1/heartbeat", json=beat, headers=AGENT_AUTH).status_code == 200
    assert whole_reads == []
    assert nics_read == [False, True, True]
    assert written == [["v1"], []]  # the same NICs again: nothing written
    (vm,) = vms("h1")
    assert vm.reported_nics is not None
    assert [nic.to_dict() for nic in vm.reported_nics] == [NIC]
