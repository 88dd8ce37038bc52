"""Live migration through the controller with real sim agents on loopback:
the REST routes, the reservation on the target (a create's), refusals that
change nothing, failures that leave the VM running on its source, drains, and
a controller that died mid-way (its `migrating` row settled by heartbeats).
SQLite and PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from pinfold.agent.drivers import SimDriver
from pinfold.cli import app
from tests.agent.test_migration import KEY
from tests.controller.cluster import ADMIN, ADMIN_AUTH, STALE_AFTER_S, LocalCluster


@pytest.fixture
def cluster(tmp_path, database_url, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, database_url, i7)
    yield local
    local.close()


def create(
    cluster: LocalCluster, name: str, vcpus: int = 1, memory_mib: int = 512, ratio: float = 1.0
) -> None:
    body = {"name": name, "vcpus": vcpus, "memory_mib": memory_mib, "ratio": ratio}
    response = cluster.http.post("/api/v1/vms", json=body)
    assert response.status_code == 201, response.text


def vm(cluster: LocalCluster, name: str) -> dict[str, Any]:
    response = cluster.http.get(f"/api/v1/vms/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def on_agents(cluster: LocalCluster) -> dict[str, set[str]]:
    return {host_id: set(host.agent.allocator.vms) for host_id, host in cluster.hosts.items()}


def migrations(cluster: LocalCluster) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = cluster.http.get("/api/v1/migrations").json()["migrations"]
    return listed


def test_a_migration_to_a_full_host_is_refused_and_changes_nothing(cluster):
    cluster.add_host("h1")
    create(cluster, "big", vcpus=2, memory_mib=16000)
    cluster.add_host("h2")
    create(cluster, "filler", vcpus=1, memory_mib=20000)
    assert (vm(cluster, "big")["host"], vm(cluster, "filler")["host"]) == ("h1", "h2")
    before = on_agents(cluster)
    refused = cluster.http.post("/api/v1/vms/big/migrate", json={"to": "h2"})
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"] == "no host"
    assert "not enough memory" in body["hosts"]["h2"], body
    after = vm(cluster, "big")
    assert (after["host"], after["state"], after["target"]) == ("h1", "running", None)
    assert on_agents(cluster) == before
    assert migrations(cluster) == []


def test_explain_names_the_target_and_moves_nothing(cluster):
    cluster.add_host("h1")
    create(cluster, "web", vcpus=2, memory_mib=4096, ratio=2.0)
    cluster.add_host("h2")
    cluster.add_host("h3")
    create(cluster, "filler", vcpus=1, memory_mib=30000)  # h2 or h3 is full of memory
    full = vm(cluster, "filler")["host"]
    response = cluster.http.post("/api/v1/vms/web/migrate?explain=true", json={"to": None})
    assert response.status_code == 200, response.text
    choice = response.json()
    free = ({"h2", "h3"} - {full}).pop()
    assert (choice["vm"], choice["source"], choice["target"], choice["ranking"]) == (
        "web",
        "h1",
        free,
        [free],
    )
    assert "not enough memory" in choice["hosts"][full]
    assert vm(cluster, "web")["host"] == "h1"
    assert migrations(cluster) == []


def test_a_stopped_target_leaves_the_vm_running_on_its_source(cluster):
    cluster.add_host("h1")
    create(cluster, "web")
    cluster.add_host("h2").stop()
    response = cluster.http.post("/api/v1/vms/web/migrate", json={"to": "h2"})
    assert response.status_code == 502, response.text
    assert response.json()["error"] == "agent failed"
    after = vm(cluster, "web")
    assert (after["host"], after["state"], after["target"]) == ("h1", "running", None)
    assert "web" in cluster.hosts["h1"].agent.allocator
    [failed] = migrations(cluster)
    assert (failed["vm"], failed["source"], failed["target"], failed["outcome"]) == (
        "web",
        "h1",
        "h2",
        "failed",
    )
    assert "h2 did not prepare it" in failed["detail"]
    assert failed["seconds"] is not None


def no_room_for_h1s_vms(cluster: LocalCluster) -> None:
    """h1 holds two VMs of 8000 MiB, h2 has room for one only."""
    cluster.add_host("h1")
    create(cluster, "a", memory_mib=8000)
    create(cluster, "b", memory_mib=8000)
    cluster.add_host("h2")
    create(cluster, "filler", memory_mib=20000)


def test_a_drain_the_others_cannot_take_refuses_and_moves_nothing(cluster):
    no_room_for_h1s_vms(cluster)
    response = cluster.http.post("/api/v1/hosts/h1/drain", json={"migrate": True})
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "no host"
    assert "h1 (2 VMs" in body["detail"], body["detail"]
    assert "no target" in body["detail"], body["detail"]
    assert body["plan"]["migrations"] == []
    host = cluster.http.get("/api/v1/hosts/h1").json()
    assert (host["draining"], sorted(host["vms"])) == (False, ["a", "b"])
    assert migrations(cluster) == []


def test_a_migrating_vm_takes_no_action_and_no_delete(cluster):
    cluster.add_host("h1")
    create(cluster, "web")
    cluster.add_host("h2")
    controller = cluster.controller
    controller.store.reserve_migration("web", "h2", controller._fits.on_host, time.time())
    assert vm(cluster, "web")["state"] == "migrating"
    assert vm(cluster, "web")["target"] == "h2"
    for response in (cluster.http.delete("/api/v1/vms/web"), cluster.http.post("/api/v1/vms/web/shutdown")):
        assert response.status_code == 409, response.text
        assert "migrating" in response.json()["detail"]
    again = cluster.http.post("/api/v1/vms/web/migrate", json={})
    assert again.status_code == 409, again.text
    assert [m["outcome"] for m in migrations(cluster)] == [None]


@pytest.mark.parametrize("prepared", [False, True], ids=["reserved", "prepared"])
def test_a_stale_migration_whose_source_still_runs_it_goes_back(cluster, prepared):
    """The controller died after reserving (no agent asked), or after the
    target prepared: the source's heartbeats report the VM running, so the
    target's room is released, in the directory and on its agent."""
    cluster.add_host("h1")
    create(cluster, "web", memory_mib=1024)
    cluster.add_host("h2")
    controller = cluster.controller
    long_ago = time.time() - 2 * STALE_AFTER_S
    with controller._moving_lock:  # a controller at work on it...
        controller._moving.add("web")
    controller.store.reserve_migration("web", "h2", controller._fits.on_host, long_ago)
    if prepared:
        src = controller.agent_for(controller.store.host("h1"))
        dst = controller.agent_for(controller.store.host("h2"))
        dst.prepare_migration(src.get("web") or {}, "h1")
        assert cluster.hosts["h2"].agent.allocator.memory_allocated_mib == 1024
    with controller._moving_lock:  # ...which dies here
        controller._moving.discard("web")
    cluster.wait(lambda: vm(cluster, "web")["state"] == "running", "the heartbeat to settle the migration")
    after = vm(cluster, "web")
    assert (after["host"], after["target"]) == ("h1", None)
    [ended] = migrations(cluster)
    assert ended["outcome"] == "failed"
    assert "the source still has it" in ended["detail"]
    assert on_agents(cluster) == {"h1": {"web"}, "h2": set()}
    assert cluster.hosts["h2"].agent.allocator.memory_allocated_mib == 0


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [({"to": 5}, 422, "invalid request"), ({"to": "no-such-host"}, 404, "unknown host"),
     ({"to": "h1"}, 409, "invalid"), ({"to": "h2", "now": True}, 422, "invalid request")],
)  # fmt: skip
def test_bad_migrations_are_refused_and_change_nothing(cluster, body, status, error):
    cluster.add_host("h1")
    create(cluster, "web")
    cluster.add_host("h2")
    response = cluster.http.post("/api/v1/vms/web/migrate", json=body)
    assert (response.status_code, response.json()["error"]) == (status, error), response.text
    assert vm(cluster, "web")["host"] == "h1"
    assert migrations(cluster) == []
    unknown = cluster.http.post("/api/v1/vms/nothing/migrate", json={})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown vm")


