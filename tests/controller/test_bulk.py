"""Bulk creates through the controller's REST API, with real sim agents on
loopback, on SQLite and PostgreSQL: one request with `count` and a name
pattern (or `names`), placed in one pass and created on the agents in
parallel; best-effort and all-or-nothing when not all fit; the same hosts as
one-by-one creates; repeated requests; bodies refused whole."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pinfold.agent.service import VMRequest
from pinfold.controller.api import create_app as controller_app
from pinfold.controller.database import connect
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore
from pinfold.topology import Topology
from tests.controller.cluster import ADMIN, ADMIN_AUTH, AGENT, PERIOD_S, STALE_AFTER_S, LocalCluster
from tests.servers import Served

#: a quarter of an i7 host's 8 CPUs: at most 4 such VMs a host
QUARTER = {"vcpus": 2, "memory_mib": 512, "ratio": 1.0}


@pytest.fixture
def cluster(tmp_path: Path, database_url: str, i7: Topology) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, database_url, i7)
    yield local
    local.close()


def on_agents(cluster: LocalCluster) -> dict[str, str]:
    """Each VM the agents have -> its host."""
    return {vm.spec.name: host_id for host_id, host in cluster.hosts.items() for vm in host.agent.user_vms()}


def in_directory(cluster: LocalCluster) -> dict[str, str]:
    return {vm["name"]: vm["host"] for vm in cluster.http.get("/api/v1/vms").json()}


def test_a_bulk_that_fits_is_placed_in_one_request_and_runs_on_the_agents(cluster):
    for host in ("h1", "h2", "h3"):
        cluster.add_host(host)
    response = cluster.http.post("/api/v1/vms", json={"name": "ci-{n}", "count": 6, "start": 3, **QUARTER})
    assert response.status_code == 201, response.text
    answer = response.json()
    assert (answer["requested"], answer["created"], answer["refused"]) == (6, 6, 0)
    names = [vm["name"] for vm in answer["vms"]]
    assert names == [f"ci-{n}" for n in range(3, 9)]
    assert {vm["result"] for vm in answer["vms"]} == {"created"}
    assert all(vm["state"] == "running" and len(vm["pinning"]) > 0 for vm in answer["vms"])
    assert on_agents(cluster) == {vm["name"]: vm["host"] for vm in answer["vms"]}
    assert in_directory(cluster) == on_agents(cluster)
    # each step's time (milliseconds), for benchmarks: bench_controller bulk reads it
    steps = [part.split(";dur=")[0] for part in response.headers["server-timing"].split(", ")]
    assert steps == ["check", "reserve", "agents", "alone", "total"]
    metrics = cluster.http.get("/metrics").text
    assert 'pinfold_bulk_create_seconds_count{phase="agents"} 1.0' in metrics


def fill(cluster: LocalCluster, hosts: int) -> int:
    """`hosts` hosts, and how many QUARTER VMs they take in all."""
    for i in range(hosts):
        cluster.add_host(f"h{i}")
    return 4 * hosts


@pytest.mark.parametrize("mode", ["best-effort", None])
def test_best_effort_creates_what_fits_and_refuses_the_rest_with_reasons(cluster, mode):
    room = fill(cluster, 2)
    body = {"names": [f"b{i}" for i in range(room + 2)], **QUARTER} | ({"mode": mode} if mode else {})
    response = cluster.http.post("/api/v1/vms", json=body)
    assert response.status_code == 207, response.text
    answer = response.json()
    assert (answer["mode"], answer["created"], answer["refused"]) == ("best-effort", room, 2)
    refused = [vm for vm in answer["vms"] if vm["result"] == "refused"]
    assert [vm["name"] for vm in refused] == [f"b{room}", f"b{room + 1}"]
    for vm in refused:
        assert vm["error"] == "no host"
        assert vm["summary"].startswith("0/2 hosts fit: 2 not enough cpu"), vm["summary"]
        assert set(vm["refusals"]) == {"h0", "h1"}
        assert vm["refusals"]["h0"]["code"] == "not enough cpu"
    created = {vm["name"]: vm["host"] for vm in answer["vms"] if vm["result"] == "created"}
    assert on_agents(cluster) == created == in_directory(cluster)


def test_all_or_nothing_that_cannot_fit_leaves_nothing_and_says_which_and_why(cluster):
    room = fill(cluster, 2)
    body = {"name": "all-{n}", "count": room + 1, "mode": "all-or-nothing", **QUARTER}
    response = cluster.http.post("/api/v1/vms", json=body)
    assert response.status_code == 409, response.text
    answer = response.json()
    assert answer["error"] == "no host"
    assert f"all-{room}" in answer["detail"]
    assert (answer["requested"], answer["created"], answer["refused"]) == (room + 1, 0, 1)
    assert [vm["name"] for vm in answer["vms"]] == [f"all-{room}"]
    assert answer["vms"][0]["summary"].startswith("0/2 hosts fit")
    assert on_agents(cluster) == {} == in_directory(cluster)
    # the room was given back: the same bulk, one fewer, fits whole
    body["count"] = room
    assert cluster.http.post("/api/v1/vms", json=body).status_code == 201


def test_a_bulk_uses_the_same_hosts_as_one_by_one_creates(tmp_path, i7):
    """On two fresh clusters of five hosts: 14 VMs of mixed sizes one by one,
    and the same 14 in bulk creates of one size each, land on the same hosts."""
    sizes = [QUARTER, {"vcpus": 1, "memory_mib": 256, "ratio": 2.0}]
    hosts = []
    for kind in ("single", "bulk"):
        local = LocalCluster(tmp_path / kind, f"sqlite:///{tmp_path / kind}.db", i7)
        try:
            for i in range(5):
                local.add_host(f"h{i}")
            for size_index, size in enumerate(sizes):
                names = [f"s{size_index}-{n}" for n in range(7)]
                if kind == "single":
                    for name in names:
                        assert local.http.post("/api/v1/vms", json={"name": name, **size}).status_code == 201
                else:
                    assert local.http.post("/api/v1/vms", json={"names": names, **size}).status_code == 201
            hosts.append(in_directory(local))
        finally:
            local.close()
    assert hosts[0] == hosts[1]
    assert len(set(hosts[0].values())) > 1


def test_a_repeated_bulk_returns_the_vms_it_made_and_makes_none_twice(cluster):
    fill(cluster, 2)
    body = {"name": "rep-{n}", "count": 3, **QUARTER}
    first = cluster.http.post("/api/v1/vms", json=body)
    assert first.status_code == 201, first.text
    again = cluster.http.post("/api/v1/vms", json=body)
    assert again.status_code == 200, again.text
    assert {vm["result"] for vm in again.json()["vms"]} == {"existing"}
    hosts = {vm["name"]: vm["host"] for vm in first.json()["vms"]}
    assert {vm["name"]: vm["host"] for vm in again.json()["vms"]} == hosts
    # overlapping: two there already, one new
    more = cluster.http.post("/api/v1/vms", json={**body, "start": 1})
    assert more.status_code == 201, more.text
    assert [vm["result"] for vm in more.json()["vms"]] == ["existing", "existing", "created"]
    assert len(on_agents(cluster)) == 4 == len(in_directory(cluster))


@pytest.mark.parametrize(
    "extra",
    [
        {"name": "c-{n}", "count": 0},
        {"name": "c-{n}", "count": 1001},
        {"name": "c-{n}", "count": True},
        {"name": "c", "count": 2},
        {"name": "-{n}", "count": 2},
        {"name": "c-{n}-{n}", "count": 2},
        {"name": "c-{n}-{m}", "count": 2},
        {"name": "c" * 62 + "{n}", "count": 11},
        {"names": ["a", "b", "a"]},
        {"names": []},
        {"names": ["ok", "not ok"]},
        {"name": "c-{n}", "count": 2, "names": ["a", "b"]},
        {"name": "c-{n}", "names": ["a", "b"]},
        {"names": ["a", "b"], "start": 1},
        {"names": ["a", "b"], "mode": "some"},
        {"names": ["a", "b"], "vcpus": 0},
    ],
)
def test_a_bad_bulk_body_is_refused_whole(cluster, extra):
    cluster.add_host("h1")
    response = cluster.http.post("/api/v1/vms", json={**QUARTER, **extra})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid request"
    assert in_directory(cluster) == {} == on_agents(cluster)


def test_a_single_creates_errors_read_as_before(cluster):
    response = cluster.http.post("/api/v1/vms", json={"name": "x", "vcpus": "2", "memory_mib": 512})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body.vcpus: "), response.json()


def test_two_bulk_creates_on_two_replicas_never_over_allocate_nor_make_a_vm_twice(cluster, database_url):
    """Two controllers on one database, each taking a bulk of the same 24 names
    at once, for 4 hosts with room for 16: each name is made once, on one
    host, and no host holds more than its room (the agents refuse nothing)."""
    if database_url.startswith("sqlite"):
        pytest.skip("replicas share a PostgreSQL database")
    room = fill(cluster, 4)
    second = Controller(
        ControllerStore(connect(database_url)), cluster.clients, heartbeat_period_s=PERIOD_S,
        stale_after_s=STALE_AFTER_S,
    )  # fmt: skip
    served = Served(controller_app(second, ADMIN, AGENT))
    body = {"name": "r-{n}", "count": room + 8, **QUARTER}

    def create(url: str) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60, headers=ADMIN_AUTH) as http:
            return http.post("/api/v1/vms", json=body)

    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(create, [cluster.url, served.url]))
        assert [a.status_code for a in answers] == [207, 207], [a.text for a in answers]
        made = {
            vm["name"]: vm["host"] for a in answers for vm in a.json()["vms"] if vm["result"] != "refused"
        }
        assert len(made) == room
        assert on_agents(cluster) == made == in_directory(cluster)
        per_host: dict[str, int] = {}
        for host in made.values():
            per_host[host] = per_host.get(host, 0) + 1
        assert max(per_host.values()) <= 4
    finally:
        served.stop()
        second.store.engine.dispose()


def test_all_or_nothing_deletes_what_the_agents_made_when_an_agent_refuses_too_many(cluster):
    """Behind the controller's back h0's agent is full: the pass reserves 5 VMs
    (4 on h0, which the picture thinks empty, 1 on h1); h0's agent refuses
    its 4, which are then tried alone, and only 3 more fit on h1. All or
    nothing: the 4 made on h1 are deleted from their agent, none is kept."""
    squatted = cluster.add_host("h0")
    cluster.add_host("h1")
    squatted.agent.create(VMRequest("squatter", 8, 1024, 1.0))
    body = {"name": "a{n}", "count": 5, "mode": "all-or-nothing", "policy": "first-fit", **QUARTER}
    response = cluster.http.post("/api/v1/vms", json=body)
    assert response.status_code == 409, response.text
    refused = response.json()["vms"]
    assert [vm["result"] for vm in refused] == ["refused"]
    assert refused[0]["refusals"]["h0"]["code"] == "not enough cpu"
    assert on_agents(cluster) == {"squatter": "h0"}
    assert in_directory(cluster) == {}


#: a second key (an ed25519 blob of bytes 0..31), to tell two creates' keys apart
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f bob@desk"


def test_a_repeated_create_with_other_keys_or_user_data_is_refused_and_the_same_gets_its_vm(cluster):
    """The directory keeps no SSH keys or user data (secrets), only a salted
    digest of them (migration 0009): a create repeated with other ones is
    409 `duplicate name` (the VM booted with the first, and would be handed
    back as if it had the second); the same ones, keys in any order, get the VM."""
    from tests.model.test_vm import ED25519

    cluster.add_host("h1")
    body = {"name": "keyed", **QUARTER, "ssh_keys": [ED25519, OTHER_KEY], "user_data": "#cloud-config\n"}
    assert cluster.http.post("/api/v1/vms", json=body).status_code == 201
    others: list[dict[str, object]] = [
        {"ssh_keys": [OTHER_KEY]}, {"user_data": "#cloud-config\npassword: x\n"}, {"ssh_keys": []},
    ]  # fmt: skip
    for other in others:
        again = cluster.http.post("/api/v1/vms", json=body | other)
        assert (again.status_code, again.json()["error"]) == (409, "duplicate name"), other
        assert "SSH keys or user data" in again.json()["detail"]
    same = cluster.http.post("/api/v1/vms", json=body | {"ssh_keys": [OTHER_KEY, ED25519]})
    assert same.status_code == 200, same.text
    # the bulk create's names already there are repeats too, judged the same way
    bulk = {"names": ["keyed", "fresh"], **QUARTER, "ssh_keys": [OTHER_KEY]}
    answer = cluster.http.post("/api/v1/vms", json=bulk).json()["vms"]
    assert [(vm["name"], vm.get("result"), vm.get("error")) for vm in answer] == [
        ("keyed", "refused", "duplicate name"), ("fresh", "created", None),
    ]  # fmt: skip
    # and the VMs a bulk reserved keep their digest: its repeat with other keys is refused
    again = cluster.http.post("/api/v1/vms", json=bulk | {"names": ["fresh"], "ssh_keys": [ED25519]})
    assert (again.status_code, again.json()["vms"][0]["error"]) == (207, "duplicate name"), again.text
    assert set(on_agents(cluster)) == {"keyed", "fresh"}
