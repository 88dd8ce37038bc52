"""The controller with real agents on loopback (sim driver): registration and
heartbeats, placement through the REST API, idempotency, refusals explained,
hosts going down and coming back, draining, tokens, and a burst of
concurrent creates that never over-allocates a host."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pinfold.agent.service import AgentSettings, VMRequest
from pinfold.controller.agents import AgentClient, AgentRefusedError
from pinfold.controller.api import create_app as controller_app
from pinfold.controller.database import connect
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore
from pinfold.placement import VMSpec
from pinfold.topology import Topology
from tests.controller.cluster import ADMIN, ADMIN_AUTH, AGENT, PERIOD_S, STALE_AFTER_S, LocalCluster
from tests.servers import Served


@pytest.fixture
def cluster(tmp_path, database_url, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, database_url, i7)
    yield local
    local.close()


def agents_vms(cluster: LocalCluster) -> dict[str, set[str]]:
    return {
        host_id: {vm.spec.name for vm in host.agent.user_vms()} for host_id, host in cluster.hosts.items()
    }


def test_vms_of_two_levels_land_on_registered_hosts_pinned_to_their_vnodes(cluster):
    for host_id in ("h1", "h2", "h3"):
        cluster.add_host(host_id)
    hosts = cluster.http.get("/api/v1/hosts").json()
    assert [(h["id"], h["state"], h["cpus"]) for h in hosts] == [
        ("h1", "up", 8),
        ("h2", "up", 8),
        ("h3", "up", 8),
    ]
    premium = cluster.http.post(
        "/api/v1/vms", json={"name": "db", "vcpus": 2, "memory_mib": 4096, "ratio": 1.0}, headers=ADMIN_AUTH
    )
    shared = cluster.http.post(
        "/api/v1/vms", json={"name": "web", "vcpus": 2, "memory_mib": 1024, "ratio": 2.0}, headers=ADMIN_AUTH
    )
    assert (premium.status_code, shared.status_code) == (201, 201), (premium.text, shared.text)
    for response in (premium, shared):
        vm = response.json()
        assert vm["state"] == "running"
        on_agent = cluster.hosts[vm["host"]].agent
        assert vm["name"] in on_agent.allocator
        assert on_agent.allocator.spec(vm["name"]).ratio == vm["ratio"]
        assert vm["pinning"] == sorted(on_agent.allocator.pinning(vm["name"]))
    # after a heartbeat the directory shows each VM's pinning too
    cluster.wait(
        lambda: all(v["pinning"] for v in cluster.http.get("/api/v1/vms").json()), "pins in heartbeats"
    )
    assert {name for names in agents_vms(cluster).values() for name in names} == {"db", "web"}
    events = [e["kind"] for e in cluster.http.get("/api/v1/events").json()]
    assert events.count("host registered") == 3
    assert events.count("vm created") == 2


def test_creates_are_idempotent_by_name(cluster):
    cluster.add_host("h1")
    body = {"name": "a", "vcpus": 1, "memory_mib": 512, "ratio": 2.0}
    first = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    again = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["host"] == first.json()["host"]
    assert len(cluster.hosts["h1"].agent.user_vms()) == 1
    other = cluster.http.post("/api/v1/vms", json={**body, "vcpus": 2}, headers=ADMIN_AUTH)
    assert other.status_code == 409
    assert other.json()["error"] == "duplicate name"


def test_a_creates_answer_is_encoded_without_fastapis_item_by_item_walk(cluster, monkeypatch):
    """At the agent and at the controller, a create's view (its pinning a
    list of CPUs) is encoded by json.dumps alone, as is a registration's
    answer: FastAPI's jsonable_encoder walked them item by item, 10x the
    time (issue 16). Other routes' answers (heartbeats meanwhile) may still
    go through it."""
    import fastapi.routing

    import pinfold.web

    walked: list[Any] = []
    for module in (fastapi.routing, pinfold.web):
        encoder = module.jsonable_encoder

        def noting(content: Any, *args: Any, _encoder: Any = encoder, **kwargs: Any) -> Any:
            walked.append(content)
            return _encoder(content, *args, **kwargs)

        monkeypatch.setattr(module, "jsonable_encoder", noting)
    cluster.add_host("h1")
    body = {"name": "web", "vcpus": 2, "memory_mib": 1024, "ratio": 2.0}
    created = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    again = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    assert (created.status_code, again.status_code) == (201, 200), created.text
    assert created.json()["pinning"] == sorted(cluster.hosts["h1"].agent.allocator.pinning("web"))
    assert "web" not in repr(walked)
    assert not [content for content in walked if isinstance(content, dict) and "credential" in content]


def race(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    """Send the creates at once, each past the controller's look for the
    name (in its picture) before any reserves it (a barrier before each
    ranks the hosts): they meet at the reservation."""
    barrier = threading.Barrier(len(bodies), timeout=10)
    attempts = itertools.count()
    attempt = cluster.controller._attempt

    def attempt_together(*args: Any, **kwargs: Any) -> Any:
        if next(attempts) < len(bodies):
            barrier.wait()
        return attempt(*args, **kwargs)

    monkeypatch.setattr(cluster.controller, "_attempt", attempt_together)
    # one by one: placed together (the coalescer), creates of one name never meet in this process
    monkeypatch.setattr(cluster.controller, "coalesce_at_most", 1)

    def create(body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(base_url=cluster.url, timeout=60) as http:
            return http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(create, bodies))


def test_identical_creates_at_the_same_moment_make_one_vm_and_both_get_it(patient_cluster, monkeypatch):
    """On a patient controller: a late heartbeat under load would make a host
    look down, and the create answer `no host` for a reason that is not the race."""
    cluster = patient_cluster
    cluster.add_host("h1")
    cluster.add_host("h2")
    body = {"name": "twin", "vcpus": 2, "memory_mib": 512, "ratio": 2.0}
    responses = race(cluster, monkeypatch, [body, body])
    assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
    host = responses[0].json()["host"]
    assert [(r.json()["state"], r.json()["host"]) for r in responses] == [("running", host)] * 2
    assert sum(len(names) for names in agents_vms(cluster).values()) == 1


def test_creates_of_one_name_and_two_sizes_at_the_same_moment_refuse_one(patient_cluster, monkeypatch):
    cluster = patient_cluster  # as above: a host taken for down is not what this race is about
    cluster.add_host("h1")
    bodies = [{"name": "twin", "vcpus": vcpus, "memory_mib": 512} for vcpus in (1, 2)]
    responses = race(cluster, monkeypatch, bodies)
    assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 409)
    assert refused.json()["error"] == "duplicate name", refused.text
    assert [vm.spec.vcpus for vm in cluster.hosts["h1"].agent.user_vms()] == [
        next(r for r in responses if r.status_code == 201).json()["vcpus"]
    ]


def test_no_host_is_explained_host_by_host(cluster):
    cluster.add_host("h1")
    cluster.add_host("h2")
    cluster.http.post("/api/v1/hosts/h2/drain", headers=ADMIN_AUTH)
    response = cluster.http.post(
        "/api/v1/vms", json={"name": "huge", "vcpus": 6, "memory_mib": 40000}, headers=ADMIN_AUTH
    )
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "no host"
    assert body["detail"].startswith("0/2 hosts fit")
    assert body["hosts"]["h1"].startswith("not enough memory")
    assert "h2" in body["hosts"]
    assert agents_vms(cluster) == {"h1": set(), "h2": set()}
    assert cluster.http.get("/api/v1/vms").json() == []


def test_no_host_carries_each_hosts_refusal_as_data(cluster):
    cluster.add_host("h1")
    cluster.add_host("h2")
    for name in ("f1", "f2"):  # 6 of the 8 CPUs of each host at level 1.0
        response = cluster.http.post(
            "/api/v1/vms", json={"name": name, "vcpus": 6, "memory_mib": 512}, headers=ADMIN_AUTH
        )
        assert response.status_code == 201, response.text
    hosts_before = {"h1", "h2"}
    for vcpus, fits_ever in ((4, True), (9, False)):  # lacks room now; bigger than any host
        response = cluster.http.post(
            "/api/v1/vms", json={"name": "big", "vcpus": vcpus, "memory_mib": 512}, headers=ADMIN_AUTH
        )
        assert response.status_code == 409
        body = response.json()
        assert set(body["hosts"]) == hosts_before
        assert all(
            isinstance(why, str) and why.startswith("not enough cpu") for why in body["hosts"].values()
        )
        assert body["refusals"] == {
            host: {
                "code": "not enough cpu",
                "level": 1.0,
                "needed": float(vcpus),
                "free": 2.0,
                "capacity": 8.0,
                "fits_ever": fits_ever,
                "detail": "",
            }
            for host in hosts_before
        }
        assert body["summary"] == "0/2 hosts fit: 2 not enough cpu at 1.0"


def test_an_agents_refusal_of_a_placement_code_is_kept_as_data_with_its_numbers(cluster):
    squatted = cluster.add_host("h1")
    squatted.agent.create(VMRequest("squatter", 8, 1024, 1.0))  # the controller still sees h1 empty
    body = {"name": "v", "vcpus": 2, "memory_mib": 512}
    response = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    assert response.status_code == 409
    refused = response.json()
    assert refused["hosts"]["h1"].startswith("agent refused: not enough cpu")
    refusal = refused["refusals"].pop("h1")
    assert refusal.pop("detail").startswith("not enough cpu at level 1.0: needs 2")  # the agent's words
    numbers = {"code": "not enough cpu", "level": 1.0, "needed": 2.0, "free": 0.0, "capacity": 8.0}
    assert refusal == {**numbers, "fits_ever": True}  # the agent's numbers, as the controller's own
    assert refused["summary"] == "0/1 hosts fit: 1 not enough cpu at 1.0"


#: a VM of 2 vCPUs and 4000 MiB on three empty hosts of three shapes, and where each policy puts it
SHAPED_VM = {"vcpus": 2, "memory_mib": 4000, "ratio": 1.0}
CHOSEN_BY = {"progress": "b-lean", "first-fit": "a-small", "worst-fit": "c-big"}


def three_shapes(cluster: LocalCluster, epyc: Topology) -> None:
    """Registered in the order of their ids (ties go to the earliest)."""
    cluster.add_host("a-small")  # i7: 8 CPUs, 31776 MiB, about 3970 MiB per CPU
    lean = AgentSettings(domain_type="qemu", reserved_memory_mib=16000)
    cluster.add_host("b-lean", settings=lean)  # the same with 1970 MiB per CPU: 2000 per CPU suits it
    cluster.add_host("c-big", topology=epyc)  # 256 CPUs, 1 TB: the most room left after any VM


def test_the_policy_a_request_names_chooses_the_host(cluster, epyc):
    three_shapes(cluster, epyc)
    for policy in [*CHOSEN_BY, None]:  # None: the controller's default, progress
        body = {"name": f"by-{policy}", **SHAPED_VM, **({"policy": policy} if policy else {})}
        created = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
        assert created.status_code == 201, created.text
        assert (policy, created.json()["host"]) == (policy, CHOSEN_BY[policy or "progress"])
        assert cluster.http.delete(f"/api/v1/vms/by-{policy}", headers=ADMIN_AUTH).status_code == 204


@pytest.mark.parametrize("policy", ["first-fit", "worst-fit"])
def test_the_controllers_default_policy_chooses_the_host(tmp_path, i7, epyc, policy):
    cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", i7, policy=policy)
    try:
        three_shapes(cluster, epyc)
        body = {"name": "v", **SHAPED_VM}
        created = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
        assert created.json()["host"] == CHOSEN_BY[policy]
        assert cluster.http.get("/api/v1/status", headers=ADMIN_AUTH).json()["policy"] == policy
    finally:
        cluster.close()


def test_a_host_whose_agent_refuses_is_passed_over_and_its_reservation_dropped(cluster, monkeypatch):
    squatted = cluster.add_host("h1")
    cluster.add_host("h2")
    # behind the controller's back, h1's agent gives all its 8 CPUs to a VM: the
    # controller still sees h1 empty, first in line, and reserves room on it
    squatted.agent.create(VMRequest("squatter", 8, 1024, 1.0))
    refusals: list[str] = []
    create_on_agent = AgentClient.create

    def recording(self: AgentClient, *args: Any) -> dict[str, Any]:
        try:
            return create_on_agent(self, *args)
        except AgentRefusedError as error:
            refusals.append(error.code)
            raise

    monkeypatch.setattr(AgentClient, "create", recording)
    body = {"name": "v", "vcpus": 2, "memory_mib": 512, "policy": "first-fit"}
    created = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    assert created.status_code == 201, created.text
    assert created.json()["host"] == "h2"
    assert refusals == ["not enough cpu"]  # h1's agent said no, then h2 was tried
    assert [(vm.name, vm.host_id) for vm in cluster.controller.vms()] == [
        ("v", "h2")
    ]  # h1's reservation gone
    assert agents_vms(cluster) == {"h1": {"squatter"}, "h2": {"v"}}


def test_a_draining_host_takes_no_new_vms(cluster):
    cluster.add_host("h1")
    cluster.add_host("h2")
    assert cluster.http.post("/api/v1/hosts/h1/drain", headers=ADMIN_AUTH).json()["state"] == "draining"
    for i in range(4):
        vm = cluster.http.post(
            "/api/v1/vms", json={"name": f"v{i}", "vcpus": 1, "memory_mib": 256}, headers=ADMIN_AUTH
        ).json()
        assert vm["host"] == "h2"
    assert cluster.http.post("/api/v1/hosts/h1/undrain", headers=ADMIN_AUTH).json()["state"] == "up"


def test_an_agent_that_dies_is_marked_down_with_its_vms_and_comes_back(cluster):
    cluster.add_host("h1")
    victim = cluster.add_host("h2")
    cluster.http.post("/api/v1/hosts/h1/drain", headers=ADMIN_AUTH)
    vm = cluster.http.post(
        "/api/v1/vms", json={"name": "v", "vcpus": 1, "memory_mib": 256}, headers=ADMIN_AUTH
    )
    assert vm.json()["host"] == "h2"
    victim.stop()
    cluster.wait(lambda: cluster.http.get("/api/v1/hosts/h2").json()["state"] == "down", "h2 to be down")
    assert cluster.http.get("/api/v1/vms/v").json()["host_state"] == "down"
    assert cluster.controller.check_hosts() == ["h2"]
    assert "host down" in [e["kind"] for e in cluster.http.get("/api/v1/events").json()]
    refused = cluster.http.post(
        "/api/v1/vms", json={"name": "w", "vcpus": 1, "memory_mib": 256}, headers=ADMIN_AUTH
    )
    assert refused.status_code == 409  # h1 drains, h2 is down
    # the agent comes back on the same store; its sim hypervisor lost the domain with the process
    victim.agent.store.close()
    revived = cluster.add_host("h2")
    assert [(vm.spec.name, vm.state) for vm in revived.agent.user_vms()] == [("v", "missing")]
    cluster.wait(lambda: cluster.http.get("/api/v1/hosts/h2").json()["state"] == "up", "h2 to be up")
    cluster.wait(lambda: cluster.http.get("/api/v1/vms/v").json()["state"] == "missing", "v to be missing")


def test_an_agent_beating_slower_than_the_controller_checks_stays_up(cluster):
    """The agent says it beats every 1 s, the controller's period is 0.25 s:
    three of the controller's periods pass between two heartbeats, yet the
    host never goes down."""
    cluster.add_host("slow", period_s=1.0)
    assert cluster.http.get("/api/v1/hosts/slow").json()["heartbeat_period_s"] == 1.0
    for _ in range(12):
        assert cluster.controller.check_hosts() == []
        assert cluster.http.get("/api/v1/hosts/slow").json()["state"] == "up"
        time.sleep(PERIOD_S)
    assert "host down" not in [e["kind"] for e in cluster.http.get("/api/v1/events").json()]


@pytest.mark.parametrize(
    ("method", "path", "token"),
    [
        ("post", "/api/v1/vms", "admin"),
        ("delete", "/api/v1/vms/x", "admin"),
        ("post", "/api/v1/vms/x/suspend", "admin"),
        ("post", "/api/v1/hosts/h1/drain", "admin"),
        ("get", "/deploy?name=x&cpu=1&mem=1", "admin"),
        ("get", "/remove?name=x", "admin"),
        ("post", "/api/v1/hosts", "agent"),
        ("post", "/api/v1/hosts/h1/heartbeat", "agent"),
        # reads too: the directory says what runs where, and for whom
        ("get", "/api/v1/hosts", "admin"),
        ("get", "/api/v1/hosts/h1", "admin"),
        ("get", "/api/v1/hosts/h1/cpus", "admin"),
        ("get", "/api/v1/hosts/h1/history", "admin"),
        ("get", "/api/v1/vms", "admin"),
        ("get", "/api/v1/vms/x", "admin"),
        ("get", "/api/v1/events", "admin"),
        ("get", "/api/v1/status", "admin"),
        ("get", "/status", "admin"),
    ],
)
@pytest.mark.parametrize("given", ["none", "wrong", "other"])
def test_every_route_refuses_a_missing_or_wrong_token(tmp_path, i7, method, path, token, given):
    cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", i7)
    cluster.http.headers.pop("Authorization")
    try:
        headers = {
            "none": {},
            "wrong": {"Authorization": "Bearer wrong-token-0123456789"},
            # the other kind of token: an agent cannot create VMs, a user cannot register hosts
            "other": {"Authorization": f"Bearer {AGENT}"} if token == "admin" else ADMIN_AUTH,
        }[given]
        body = {"name": "x", "vcpus": 1, "memory_mib": 1} if method == "post" else None
        response = cluster.http.request(method.upper(), path, json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    finally:
        cluster.close()


@pytest.fixture
def patient_cluster(tmp_path, database_url, i7) -> Iterator[LocalCluster]:
    """A controller that waits 15 s before calling a host down: under a burst on
    two cores a heartbeat can be late, and a host taken for down refuses VMs."""
    local = LocalCluster(tmp_path, database_url, i7, heartbeat_period_s=5.0)
    yield local
    local.close()


def test_200_concurrent_creates_over_10_hosts_never_over_allocate(patient_cluster):
    cluster = patient_cluster
    for i in range(10):
        cluster.add_host(f"h{i}")
    rng = random.Random(7)
    requests: list[dict[str, Any]] = [
        {"name": f"vm{i}", "vcpus": rng.choice([1, 1, 2, 4]), "memory_mib": rng.choice([512, 1024, 4096]),
         "ratio": rng.choice([1.0, 2.0, 3.0])}
        for i in range(200)
    ]  # fmt: skip

    def create(body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(base_url=cluster.url, timeout=60) as http:
            return http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(create, requests))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {201, 409}, [r.text for r in responses if r.status_code not in (201, 409)]
    created = {r.json()["name"]: r.json()["host"] for r in responses if r.status_code == 201}
    assert len(created) + len([c for c in codes if c == 409]) == 200
    assert len(created) >= 50
    assert [c for c in codes if c == 409], "the hosts should have filled up"
    # each agent's own state: placements valid, nothing over its CPUs or memory
    for host in cluster.hosts.values():
        allocator = host.agent.allocator
        allocator.check_invariants()
        assert allocator.memory_allocated_mib <= allocator.memory_usable_mib
        assert sum(len(allocator.vnode(r)) for r in allocator.levels) <= allocator.usable_cpu_count
    # the controller's directory and the agents agree, each VM on exactly one host
    on_agents = agents_vms(cluster)
    assert {name: host for host, names in on_agents.items() for name in names} == created
    assert sum(len(names) for names in on_agents.values()) == len(created)
    stored = {vm["name"]: vm["host"] for vm in cluster.http.get("/api/v1/vms").json()}
    assert stored == created
    # no refusal was spurious: hosts only filled up after it, so it fits nowhere now either
    for body, response in zip(requests, responses, strict=True):
        if response.status_code == 409:
            assert response.json()["error"] == "no host"
            spec = VMSpec(body["name"], body["vcpus"], body["memory_mib"], body["ratio"])
            assert not any(host.agent.allocator.fits(spec) for host in cluster.hosts.values()), (
                response.json()
            )


def test_a_registration_the_placement_core_cannot_use_is_refused(cluster):
    agent_auth = {"Authorization": f"Bearer {AGENT}"}
    body = {"host_id": "bad", "address": "http://127.0.0.1:1", "critical_size": 6, "reserved_memory_mib": 0}
    topologies: list[dict[str, Any]] = [{}, {"cpuset": {"cpu_list": []}}, {"cpuset": "x", "memset": 3}]
    for topology in topologies:
        response = cluster.http.post("/api/v1/hosts", json={**body, "topology": topology}, headers=agent_auth)
        assert response.status_code in (400, 422), response.text  # 422: the document's shape
        assert response.json()["error"] == "invalid request"
    assert cluster.http.get("/api/v1/hosts").json() == []


def test_two_controllers_on_one_database_never_over_allocate(cluster, database_url, monkeypatch):
    """A second controller (its own engine and picture) on the same database,
    both taking a burst of creates for the same hosts: the reservations are
    exact, so no agent ever has to refuse a VM the controllers placed on it."""
    for i in range(4):
        cluster.add_host(f"h{i}")
    refusals: list[str] = []
    create_on_agent = AgentClient.create

    def counting(self: AgentClient, *args: Any) -> dict[str, Any]:
        try:
            return create_on_agent(self, *args)
        except AgentRefusedError as error:
            refusals.append(str(error))
            raise

    monkeypatch.setattr(AgentClient, "create", counting)
    second = Controller(
        ControllerStore(connect(database_url)), cluster.clients, heartbeat_period_s=PERIOD_S,
        stale_after_s=STALE_AFTER_S,
    )  # fmt: skip
    served = Served(controller_app(second, ADMIN, AGENT))
    try:
        rng = random.Random(11)
        requests = [
            {
                "name": f"vm{i}",
                "vcpus": rng.choice([1, 2]),
                "memory_mib": 1024,
                "ratio": rng.choice([1.0, 2.0]),
            }
            for i in range(80)
        ]

        def create(index: int) -> httpx.Response:
            url = (cluster.url, served.url)[index % 2]
            with httpx.Client(base_url=url, timeout=60) as http:
                return http.post("/api/v1/vms", json=requests[index], headers=ADMIN_AUTH)

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(create, range(len(requests))))
        assert {r.status_code for r in responses} <= {201, 409}
        assert any(r.status_code == 409 for r in responses), "the hosts should have filled up"
        assert refusals == []  # every reservation was right: no agent had to say no
        created = {r.json()["name"]: r.json()["host"] for r in responses if r.status_code == 201}
        on_agents = {name: host for host, names in agents_vms(cluster).items() for name in names}
        assert on_agents == created
    finally:
        served.stop()
        second.store.engine.dispose()


def test_a_picture_behind_another_controllers_delete_does_not_refuse(cluster, database_url):
    cluster.add_host("h1")
    second = Controller(ControllerStore(connect(database_url)), cluster.clients, heartbeat_period_s=PERIOD_S)
    try:
        whole = {"vcpus": 8, "memory_mib": 1024, "ratio": 1.0}  # all 8 CPUs of the host
        first = cluster.http.post("/api/v1/vms", json={"name": "a", **whole}, headers=ADMIN_AUTH)
        assert first.status_code == 201
        assert second.delete("a") is None  # the other replica frees the host; our picture still has it full
        again = cluster.http.post("/api/v1/vms", json={"name": "b", **whole}, headers=ADMIN_AUTH)
        assert again.status_code == 201, again.text
    finally:
        second.store.engine.dispose()


def test_agents_register_again_with_a_controller_that_lost_them(tmp_path, i7):
    """The controller comes back on the same address with an empty database:
    the agents' next heartbeats are answered 404 and they register again."""
    cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'first.db'}", i7)
    try:
        cluster.add_host("h1")
        cluster.add_host("h2")
        cluster.served.stop()
        cluster.controller.store.engine.dispose()
        cluster.controller = Controller(
            ControllerStore(connect(f"sqlite:///{tmp_path / 'second.db'}")), cluster.clients,
            heartbeat_period_s=PERIOD_S,
        )  # fmt: skip
        cluster.served = Served(controller_app(cluster.controller, ADMIN, AGENT), port=cluster.served.port)
        cluster.wait(
            lambda: [h["id"] for h in cluster.http.get("/api/v1/hosts").json()] == ["h1", "h2"],
            "re-registration",
        )
        created = cluster.http.post(
            "/api/v1/vms", json={"name": "a", "vcpus": 1, "memory_mib": 128}, headers=ADMIN_AUTH
        )
        assert created.status_code == 201
    finally:
        cluster.close()


