"""Live migration between two real sim agents on loopback (the protocol in
docs/agent.md, "Live migration"): the routes as the controller calls them,
the vNodes on both sides, the refusals, and what a restart makes of each
crash point's pending mark."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinfold.agent.api import create_app
from pinfold.agent.domain import DomainSpec
from pinfold.agent.drivers import SimDriver
from pinfold.agent.migration import Outgoing
from pinfold.agent.reconcile import Action
from pinfold.agent.seed import MAX_SEED_BYTES
from pinfold.agent.service import Agent, AgentSettings, VMRequest
from pinfold.agent.store import Pending, Store
from pinfold.model.lifecycle import VMState
from pinfold.topology import Topology
from tests.agent.conftest import qemu_img_or_skip
from tests.servers import Served

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Host:
    name: str
    agent: Agent
    driver: SimDriver
    http: httpx.Client

    def vnodes(self) -> dict[str, list[int]]:
        return dict(self.http.get("/api/v1/host").json()["vnodes"])

    def vms(self) -> dict[str, dict[str, Any]]:
        return {vm["name"]: vm for vm in self.http.get("/api/v1/vms").json()}


@pytest.fixture
def hosts(tmp_path: Path, i7: Topology) -> Iterator[tuple[Host, Host]]:
    """Two sim agents ("a" and "b"), each a real server with its own store,
    both with a started network `net` for NICs."""
    with ExitStack() as stack:
        made = []
        for name in ("a", "b"):
            driver = SimDriver(networks=["net"])
            store = Store(tmp_path / name / "agent.db")
            agent = Agent.open(i7, driver, store, AgentSettings(domain_type="qemu"))
            stack.callback(agent.close)
            served = Served(create_app(agent, TOKEN))
            stack.callback(served.stop)
            http = stack.enter_context(httpx.Client(base_url=served.url, timeout=10))
            made.append(Host(name, agent, driver, http))
        yield made[0], made[1]


def pins_of(driver: SimDriver, domain: str) -> frozenset[int]:
    """The CPUs the hypervisor has guest `domain` on."""
    spec = driver.info(domain).spec
    assert spec is not None
    return spec.cpuset


def create(host: Host, name: str, vcpus: int, ratio: float, **more: Any) -> dict[str, Any]:
    body = {"name": name, "vcpus": vcpus, "memory_mib": 512, "ratio": ratio, **more}
    answer = host.http.post("/api/v1/vms", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def prepare_body(source: httpx.Client, host: str, name: str, auth: dict[str, str] = AUTH) -> dict[str, Any]:
    """A prepare's body as the controller makes it: the source's view of
    VM `name`, and its cloud-init seed when it has one (`auth`: the source's token)."""
    body: dict[str, Any] = {"vm": source.get(f"/api/v1/vms/{name}").json(), "source": host}
    seed = source.get(f"/api/v1/vms/{name}/seed", headers=auth)
    if seed.status_code == 200:
        body["seed"] = base64.b64encode(seed.content).decode()
    else:
        assert seed.json()["error"] == "not found", seed.text
    return body


def prepare(target: Host, source: Host, name: str) -> httpx.Response:
    return target.http.post(
        "/api/v1/migrations", json=prepare_body(source.http, source.name, name), headers=AUTH
    )


def send(source: Host, target: Host, name: str, prepared: dict[str, Any]) -> httpx.Response:
    body = {"target": target.name, **{key: prepared[key] for key in ("cpus", "libvirt_uri", "migrate_uri")}}
    return source.http.post(f"/api/v1/vms/{name}/migrate", json=body, headers=AUTH)


def test_a_vm_moves_the_source_vnode_shrinks_and_the_target_grows(hosts):
    a, b = hosts
    create(a, "web", 4, 1.0, nics=[{"network": "net"}])
    create(a, "other", 1, 1.0)
    create(b, "neighbour", 2, 2.0)  # alone, its level spreads over the free CPUs
    mac = a.vms()["web"]["nics"][0]["mac"]
    a_before = a.vnodes()["1.0"]
    assert "1.0" not in b.vnodes()
    neighbour_before = b.vms()["neighbour"]["pinning"]

    prepared = prepare(b, a, "web")
    assert prepared.status_code == 201, prepared.text
    answer = prepared.json()
    assert answer == {"name": "web", "cpus": answer["cpus"], "libvirt_uri": None, "migrate_uri": None,
                      "domain_xml": None}  # fmt: skip
    assert b.vms()["web"]["state"] == "incoming"
    assert len(b.vnodes()["1.0"]) == 4  # the level's vNode grew from nothing
    assert answer["cpus"] == b.vms()["web"]["pinning"] == sorted(b.vnodes()["1.0"])
    neighbour = b.vms()["neighbour"]["pinning"]
    assert neighbour != neighbour_before  # re-pinned off the CPUs the vNode took
    assert not set(neighbour) & set(answer["cpus"])
    assert pins_of(b.driver, "neighbour") == frozenset(neighbour)

    sent = send(a, b, "web", answer)
    assert sent.status_code == 200, sent.text
    assert sent.json() == {"name": "web", "target": "b", "seconds": 0.0, "downtime_ms": None}
    assert "web" not in a.vms()
    assert len(a.vnodes()["1.0"]) < len(a_before)
    assert a.vms()["other"]["pinning"] == sorted(a.vnodes()["1.0"])

    committed = b.http.post("/api/v1/migrations/web/commit", headers=AUTH)
    assert committed.status_code == 200, committed.text
    vm = committed.json()
    assert (vm["state"], vm["pinning"]) == ("running", answer["cpus"])
    assert [nic["mac"] for nic in vm["nics"]] == [mac]
    assert [nic["network"] for nic in vm["nics"]] == ["net"]
    assert pins_of(b.driver, "web") == frozenset(answer["cpus"])
    # a retried commit answers the same; the store agrees after a restart
    assert b.http.post("/api/v1/migrations/web/commit", headers=AUTH).json()["state"] == "running"
    assert a.agent.find("web") is None
    stored = b.agent.find("web")
    assert stored is not None
    assert stored.pending is None


def test_a_target_without_room_refuses_and_stores_nothing(hosts):
    a, b = hosts
    create(a, "big", 4, 1.0)
    create(b, "fill", 6, 1.0)
    vms, vnodes = b.vms(), b.vnodes()
    refused = prepare(b, a, "big")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "not enough cpu"
    assert (b.vms(), b.vnodes()) == (vms, vnodes)
    assert b.agent.find("big") is None


def test_a_name_taken_on_the_target_is_refused(hosts):
    a, b = hosts
    create(a, "web", 1, 1.0)
    create(b, "web", 1, 1.0)
    refused = prepare(b, a, "web")
    assert refused.status_code == 409
    assert refused.json()["error"] == "duplicate name"
    assert b.vms()["web"]["state"] == "running"


def test_only_a_running_vm_migrates(hosts):
    a, b = hosts
    create(a, "web", 1, 1.0)
    assert a.http.post("/api/v1/vms/web/shutdown", headers=AUTH).json()["state"] == "shutoff"
    answer = prepare(b, a, "web").json()
    refused = send(a, b, "web", answer)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "invalid"
    assert a.vms()["web"]["state"] == "shutoff"
    assert a.driver.info("web").state.value == "shutoff"


def test_a_commit_before_the_guest_arrived_is_refused_and_abort_releases(hosts):
    a, b = hosts
    create(a, "web", 2, 2.0)
    before = b.vnodes()
    answer = prepare(b, a, "web").json()
    refused = b.http.post("/api/v1/migrations/web/commit", headers=AUTH)
    assert refused.status_code == 409
    assert refused.json() == {"error": "invalid", "code": "invalid", "detail": refused.json()["detail"]}
    assert "has not arrived" in refused.json()["detail"]
    assert b.vms()["web"]["state"] == "incoming"  # the reservation stays for the migration to come
    assert b.vnodes()["2.0"] == [0, 4]
    assert b.vms()["web"]["pinning"] == answer["cpus"]
    for _ in range(2):  # idempotent
        assert b.http.delete("/api/v1/migrations/web", headers=AUTH).status_code == 204
    assert "web" not in b.vms()
    assert b.vnodes() == before
    assert b.http.delete("/api/v1/migrations/never", headers=AUTH).status_code == 204


def test_a_failed_migration_leaves_the_vm_running_on_the_source(hosts):
    a, b = hosts
    create(a, "web", 1, 1.0)
    answer = prepare(b, a, "web").json()
    a.driver.migration_failure = "the target's daemon went away"
    failed = send(a, b, "web", answer)
    assert failed.status_code == 502
    assert failed.json()["error"] == "migration failed"
    assert "the target's daemon went away" in failed.json()["detail"]
    assert a.vms()["web"]["state"] == "running"
    assert a.driver.info("web").state.value == "running"
    stored = a.agent.find("web")
    assert stored is not None
    assert stored.pending is None
    assert b.http.delete("/api/v1/migrations/web", headers=AUTH).status_code == 204
    assert "web" not in b.vms()


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPJQep4eS/coYUOy+Uh+HQ/PXtPmYwjCkZNEkZnPROFW alice@laptop"


def test_a_seeded_vm_takes_its_seed_along_and_an_abort_removes_the_targets(hosts):
    """The seed goes to the target byte for byte (the same instance-id) at
    the target's own path; an abort removes it, a send removes the source's."""
    a, b = hosts
    create(a, "web", 1, 1.0, ssh_keys=[KEY])
    source_seed = a.agent.seeds.existing("web")
    assert source_seed is not None
    image = source_seed.read_bytes()
    assert a.http.get("/api/v1/vms/web/seed", headers=AUTH).content == image

    assert prepare(b, a, "web").status_code == 201
    target_seed = b.agent.seeds.existing("web")
    assert target_seed is not None
    assert target_seed != source_seed
    assert target_seed.read_bytes() == image
    assert b.http.delete("/api/v1/migrations/web", headers=AUTH).status_code == 204
    assert b.agent.seeds.existing("web") is None

    answer = prepare(b, a, "web").json()
    assert send(a, b, "web", answer).status_code == 200
    assert a.agent.seeds.existing("web") is None
    assert b.http.post("/api/v1/migrations/web/commit", headers=AUTH).status_code == 200
    assert b.agent.seeds.read("web") == image
    spec = b.driver.info("web").spec
    assert spec is not None
    assert spec.seed == target_seed


def test_a_seed_that_is_no_iso_or_too_large_is_refused_and_nothing_stored(hosts):
    a, b = hosts
    vm = {"name": "web", "vcpus": 1, "memory_mib": 512, "ratio": 1.0}
    too_large = b"\0" * (MAX_SEED_BYTES + 1)
    for seed, status in ((b"not an iso", 400), (too_large, 400), ("!!", 422), ("abc", 400)):
        text = base64.b64encode(seed).decode() if isinstance(seed, bytes) else seed
        refused = b.http.post(
            "/api/v1/migrations", json={"vm": vm, "source": "a", "seed": text}, headers=AUTH
        )
        assert refused.status_code == status, refused.text
        assert refused.json()["error"] == "invalid request"
    assert b.vms() == {}
    assert not b.agent.seeds.directory.exists() or list(b.agent.seeds.directory.iterdir()) == []
    assert a.http.get("/api/v1/vms/none/seed", headers=AUTH).json()["error"] == "unknown vm"


def test_a_restart_removes_the_seeds_a_crash_left_on_either_side(tmp_path, i7):
    """Target killed after writing the seed (no row: `incoming:seeded`) or
    with its reservation stored but no guest (`drop`); source killed after
    the guest left (`left`): no seed stays behind."""
    seed = Agent.open(i7, SimDriver(), Store(tmp_path / "x.db"), AgentSettings(domain_type="qemu"))
    seed.create(VMRequest("x", 1, 256, 1.0, ssh_keys=(KEY,)))
    image = seed.seed_of("x")
    seed.close()
    settings = AgentSettings(domain_type="qemu")
    target = Agent.open(i7, SimDriver(), Store(tmp_path / "b.db"), settings)
    target.seeds.write_image("orphan", image)  # written, then killed before the row
    target.prepare_incoming(VMRequest("never", 1, 256, 1.0), "never", "a", image)
    assert target.seeds.existing("never") is not None
    target.close()
    again = Agent.open(i7, SimDriver(), Store(tmp_path / "b.db"), settings)
    assert {step.name: step.action for step in again.report} == {"never": Action.DROP}
    assert list(again.seeds.directory.glob("*.iso")) == []
    again.close()

    driver = SimDriver()
    source = Agent.open(i7, driver, Store(tmp_path / "a.db"), settings)
    source.create(VMRequest("left", 1, 256, 1.0, ssh_keys=(KEY,)))
    source.close()
    store = Store(tmp_path / "a.db")
    store.set_state("left", VMState.MIGRATING, Pending.MIGRATE_OUT)
    store.close()
    driver.delete("left")
    source = Agent.open(i7, driver, Store(tmp_path / "a.db"), settings)
    assert {step.name: step.action for step in source.report} == {"left": Action.LEFT}
    assert list(source.seeds.directory.glob("*.iso")) == []
    source.close()


def test_a_migration_past_its_time_limit_is_cancelled_and_the_vm_stays(hosts):
    """A send the driver cancels at `migration_timeout_s` (the sim's
    `migration_s`: one that would take longer) answers 504 and keeps the VM."""
    a, b = hosts
    create(a, "web", 1, 1.0)
    answer = prepare(b, a, "web").json()
    a.driver.migration_s = a.agent.settings.migration_timeout_s + 1
    failed = send(a, b, "web", answer)
    assert failed.status_code == 504, failed.text
    assert failed.json()["error"] == "migration timed out"
    assert "cancelled" in failed.json()["detail"]
    assert a.vms()["web"]["state"] == "running"
    assert a.driver.info("web").state.value == "running"


def test_no_delete_while_a_vm_is_incoming(hosts):
    a, b = hosts
    create(a, "web", 1, 1.0)
    prepare(b, a, "web")
    refused = b.http.delete("/api/v1/vms/web", headers=AUTH)
    assert refused.status_code == 409
    assert b.vms()["web"]["state"] == "incoming"


GOOD_VM = {"name": "web", "vcpus": 1, "memory_mib": 512, "ratio": 1.0}


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/api/v1/migrations", {"source": "a"}),
        ("/api/v1/migrations", {"vm": GOOD_VM}),
        ("/api/v1/migrations", {"vm": {**GOOD_VM, "vcpus": "1"}, "source": "a"}),
        ("/api/v1/migrations", {"vm": {**GOOD_VM, "vcpus": 0}, "source": "a"}),
        ("/api/v1/migrations", {"vm": {**GOOD_VM, "name": "a b"}, "source": "a"}),
        ("/api/v1/migrations", {"vm": {**GOOD_VM, "nics": [{"network": "net"}]}, "source": "a"}),
        ("/api/v1/migrations", {"vm": GOOD_VM, "source": "a", "extra": 1}),
        ("/api/v1/migrations", {"vm": GOOD_VM, "source": ""}),
        ("/api/v1/vms/web/migrate", {"target": "b"}),
        ("/api/v1/vms/web/migrate", {"target": "b", "cpus": []}),
        ("/api/v1/vms/web/migrate", {"target": "b", "cpus": [-1]}),
        ("/api/v1/vms/web/migrate", {"target": "b", "cpus": [0], "migrate_uri": "http://x"}),
        ("/api/v1/vms/web/migrate", {"target": "b", "cpus": [0], "libvirt_uri": "no uri"}),
    ],
    ids=[
        "no-vm", "no-source", "vcpus-string", "vcpus-zero", "bad-name", "nic-without-mac", "extra-field",
        "empty-source", "no-cpus", "empty-cpus", "negative-cpu", "migrate-uri-not-tcp", "libvirt-uri-not-uri",
    ],
)  # fmt: skip
def test_bad_bodies_are_422_and_change_nothing(hosts, route, body):
    a, _ = hosts
    create(a, "web", 1, 1.0)
    before = (a.vms(), a.vnodes())
    answer = a.http.post(route, json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid request"
    assert (a.vms(), a.vnodes()) == before


@pytest.mark.parametrize(
    ("method", "route"),
    [("POST", "/api/v1/migrations"), ("POST", "/api/v1/vms/web/migrate"),
     ("POST", "/api/v1/migrations/web/commit"), ("DELETE", "/api/v1/migrations/web")],
)  # fmt: skip
def test_every_route_needs_the_token(hosts, method, route):
    a, _ = hosts
    assert a.http.request(method, route, json={}).status_code == 401


def test_a_restart_drops_an_incoming_vm_that_never_came_and_keeps_one_that_did(tmp_path, i7):
    """The target died after its prepare: "came" arrived before (its domain
    is here), "never" did not."""
    driver = SimDriver()
    agent = Agent.open(i7, driver, Store(tmp_path / "b.db"), AgentSettings(domain_type="qemu"))
    for name in ("came", "never"):
        agent.prepare_incoming(VMRequest(name, 1, 256, 2.0), name, "a")
    driver.create(DomainSpec("came", 1, 256, frozenset({7}), 2.0))  # on a CPU not its vNode's
    agent.close()
    again = Agent.open(i7, driver, Store(tmp_path / "b.db"), AgentSettings(domain_type="qemu"))
    assert {step.name: step.action for step in again.report} == {"came": Action.ARRIVED, "never": Action.DROP}
    came = again.find("came")
    assert came is not None
    assert (came.state, came.pending) == (VMState.RUNNING, None)
    assert again.find("never") is None
    assert pins_of(driver, "came") == frozenset(again.pinning("came"))  # pins checked
    assert len(again.vnode_layout()[2.0]) == 1  # the room "never" held is given back
    again.close()


def test_a_restart_forgets_a_vm_that_left_and_keeps_one_still_here(tmp_path, i7):
    """The source died while it sent: "left" had gone, "stayed" had not."""
    driver = SimDriver()
    agent = Agent.open(i7, driver, Store(tmp_path / "a.db"), AgentSettings(domain_type="qemu"))
    agent.create(VMRequest("left", 4, 256, 2.0))
    agent.create(VMRequest("stayed", 1, 256, 2.0))
    assert len(agent.vnode_layout()[2.0]) == 4
    agent.close()
    store = Store(tmp_path / "a.db")
    for name in ("left", "stayed"):  # as `migrate_out` marks them before the driver moves them
        store.set_state(name, VMState.MIGRATING, Pending.MIGRATE_OUT)
    store.close()
    driver.delete("left")  # it went to the target before the crash
    again = Agent.open(i7, driver, Store(tmp_path / "a.db"), AgentSettings(domain_type="qemu"))
    assert {step.name: step.action for step in again.report} == {"left": Action.LEFT, "stayed": Action.STAY}
    assert again.find("left") is None
    stayed = again.find("stayed")
    assert stayed is not None
    assert (stayed.state, stayed.pending) == (VMState.RUNNING, None)
    assert len(again.vnode_layout()[2.0]) == 1  # the room "left" held is given back
    assert pins_of(driver, "stayed") == frozenset(again.pinning("stayed"))
    again.close()


@pytest.fixture
def shared_hosts(tmp_path: Path, i7: Topology) -> Iterator[tuple[Agent, Agent, Path]]:
    """Two sim agents whose disks are on one shared directory, and a base image."""
    qemu_img_or_skip()
    images = tmp_path / "images"
    images.mkdir()
    base = images / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    settings = AgentSettings(
        domain_type="qemu", image_dirs=(images,), disk_dir=tmp_path / "shared", migration_storage="shared"
    )
    a = Agent.open(i7, SimDriver(), Store(tmp_path / "a.db"), settings)
    b = Agent.open(i7, SimDriver(), Store(tmp_path / "b.db"), settings)
    yield a, b, base
    a.close()
    b.close()


def test_an_abort_on_shared_storage_keeps_the_disk_the_source_runs_on(shared_hosts):
    a, b, base = shared_hosts
    a.create(VMRequest("web", 1, 256, 1.0, image=str(base)))
    disk = a.disk_allocated_bytes("web")
    assert disk is not None
    b.prepare_incoming(VMRequest("web", 1, 256, 1.0, image=str(base)), "web", "a")
    b.abort_incoming("web")
    assert a.disk_allocated_bytes("web") is not None  # the source's disk is the target's too
    stored = b.find("web")
    assert stored is None


def test_a_migration_on_shared_storage_leaves_the_disk_to_the_target(shared_hosts):
    a, b, base = shared_hosts
    a.create(VMRequest("web", 1, 256, 1.0, image=str(base)))
    incoming = b.prepare_incoming(VMRequest("web", 1, 256, 1.0, image=str(base)), "web", "a")
    a.migrate_out("web", Outgoing("b", frozenset(incoming.cpus), None, None))
    assert b.commit_incoming("web").state is VMState.RUNNING
    assert b.disk_allocated_bytes("web") is not None
