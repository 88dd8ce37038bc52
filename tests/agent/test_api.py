"""The agent's HTTP API over a real uvicorn server on loopback (sim driver,
real SQLite store): tokens, JSON routes, SlackVM's routes, errors, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from pinfold.agent.api import create_app
from pinfold.agent.drivers import DriverError, SimDriver
from pinfold.agent.monitor import Monitor
from pinfold.agent.pools import PoolSpec
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.model.vm import MAX_SSH_KEYS, MAX_USER_DATA_BYTES
from tests.agent.test_service import SlowShutdown
from tests.servers import serving as serving_app

TOKEN = "test-token-0123456789abcdef"


@contextmanager
def serving(tmp_path: Path, topology, open_networks: tuple[str, ...] = ()) -> Iterator[str]:
    """A real uvicorn server on loopback in front of a sim-driver agent."""
    agent = Agent.open(topology, SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    try:
        with serving_app(create_app(agent, TOKEN, slackvm_open_networks=open_networks)) as url:
            yield url
    finally:
        agent.close()


@pytest.fixture
def agent_url(tmp_path: Path, i7) -> Iterator[str]:
    with serving(tmp_path, i7) as url:
        yield url


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_create_list_show_act_and_delete(agent_url):
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        created = http.post("/api/v1/vms", json={"name": "A", "vcpus": 2, "memory_mib": 2048}, headers=AUTH)
        assert created.status_code == 201, created.text
        assert created.json()["pinning"] == [0, 4]
        http.post(
            "/api/v1/vms", json={"name": "B", "vcpus": 2, "memory_mib": 2048, "ratio": 2.0}, headers=AUTH
        )
        assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["A", "B"]
        assert http.get("/api/v1/vms/B").json()["pinning"] == [1, 2, 3, 5, 6, 7]
        assert http.post("/api/v1/vms/B/suspend", headers=AUTH).json()["state"] == "paused"
        assert http.post("/api/v1/vms/B/resume", headers=AUTH).json()["state"] == "running"
        assert http.delete("/api/v1/vms/B", headers=AUTH).status_code == 204
        assert http.get("/api/v1/vms/B").status_code == 404
        host = http.get("/api/v1/host").json()
        assert host["vnodes"] == {"1.0": [0, 4]}
        assert host["status"]["cpu"]["avail"] == 6


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/api/v1/vms"), ("delete", "/api/v1/vms/A"), ("post", "/api/v1/vms/A/suspend"),
     ("get", "/deploy?name=x&cpu=1&mem=1&oc=1.0"), ("get", "/remove?name=A")],
)  # fmt: skip
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["missing", "wrong"])
def test_every_mutating_route_refuses_a_missing_or_wrong_token(agent_url, method, path, headers):
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        http.post("/api/v1/vms", json={"name": "A", "vcpus": 1, "memory_mib": 128}, headers=AUTH)
        body = {"name": "n", "vcpus": 1, "memory_mib": 1} if method == "post" else None
        response = http.request(method.upper(), path, json=body, headers=headers)
        assert response.status_code == 401
        assert response.json() == {
            "error": "unauthorized",
            "code": "unauthorized",
            "detail": "a valid agent token is required",
        }
        assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["A"]  # nothing changed


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"name": "x<y", "vcpus": 1, "memory_mib": 1}, 422, "invalid request"),
        ({"name": "big", "vcpus": -1, "memory_mib": 1}, 422, "invalid request"),
        ({"name": "big", "vcpus": 10**9, "memory_mib": 1}, 422, "invalid request"),
        ({"name": "big", "vcpus": 9, "memory_mib": 1}, 409, "not enough cpu"),
        ({"name": "fat", "vcpus": 1, "memory_mib": 10**7}, 409, "not enough memory"),
        ({"name": "A", "vcpus": 1, "memory_mib": 1}, 409, "duplicate name"),
        ({"name": "half", "vcpus": 1, "memory_mib": 1, "ratio": 0.5}, 422, "invalid request"),
        ("not json", 422, "invalid request"),
        ({"name": "s", "vcpus": "1", "memory_mib": 1}, 422, "invalid request"),
        ({"name": "t", "vcpus": True, "memory_mib": 1}, 422, "invalid request"),
        ({"name": "f", "vcpus": 1.0, "memory_mib": 1}, 422, "invalid request"),
        ({"name": "m", "vcpus": 1, "memory_mib": "64"}, 422, "invalid request"),
        ({"name": "r", "vcpus": 1, "memory_mib": 1, "ratio": True}, 422, "invalid request"),
        ({"name": "o", "vcpus": 1, "memory_mib": 1, "ratio": "2.0"}, 422, "invalid request"),
    ],
    ids=[
        "xml-name",
        "negative",
        "huge",
        "no-cpu",
        "no-memory",
        "duplicate",
        "ratio",
        "garbage",
        "vcpus-a-string",
        "vcpus-true",
        "vcpus-a-float",
        "memory-a-string",
        "ratio-true",
        "ratio-a-string",
    ],
)
def test_bad_input_is_a_4xx_json_error_and_changes_nothing(agent_url, body, status, error):
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        http.post("/api/v1/vms", json={"name": "A", "vcpus": 1, "memory_mib": 128}, headers=AUTH)
        if isinstance(body, str):
            response = http.post(
                "/api/v1/vms", content=body, headers={**AUTH, "content-type": "application/json"}
            )
        else:
            response = http.post("/api/v1/vms", json=body, headers=AUTH)
        assert response.status_code == status
        assert response.json()["error"] == error
        assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["A"]


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPJQep4eS/coYUOy+Uh+HQ/PXtPmYwjCkZNEkZnPROFW alice@laptop"


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        ({"user_data": "é" * (MAX_USER_DATA_BYTES // 2 + 1)}, 400, "bytes, at most"),  # bytes, not characters
        ({"user_data": "x" * (MAX_USER_DATA_BYTES + 1)}, 422, "user_data"),
        ({"ssh_keys": ["ssh-ed25519 AAAA"]}, 400, "ssh key"),
        ({"ssh_keys": [KEY] * (MAX_SSH_KEYS + 1)}, 422, "ssh_keys"),
        ({"ssh_keys": KEY}, 422, "ssh_keys"),
    ],
    ids=["user-data-bytes", "user-data-chars", "bad-key", "too-many-keys", "key-not-a-list"],
)
def test_bad_cloud_init_input_is_a_4xx_with_nothing_created(tmp_path, i7, extra, status, words):
    disks = tmp_path / "agent" / "disks"
    agent = Agent.open(
        i7, SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu", disk_dir=disks)
    )
    try:
        with serving_app(create_app(agent, TOKEN)) as url, httpx.Client(base_url=url, timeout=10) as http:
            body = {"name": "c", "vcpus": 1, "memory_mib": 128, **extra}
            response = http.post("/api/v1/vms", json=body, headers=AUTH)
            assert response.status_code == status, response.text
            assert response.json()["error"] == "invalid request"
            assert words in response.json()["detail"]
            assert http.get("/api/v1/vms").json() == []
        assert agent.driver.guests() == []
        assert not disks.exists() or list(disks.iterdir()) == []
        assert agent.store.load()[1] == {}
    finally:
        agent.close()


def test_a_vm_created_with_keys_over_http_has_its_seed(tmp_path, i7):
    disks = tmp_path / "disks"
    agent = Agent.open(
        i7, SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu", disk_dir=disks)
    )
    try:
        with serving_app(create_app(agent, TOKEN)) as url, httpx.Client(base_url=url, timeout=10) as http:
            body = {"name": "c", "vcpus": 1, "memory_mib": 128, "ssh_keys": [KEY], "user_data": "#!/bin/sh\n"}
            assert http.post("/api/v1/vms", json=body, headers=AUTH).status_code == 201
            assert (disks / "c.cidata.iso").is_file()
            assert http.delete("/api/v1/vms/c", headers=AUTH).status_code == 204
            assert not (disks / "c.cidata.iso").exists()
    finally:
        agent.close()


def test_slackvm_routes_place_as_slackvm_does(agent_url):
    """SlackVM's A, B, C, D through its own routes: the status and score it
    saw (the exact bytes of every outcome: tests/test_slackvm.py)."""
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        for name, cpu, oc in (("A", 2, "1.0"), ("B", 2, "2.0"), ("C", 2, "2.0"), ("D", 1, "3.0")):
            response = http.get(f"/deploy?name={name}&cpu={cpu}&mem=2&oc={oc}&qcow2=&token={TOKEN}")
            assert response.json() == {"reason": None, "success": True}, response.text
        status = http.get("/status").json()
        assert status["cpu"]["subset"]["3.0"] == {"pcap": 1, "palloc": 1, "vavail": 2.0, "vpotential": 9.0}
        assert status["mem"]["avail"] == 23584
        assert round(http.get("/progress?cpu=2&mem=2&oc=2.0").json()["progress"], 4) == 68.2667
        assert http.get("/listvm").json() == ["A", "B", "C", "D"]
        assert http.get(f"/remove?name=D&token={TOKEN}").json() == {"reason": None, "success": True}
        assert http.get(f"/remove?name=D&token={TOKEN}").json() == {
            "reason": "does not exist",
            "success": False,
        }


def test_health_metrics_and_openapi(agent_url):
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        http.post(
            "/api/v1/vms", json={"name": "A", "vcpus": 2, "memory_mib": 128, "ratio": 2.0}, headers=AUTH
        )
        metrics = http.get("/metrics").text
        assert "pinfold_vms 1.0" in metrics
        assert 'pinfold_vnode_cpus{level="2.0"} 2.0' in metrics
        assert "/api/v1/vms" in http.get("/openapi.json").json()["paths"]


def test_an_image_outside_the_image_directories_is_a_400(agent_url):
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        body = {"name": "x", "vcpus": 1, "memory_mib": 64, "image": "/etc/shadow"}
        response = http.post("/api/v1/vms", json=body, headers=AUTH)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid request"
        slackvm = http.get(f"/deploy?name=y&cpu=1&mem=1&oc=1&qcow2=/etc/shadow&token={TOKEN}")
        assert slackvm.json() == {"reason": "invalid request", "success": False}
        assert http.get("/api/v1/vms").json() == []


@pytest.mark.parametrize("image", ["images/base.raw", "{images}/../images/base.raw", "{images}//base.raw"])
def test_an_image_path_of_the_wrong_shape_is_a_400_even_if_it_leads_to_an_image(
    tmp_path, i7, monkeypatch, image
):
    """Relative to the agent's working directory, or with '..' or an empty
    part, the path still names a file in an image directory: refused all the
    same, a path names one file one way."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "base.raw").write_bytes(b"\0" * 512)
    monkeypatch.chdir(tmp_path)
    settings = AgentSettings(domain_type="qemu", image_dirs=(images,), disk_dir=tmp_path / "disks")
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), settings)
    try:
        with serving_app(create_app(agent, TOKEN)) as url, httpx.Client(base_url=url, timeout=10) as http:
            body = {"name": "x", "vcpus": 1, "memory_mib": 64, "image": image.format(images=images)}
            response = http.post("/api/v1/vms", json=body, headers=AUTH)
            assert response.status_code == 400, response.text
            assert response.json()["error"] == "invalid request"
            assert http.get("/api/v1/vms").json() == []
    finally:
        agent.close()