def test_cpu_map_and_history_follow_the_heartbeats(cluster):
    cluster.add_host("h1")
    cluster.http.post(
        "/api/v1/vms", json={"name": "a", "vcpus": 2, "memory_mib": 256, "ratio": 2.0}, headers=ADMIN_AUTH
    )
    vnode = cluster.hosts["h1"].agent.allocator.vnode(2.0)

    def mapped() -> list[int]:
        cpus = cluster.http.get("/api/v1/hosts/h1/cpus").json()["cpus"]
        return sorted(c["cpu"] for c in cpus if c["level"] == "2.0")

    cluster.wait(lambda: mapped() == sorted(vnode), "the vNode on the CPU map")
    cpus = cluster.http.get("/api/v1/hosts/h1/cpus").json()["cpus"]
    assert len(cpus) == 8
    assert {c["socket"] for c in cpus} == {0}
    assert next(c for c in cpus if c["cpu"] == 4)["core"] == 0  # 0 and 4 are SMT siblings on the i7
    history = cluster.http.get("/api/v1/hosts/h1/history").json()
    assert history["samples"][-1]["sizes"] == {"2.0": len(vnode)}
    assert history["span_s"] == 3600
    assert history["samples"][-1]["time"] <= history["now"] <= time.time()
    assert cluster.http.get("/api/v1/hosts/nowhere/history").status_code == 404
    assert httpx.get(f"{cluster.url}/api/v1/whoami").status_code == 401
    assert cluster.http.get("/api/v1/whoami", headers=ADMIN_AUTH).json() == {"role": "admin"}
    page = cluster.http.get("/")
    assert page.status_code == 200
    assert "<title>pinfold</title>" in page.text
    assert cluster.http.get("/dashboard/app.js").status_code == 200