def cli(cluster: LocalCluster, *args: str) -> tuple[int, str]:
    env = {"PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": ADMIN, "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_the_cli_explains_a_migration_and_a_drain_it_refuses(cluster):
    no_room_for_h1s_vms(cluster)
    code, out = cli(cluster, "vm", "migrate", "a", "--explain")
    assert code == 0, out
    assert "a on h1 would move to h2" in out
    code, out = cli(cluster, "host", "drain", "h1", "--migrate")
    assert code == 1, out
    assert "h1 (2 VMs" in out
    assert "no target" in out
    code, out = cli(cluster, "host", "drain", "h1", "--migrate", "--json")
    assert code == 1, out
    assert json.loads(out)["error"] == "no host"
    assert cluster.http.get("/api/v1/hosts/h1").json()["draining"] is False
    assert migrations(cluster) == []


def test_a_migration_moves_the_vm_and_both_hosts_numbers(cluster):
    cluster.add_host("h1")
    create(cluster, "web", vcpus=2, memory_mib=2048, ratio=2.0)
    cluster.add_host("h2")
    source, target = cluster.hosts["h1"].agent.allocator, cluster.hosts["h2"].agent.allocator
    free_before = (source.memory_allocated_mib, target.memory_allocated_mib)
    cpus_before = (source.free_cpu_count, target.free_cpu_count)
    response = cluster.http.post("/api/v1/vms/web/migrate", json={"to": None})
    assert response.status_code == 200, response.text
    moved = response.json()
    assert (moved["migration"]["source"], moved["migration"]["target"]) == ("h1", "h2")
    assert moved["migration"]["outcome"] == "done"
    assert moved["migration"]["elapsed_s"] >= 0
    assert moved["migration"]["detail"].startswith("job "), moved["migration"]  # the source's job time
    assert (moved["vm"]["host"], moved["vm"]["state"], moved["vm"]["target"]) == ("h2", "running", None)
    assert on_agents(cluster) == {"h1": set(), "h2": {"web"}}
    assert (source.memory_allocated_mib, target.memory_allocated_mib) == (
        free_before[0] - 2048, free_before[1] + 2048,
    )  # fmt: skip
    assert source.free_cpu_count > cpus_before[0]  # its level's vNode shrank away
    assert target.free_cpu_count < cpus_before[1]  # one grew for it
    # the directory's numbers
    hosts = {h["id"]: h["vms"] for h in cluster.http.get("/api/v1/hosts").json()}
    assert hosts == {"h1": [], "h2": ["web"]}
    [done] = migrations(cluster)
    assert done["outcome"] == "done"
    events = [e["kind"] for e in cluster.http.get("/api/v1/events").json()]
    assert "vm migrating" in events
    assert "vm migrated" in events
    # the target's heartbeats report it (its pins), and nothing goes missing
    cluster.wait(lambda: vm(cluster, "web")["pinning"] == sorted(target.pinning("web")), "h2's heartbeat")
    assert vm(cluster, "web")["state"] == "running"


def test_a_vm_with_a_cloud_init_seed_takes_it_along(cluster):
    """The controller carries the source's seed in the target's prepare."""
    cluster.add_host("h1")
    body = {"name": "web", "vcpus": 1, "memory_mib": 512, "ratio": 1.0, "ssh_keys": [KEY]}
    assert cluster.http.post("/api/v1/vms", json=body).status_code == 201
    cluster.add_host("h2")
    source, target = cluster.hosts["h1"].agent.seeds, cluster.hosts["h2"].agent.seeds
    image = source.read("web")
    assert image is not None
    response = cluster.http.post("/api/v1/vms/web/migrate", json={"to": "h2"})
    assert response.status_code == 200, response.text
    assert (source.read("web"), target.read("web")) == (None, image)


def test_a_migration_past_the_sources_time_limit_fails_and_releases_the_target(cluster):
    """The source cancels a send at its `migration_timeout_s` (504): the
    migration is failed, the VM runs on its source, the target holds nothing."""
    slow = SimDriver()
    slow.migration_s = 10_000.0  # a send would take longer than the source's limit
    cluster.add_host("h1", driver=slow)
    create(cluster, "web")
    cluster.add_host("h2")
    response = cluster.http.post("/api/v1/vms/web/migrate", json={"to": "h2"})
    assert response.status_code == 504, response.text
    assert response.json()["error"] == "migration timed out"
    after = vm(cluster, "web")
    assert (after["host"], after["state"], after["target"]) == ("h1", "running", None)
    assert on_agents(cluster) == {"h1": {"web"}, "h2": set()}
    [failed] = migrations(cluster)
    assert failed["outcome"] == "failed"
    assert "migration timed out" in failed["detail"]
    assert cluster.hosts["h2"].agent.find("web") is None  # the target aborted its reservation


def test_a_drain_with_migrations_empties_a_host_of_three_vms_of_two_levels(cluster):
    cluster.add_host("h1")
    create(cluster, "db", vcpus=2, memory_mib=2048, ratio=1.0)
    create(cluster, "web1", vcpus=2, memory_mib=1024, ratio=2.0)
    create(cluster, "web2", vcpus=1, memory_mib=1024, ratio=2.0)
    cluster.add_host("h2")
    cluster.add_host("h3")
    create(cluster, "other", vcpus=1, memory_mib=512, ratio=2.0)
    on_h1 = set(cluster.hosts["h1"].agent.allocator.vms)
    assert {"db", "web1", "web2"} <= on_h1
    response = cluster.http.post("/api/v1/hosts/h1/drain", json={"migrate": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["draining"], body["vms"]) == (True, [])
    assert {m["vm"] for m in body["migrations"]} == on_h1
    assert all(m["outcome"] == "done" and m["elapsed_s"] is not None for m in body["migrations"])
    assert cluster.hosts["h1"].agent.allocator.vms == {}
    landed = {name for host in ("h2", "h3") for name in cluster.hosts[host].agent.allocator.vms}
    assert landed == {"db", "web1", "web2", "other"}
    for name in on_h1:
        record = vm(cluster, name)
        assert record["host"] in ("h2", "h3")
        assert record["state"] == "running"
        assert name in cluster.hosts[record["host"]].agent.allocator


def send_web_then_die(cluster: LocalCluster) -> list[Any]:
    """Move "web" from h1 to h2 as a controller at work does (its heartbeats
    leave the VM alone meanwhile), up to the send; then that controller dies,
    before the commit. The rows of h1 as they were while it moved."""
    cluster.add_host("h1")
    create(cluster, "web")
    cluster.add_host("h2")
    controller = cluster.controller
    long_ago = time.time() - 2 * STALE_AFTER_S
    source, target = controller.store.host("h1"), controller.store.host("h2")
    assert source is not None
    assert target is not None
    src, dst = controller.agent_for(source), controller.agent_for(target)
    with controller._moving_lock:
        controller._moving.add("web")
    controller.store.reserve_migration("web", "h2", controller._fits.on_host, long_ago)
    prepared = dst.prepare_migration(src.get("web") or {}, "h1")
    src.send_migration("web", "h2", prepared)
    records: list[Any] = controller.store.vms("h1")
    with controller._moving_lock:  # it dies here
        controller._moving.discard("web")
    return records


def test_a_report_the_source_took_before_the_send_does_not_take_the_vm_back(cluster):
    """A source's heartbeat is built before it is sent: one that still names
    the VM can arrive after the guest went across. Settling it back would
    leave the only running copy on a host the row does not name (seen in CI:
    the row stayed on h1 while h2 ran the guest); the source's agent, asked
    again, no longer has it, so the migration is kept, and a later heartbeat
    lands it."""
    records = send_web_then_die(cluster)
    cluster.controller._settle("h1", records, {"web": "running"}, time.time())  # the late report
    assert [m["outcome"] for m in migrations(cluster)] in ([None], ["done"])  # not sent back
    cluster.wait(lambda: vm(cluster, "web")["host"] == "h2", "the heartbeat to land the migration")
    assert vm(cluster, "web")["state"] == "running"
    assert "web" in cluster.hosts["h2"].agent.allocator.vms


def test_a_stale_migration_whose_source_let_it_go_lands_on_the_target(cluster):
    """The controller died after the source sent the VM, before the commit:
    the source no longer reports it, so a heartbeat commits on the target."""
    send_web_then_die(cluster)
    cluster.wait(lambda: vm(cluster, "web")["host"] == "h2", "the heartbeat to land the migration")
    after = vm(cluster, "web")
    assert (after["state"], after["target"]) == ("running", None)
    assert on_agents(cluster) == {"h1": set(), "h2": {"web"}}
    assert cluster.hosts["h2"].agent.vms["web"].state == "running"
    [ended] = migrations(cluster)
    assert ended["outcome"] == "done"
    assert ended["detail"].startswith("landed by a heartbeat"), ended


def test_the_cli_migrates_and_drains_with_progress(cluster):
    cluster.add_host("h1")
    create(cluster, "a", vcpus=2, memory_mib=1024, ratio=1.0)
    create(cluster, "b", vcpus=2, memory_mib=1024, ratio=2.0)
    cluster.add_host("h2")
    code, out = cli(cluster, "vm", "migrate", "a", "--to", "h2")
    assert code == 0, out
    assert "done" in out
    assert vm(cluster, "a")["host"] == "h2"
    code, out = cli(cluster, "host", "drain", "h1", "--migrate")
    assert code == 0, out
    assert "b -> h2: done in " in out  # the progress line, with the VM's time
    assert cluster.http.get("/api/v1/hosts/h1").json()["vms"] == []
    code, out = cli(cluster, "host", "drain", "h2", "--migrate", "--explain")
    assert code == 1, out  # h1 drains: nowhere to go
    assert "no target" in out


def test_removing_a_host_by_force_ends_the_migrations_of_the_vms_it_forgets(cluster):
    """Else they stay in flight for ever, and hold the consolidation's budget."""
    cluster.add_host("h1")
    create(cluster, "web")
    cluster.add_host("h2")
    controller = cluster.controller
    controller.store.reserve_migration("web", "h2", controller._fits.on_host, time.time())
    removed = cluster.http.delete("/api/v1/hosts/h1", params={"force": "true"})
    assert removed.status_code == 200, removed.text
    [ended] = migrations(cluster)
    assert ended["outcome"] == "failed"
    assert "h1 was removed" in ended["detail"]


def test_a_migration_holds_its_room_on_the_target_against_creates(cluster):
    """While a VM moves, a create cannot take the room reserved for it on the
    target (nor its room on the source): the reservation is a create's."""
    cluster.add_host("h1")
    create(cluster, "mover", memory_mib=16000)
    cluster.add_host("h2")
    controller = cluster.controller
    with controller._moving_lock:  # a controller at work on it: its heartbeats leave it be
        controller._moving.add("mover")
    controller.store.reserve_migration("mover", "h2", controller._fits.on_host, time.time())
    late = cluster.http.post("/api/v1/vms", json={"name": "late", "vcpus": 1, "memory_mib": 20000})
    assert late.status_code == 409, late.text
    assert set(late.json()["hosts"]) == {"h1", "h2"}
    assert all("not enough memory" in why for why in late.json()["hosts"].values()), late.json()["hosts"]


def test_two_migrations_at_once_to_the_last_room_of_a_host_one_is_refused(cluster):
    """h2 has room for one of the two: exactly one moves, the other is
    refused by the reservation (`no host`), before any agent is asked."""
    cluster.add_host("h1")
    create(cluster, "a", memory_mib=16000)
    cluster.add_host("h3")
    assert cluster.http.post("/api/v1/hosts/h1/drain").status_code == 200
    create(cluster, "b", memory_mib=16000)
    assert cluster.http.post("/api/v1/hosts/h1/undrain").status_code == 200
    cluster.add_host("h2")
    start = threading.Barrier(2)

    def move(name: str) -> int:
        start.wait()
        response = httpx.post(
            f"{cluster.url}/api/v1/vms/{name}/migrate", json={"to": "h2"}, headers=ADMIN_AUTH, timeout=30
        )
        assert response.status_code in (200, 409), response.text
        if response.status_code == 409:
            assert response.json()["error"] == "no host", response.text
        return response.status_code

    with ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(move, ["a", "b"]))
    assert codes == [200, 409]
    assert len(on_agents(cluster)["h2"]) == 1
    assert [m["outcome"] for m in migrations(cluster)] == ["done"]


def test_a_migration_keeps_its_vm_groups_rule(cluster):
    """An anti-affinity member is not moved onto a host holding another
    member (refused with the group named, nothing changed), and the
    scheduler's own choice passes such hosts over; its own place on its
    source rules nothing out (a lone affinity member moves)."""
    for host in ("h1", "h2", "h3"):
        cluster.add_host(host)
    assert (
        cluster.http.post("/api/v1/groups", json={"name": "web", "policy": "anti-affinity"}).status_code
        == 201
    )
    assert cluster.http.post("/api/v1/groups", json={"name": "db", "policy": "affinity"}).status_code == 201
    for name in ("web-0", "web-1"):
        body = {"name": name, "vcpus": 1, "memory_mib": 512, "ratio": 1.0, "group": "web"}
        assert cluster.http.post("/api/v1/vms", json=body).status_code == 201
    hosts = {vm(cluster, "web-0")["host"], vm(cluster, "web-1")["host"]}
    assert len(hosts) == 2
    other = vm(cluster, "web-0")["host"]
    before = on_agents(cluster)
    refused = cluster.http.post("/api/v1/vms/web-1/migrate", json={"to": other})
    assert refused.status_code == 409, refused.text
    assert "web (anti-affinity)" in refused.json()["hosts"][other], refused.json()
    assert vm(cluster, "web-1")["state"] == "running"
    assert on_agents(cluster) == before
    (free,) = {"h1", "h2", "h3"} - hosts
    moved = cluster.http.post("/api/v1/vms/web-1/migrate", json={"to": None})
    assert moved.status_code == 200, moved.text
    assert vm(cluster, "web-1")["host"] == free
    body = {"name": "db-0", "vcpus": 1, "memory_mib": 512, "ratio": 1.0, "group": "db"}
    assert cluster.http.post("/api/v1/vms", json=body).status_code == 201
    source = vm(cluster, "db-0")["host"]
    alone = cluster.http.post("/api/v1/vms/db-0/migrate", json={"to": None})
    assert alone.status_code == 200, alone.text
    assert vm(cluster, "db-0")["host"] != source