def test_slackvm_routes_can_be_opened_to_listed_networks_only(tmp_path, i7):
    with serving(tmp_path / "open", i7, ("127.0.0.0/8",)) as url:
        assert httpx.get(f"{url}/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=").json()["success"] is True
        assert httpx.get(f"{url}/remove?name=a").json() == {"reason": None, "success": True}
        body = {"name": "b", "vcpus": 1, "memory_mib": 64}
        assert httpx.post(f"{url}/api/v1/vms", json=body).status_code == 401  # the JSON API still needs it
    with serving(tmp_path / "closed", i7, ("10.0.0.0/8",)) as url:
        assert httpx.get(f"{url}/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=").status_code == 401


def test_a_token_in_the_query_opens_only_slackvms_routes(agent_url):
    """A token in a URL ends up in logs and browser history: only SlackVM's
    routes (whose client can send no header) take `?token=`."""
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        body = {"name": "q", "vcpus": 1, "memory_mib": 64}
        response = http.post(f"/api/v1/vms?token={TOKEN}", json=body)
        assert response.status_code == 401, response.text
        assert http.delete(f"/api/v1/vms/q?token={TOKEN}").status_code == 401
        assert http.get("/api/v1/vms").json() == []
        assert http.get(f"/deploy?name=q&cpu=1&mem=1&oc=1&qcow2=&token={TOKEN}").json()["success"] is True