@pytest.mark.parametrize(
    ("image", "agents_asked", "why"),
    [
        ("/etc/passwd", 1, "not inside an image directory"),
        ("{images}/absent.qcow2", 1, "does not exist"),
        ("images/base.qcow2", 0, "an absolute path"),
        ("{images}/../../etc/passwd", 0, "'..'"),
        ("/var/lib/images/./base.qcow2", 0, "'.'"),
    ],
    ids=["outside-the-image-dirs", "absent", "relative", "dot-dot", "dot"],
)
def test_an_image_no_agent_can_use_is_a_400_at_once_and_nothing_is_left(
    cluster, tmp_path, monkeypatch, image, agents_asked, why
):
    """A path of the wrong shape is refused before any agent is asked; one
    the first agent refuses as an invalid request ends the search there
    (images are at the same paths on every host), not after every host."""
    images = tmp_path / "images"
    images.mkdir()
    for host_id in ("h1", "h2", "h3"):
        cluster.add_host(host_id, settings=AgentSettings(domain_type="qemu", image_dirs=(images,)))
    asked: list[str] = []
    create_on_agent = AgentClient.create

    def recording(self: AgentClient, request: VMRequest) -> dict[str, Any]:
        asked.append(request.name)
        return create_on_agent(self, request)

    monkeypatch.setattr(AgentClient, "create", recording)
    body = {"name": "bad", "vcpus": 1, "memory_mib": 128, "image": image.format(images=images)}
    response = cluster.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid request"
    assert why in response.json()["detail"]
    assert len(asked) == agents_asked
    assert cluster.http.get("/api/v1/vms").json() == []
    assert agents_vms(cluster) == {"h1": set(), "h2": set(), "h3": set()}


def test_health_metrics_openapi_and_the_dashboard_need_no_token(cluster):
    for path in ("/healthz", "/metrics", "/openapi.json", "/", "/dashboard/app.js"):
        assert httpx.get(cluster.url + path).status_code == 200, path


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/nowhere", 404, "not found"),
        ("GET", "/api/v1/vms/a/b/c", 404, "not found"),
        ("PUT", "/api/v1/vms", 405, "method not allowed"),
        ("DELETE", "/healthz", 405, "method not allowed"),
        ("GET", "/dashboard/missing.js", 404, "not found"),
    ],
    ids=["no-route", "too-deep", "put-vms", "delete-healthz", "missing-asset"],
)
def test_fastapis_own_errors_have_the_error_shape_too(cluster, method, path, status, error):
    response = cluster.http.request(method, path)
    assert response.status_code == status
    body = response.json()
    assert (set(body), body["error"], body["code"]) == ({"error", "code", "detail"}, error, error)
    assert path in body["detail"]


def test_slackvm_status_is_open_to_the_networks_opened_to_slackvm(tmp_path, i7):
    cluster = LocalCluster(
        tmp_path, f"sqlite:///{tmp_path / 'c.db'}", i7, slackvm_open_networks=("127.0.0.0/8",)
    )
    try:
        host = cluster.add_host("h1")
        assert set(httpx.get(f"{cluster.url}/status").json()) == {host.served.url}
        assert httpx.get(f"{cluster.url}/api/v1/hosts").status_code == 401  # the rest of the API is not
    finally:
        cluster.close()