def test_the_host_says_how_old_its_usage_is_and_why_sampling_fails(tmp_path, i7):
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    broken = [False]

    def vm_stats() -> dict[str, tuple[int, float]]:
        if broken[0]:
            raise DriverError("failed", "read domain stats: libvirtd went away")
        return agent.vm_stats()

    monitor = Monitor([cpu.cpu_id for cpu in i7.cpus], agent.vnode_layout, vm_stats)
    monitor.sample_safely()
    broken[0] = True
    monitor.sample_safely()
    try:
        with serving_app(create_app(agent, TOKEN, monitor)) as url:
            host = httpx.get(f"{url}/api/v1/host").json()
    finally:
        agent.close()
    assert host["usage"] is not None  # the last good sample, labelled as such:
    assert host["monitor"]["stale"] is True
    assert "libvirtd went away" in host["monitor"]["last_error"]
    assert host["monitor"]["sample_age_s"] >= 0


def test_a_neighbour_that_cannot_be_repinned_is_a_502_not_a_500(tmp_path, i7, monkeypatch):
    driver = SimDriver()
    agent = Agent.open(i7, driver, Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    repin = driver.repin

    def fail_for_b(name: str, cpuset: frozenset[int]) -> None:
        if name == "B":
            raise DriverError("failed", "re-pin B: Unable to write to cgroup")
        repin(name, cpuset)

    try:
        with serving_app(create_app(agent, TOKEN)) as url, httpx.Client(base_url=url, timeout=10) as http:
            for name, ratio in (("A", 1.0), ("B", 2.0)):
                body = {"name": name, "vcpus": 2, "memory_mib": 1024, "ratio": ratio}
                assert http.post("/api/v1/vms", json=body, headers=AUTH).status_code == 201
            monkeypatch.setattr(driver, "repin", fail_for_b)
            body = {"name": "A2", "vcpus": 2, "memory_mib": 1024}
            response = http.post("/api/v1/vms", json=body, headers=AUTH)
            assert response.status_code == 502
            assert response.json()["error"] == "hypervisor failed"
            assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["A", "B"]
            # B could not be moved back either: shown, and no CPUs are handed out until it is
            stale = http.get("/api/v1/host").json()["stale_pins"]
            assert stale == {
                "B": {"cpus": [1, 2, 3, 5, 6, 7], "error": "failed: re-pin B: Unable to write to cgroup"}
            }
            body = {"name": "C", "vcpus": 1, "memory_mib": 128, "ratio": 2.0}
            response = http.post("/api/v1/vms", json=body, headers=AUTH)
            assert (response.status_code, response.json()["error"]) == (503, "stale pins")
            monkeypatch.undo()
            assert http.post("/api/v1/vms", json=body, headers=AUTH).status_code == 201
            assert http.get("/api/v1/host").json()["stale_pins"] == {}
    finally:
        agent.close()


def test_every_route_answers_while_a_guest_shuts_down(tmp_path, i7):
    """`POST .../shutdown` waits for the guest (up to shutdown_timeout_s): the
    reads and the other VMs must not wait with it."""
    driver = SlowShutdown()
    agent = Agent.open(i7, driver, Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    agent.create(VMRequest("slow", 1, 128, 2.0))
    agent.create(VMRequest("other", 1, 128, 2.0))
    try:
        with (
            serving_app(create_app(agent, TOKEN)) as url,
            httpx.Client(base_url=url, timeout=3) as http,
            ThreadPoolExecutor(1) as pool,
        ):
            shutdown = pool.submit(http.post, "/api/v1/vms/slow/shutdown", headers=AUTH, timeout=20)
            assert driver.waiting.wait(10)
            assert http.get("/api/v1/vms/slow").json()["state"] == "stopping"
            assert http.get("/api/v1/host").status_code == 200
            assert http.post("/api/v1/vms/other/suspend", headers=AUTH).json()["state"] == "paused"
            refused = http.post("/api/v1/vms/slow/start", headers=AUTH)
            assert (refused.status_code, refused.json()["error"]) == (409, "invalid")
            driver.release.set()
            assert shutdown.result().json()["state"] == "shutoff"
    finally:
        driver.release.set()
        agent.close()


def test_the_host_says_why_a_pool_does_not_fill(tmp_path, i7):
    huge = PoolSpec(name="huge", size=50, vcpus=4, memory_mib=1024, warmup_s=0)
    settings = AgentSettings(domain_type="qemu", pools=(huge,))
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), settings)

    def fill() -> None:
        while agent.tend_pools(0.0):
            pass

    with pytest.raises(AgentError, match="not enough cpu"):
        fill()
    try:
        with serving_app(create_app(agent, TOKEN)) as url:
            pools = httpx.get(f"{url}/api/v1/host").json()["pools"]
    finally:
        agent.close()
    assert pools["huge"]["ready"] + pools["huge"]["warming"] == 2
    assert pools["huge"]["last_error"].startswith("not enough cpu: ")


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/nowhere", 404, "not found"),
        ("GET", "/api/v1/vms/A/extra/parts", 404, "not found"),
        ("PUT", "/api/v1/vms", 405, "method not allowed"),
        ("DELETE", "/healthz", 405, "method not allowed"),
    ],
    ids=["no-route", "too-deep", "put-vms", "delete-healthz"],
)
def test_fastapis_own_errors_have_the_error_shape_too(agent_url, method, path, status, error):
    response = httpx.request(method, agent_url + path, headers=AUTH)
    assert response.status_code == status
    body = response.json()
    assert (set(body), body["error"], body["code"]) == ({"error", "code", "detail"}, error, error)
    assert path in body["detail"]
    if status == 405:
        assert response.headers["allow"]  # still says what is allowed


def test_a_refused_placement_carries_the_refusal_as_data(agent_url):
    """The controller passes these numbers on to its 409 `no host` answer."""
    with httpx.Client(base_url=agent_url, timeout=10) as http:
        http.post("/api/v1/vms", json={"name": "A", "vcpus": 7, "memory_mib": 128}, headers=AUTH)
        full = http.post("/api/v1/vms", json={"name": "b", "vcpus": 2, "memory_mib": 128}, headers=AUTH)
        never = http.post("/api/v1/vms", json={"name": "c", "vcpus": 9, "memory_mib": 128}, headers=AUTH)
        unknown = http.delete("/api/v1/vms/ghost", headers=AUTH)
    assert (full.status_code, full.json()["code"]) == (409, "not enough cpu")
    assert full.json()["refusal"] == {
        "code": "not enough cpu", "level": 1.0, "needed": 2.0, "free": 1.0, "capacity": 8.0,
        "fits_ever": True, "detail": "",
    }  # fmt: skip
    assert full.json()["detail"] == "not enough cpu at level 1.0: needs 2 CPUs, 1 free of 8"
    assert never.json()["refusal"]["fits_ever"] is False
    assert (unknown.status_code, "refusal" in unknown.json()) == (404, False)  # not a placement's