def test_a_token_in_the_query_opens_only_slackvms_routes(tmp_path, i7):
    """A token in a URL ends up in logs and browser history: only SlackVM's
    routes (whose tools can send no header) take `?token=`."""
    cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", i7)
    cluster.http.headers.pop("Authorization")
    try:
        cluster.add_host("h1")
        body = {"name": "q", "vcpus": 1, "memory_mib": 64}
        response = cluster.http.post(f"/api/v1/vms?token={ADMIN}", json=body)
        assert response.status_code == 401, response.text
        assert cluster.http.get(f"/api/v1/vms?token={ADMIN}").status_code == 401
        heartbeat = cluster.http.post(f"/api/v1/hosts/h1/heartbeat?token={AGENT}", json={})
        assert heartbeat.status_code == 401
        assert cluster.controller.vms() == []
        deployed = cluster.http.get(f"/deploy?name=q&cpu=1&mem=1&oc=1&qcow2=&token={ADMIN}")
        assert deployed.json() == {"reason": None, "success": True}
    finally:
        cluster.close()


def metric(text: str, name: str) -> float | None:
    """The value of one sample line of Prometheus text, None when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_slackvm_global_routes_keep_slackvms_shapes_and_metrics_follow(cluster):
    hosts = [cluster.add_host("h1"), cluster.add_host("h2")]
    token = f"token={ADMIN}"
    running = 'pinfold_controller_vms{state="running"}'
    before = cluster.http.get("/metrics").text
    assert metric(before, 'pinfold_hosts{state="up"}') == 2.0
    assert metric(before, running) is None
    assert metric(before, "pinfold_create_seconds_count") == 0.0

    deployed = cluster.http.get(f"/deploy?name=a&cpu=2&mem=1&oc=2.0&qcow2=&{token}")
    assert deployed.json() == {"reason": None, "success": True}
    vm = cluster.http.get("/api/v1/vms/a").json()
    agent = cluster.hosts[vm["host"]]
    assert (vm["vcpus"], vm["memory_mib"], vm["ratio"], vm["state"]) == (2, 1024, 2.0, "running")
    again = cluster.http.get(f"/deploy?name=a&cpu=2&mem=1&oc=2.0&qcow2=&{token}")
    assert again.json() == {"reason": "duplicate name", "success": False}  # as SlackVM: a name is taken

    def slackvm_status() -> Any:
        return cluster.http.get("/status", headers=ADMIN_AUTH).json()

    # host address -> that host's own SlackVM status, as its heartbeats carry it
    expected = {host.served.url: httpx.get(f"{host.served.url}/status").json() for host in hosts}
    cluster.wait(lambda: slackvm_status() == expected, "the heartbeats to carry the new status")
    subset = expected[agent.served.url]["cpu"]["subset"]["2.0"]
    assert set(subset) == {"pcap", "palloc", "vavail", "vpotential"}
    assert subset["palloc"] == 2
    assert set(expected[agent.served.url]["mem"]["subset"]["1"]) == {"pcap", "palloc", "vavail", "vpotential"}

    after = cluster.http.get("/metrics").text
    assert metric(after, running) == 1.0
    assert metric(after, "pinfold_create_seconds_count") == 2.0

    assert cluster.http.get(f"/remove?name=a&{token}").json() == {"reason": None, "success": True}
    assert cluster.http.get(f"/remove?name=a&{token}").json() == {
        "reason": "Unregistered VM",
        "success": False,
    }
    assert metric(cluster.http.get("/metrics").text, running) is None
