"""SlackVM's routes answer in SlackVM's own bytes (issue 11, part 1), on the
agent (SlackVM's local scheduler) and on the controller (its global
scheduler): every outcome of the issue's table, exact status, content type
and body, over real servers on loopback (sim-driver agents, SQLite stores).
SlackVM's tools send no token: the routes are opened to 127.0.0.0/8 here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from pinfold.agent.api import create_app
from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from tests.controller.cluster import LocalCluster
from tests.servers import serving

JSON = "application/json"
HTML = "text/html; charset=utf-8"
PLACED = '{"reason":null,"success":true}\n'
DEPLOY_USAGE = (
    "Wrong usage: {url}/deploy?name=example&cpu=1&mem=1&oc=1&qcow2=/var/lib/libvirt/images/volume.qcow2"
)
REMOVE_USAGE = "Wrong usage: {url}/remove?name=example"
PROGRESS_USAGE = "Wrong usage: {url}/progress?cpu=1&mem=1&oc=1.0"


class Row(NamedTuple):
    """One outcome: VMs deployed first (through SlackVM's /deploy), the
    request, and SlackVM's answer (`{url}` is the server's own address)."""

    before: tuple[str, ...]
    path: str
    content_type: str
    body: str


def refused(reason: str) -> str:
    return '{"reason":"' + reason + '","success":false}\n'


AGENT_ROWS = {
    "deploy-placed": Row((), "/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=", JSON, PLACED),
    "deploy-no-cpu": Row(
        (), "/deploy?name=a&cpu=9&mem=1&oc=1&qcow2=", JSON, refused("Not enough space on res cpu")
    ),
    "deploy-no-mem": Row(
        (), "/deploy?name=a&cpu=1&mem=40&oc=1&qcow2=", JSON, refused("Not enough space on res mem")
    ),
    "deploy-no-qcow2": Row((), "/deploy?name=a&cpu=1&mem=1&oc=1", HTML, DEPLOY_USAGE),
    "deploy-no-oc": Row((), "/deploy?name=a&cpu=1&mem=1&qcow2=", HTML, DEPLOY_USAGE),
    "deploy-nothing": Row((), "/deploy", HTML, DEPLOY_USAGE),
    "deploy-cpu-not-integer": Row(
        (), "/deploy?name=a&cpu=x&mem=1&oc=1&qcow2=", JSON, refused("invalid request")
    ),
    "deploy-cpu-zero": Row((), "/deploy?name=a&cpu=0&mem=1&oc=1&qcow2=", JSON, refused("invalid request")),
    "deploy-oc-nan": Row((), "/deploy?name=a&cpu=1&mem=1&oc=nan&qcow2=", JSON, refused("invalid request")),
    "deploy-bad-name": Row(
        (), "/deploy?name=a%2Fb&cpu=1&mem=1&oc=1&qcow2=", JSON, refused("invalid request")
    ),
    "deploy-reused-name": Row(
        ("a",), "/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=", JSON, refused("duplicate name")
    ),
    "deploy-image-outside": Row(
        (), "/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=/etc/shadow", JSON, refused("invalid request")
    ),
    "remove-removed": Row(("a",), "/remove?name=a", JSON, PLACED),
    "remove-unknown": Row((), "/remove?name=a", JSON, refused("does not exist")),
    "remove-nothing": Row((), "/remove", HTML, REMOVE_USAGE),
    "progress-cpu-0": Row((), "/progress?cpu=0&mem=1&oc=1", JSON, '{"progress":0.0}\n'),
    "progress-numbers": Row((), "/progress?cpu=2&mem=2&oc=1", JSON, '{"progress":-2948.0}\n'),
    "progress-no-oc": Row((), "/progress?cpu=1&mem=1", HTML, PROGRESS_USAGE),
    "progress-not-a-number": Row((), "/progress?cpu=1&mem=x&oc=1", HTML, PROGRESS_USAGE),
    "listvm-empty": Row((), "/listvm", JSON, "[]\n"),
    "listvm": Row(("b", "a"), "/listvm", JSON, '["b","a"]\n'),
    "status-empty": Row(
        (), "/status", JSON, '{"cpu":{"avail":8,"subset":{}},"mem":{"avail":31776,"subset":{}}}\n'
    ),
    "home": Row((), "/", HTML, "Scheduler is working and waiting for instructions"),
}

CONTROLLER_ROWS = {
    "deploy-placed": Row((), "/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=", JSON, PLACED),
    "deploy-no-host": Row(
        (), "/deploy?name=a&cpu=9&mem=1&oc=1&qcow2=", JSON, refused("No appropriate node found")
    ),
    "deploy-no-qcow2": Row((), "/deploy?name=a&cpu=1&mem=1&oc=1", HTML, DEPLOY_USAGE),
    "deploy-nothing": Row((), "/deploy", HTML, DEPLOY_USAGE),
    "deploy-cpu-not-integer": Row(
        (), "/deploy?name=a&cpu=1.5&mem=1&oc=1&qcow2=", JSON, refused("invalid request")
    ),
    "deploy-reused-name": Row(
        ("a",), "/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=", JSON, refused("duplicate name")
    ),
    "remove-removed": Row(("a",), "/remove?name=a", JSON, PLACED),
    "remove-unknown": Row((), "/remove?name=a", JSON, refused("Unregistered VM")),
    "remove-nothing": Row((), "/remove", HTML, REMOVE_USAGE),
}


@contextmanager
def agent_serving(tmp_path: Path, topology: Any) -> Iterator[str]:
    agent = Agent.open(topology, SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    try:
        app = create_app(agent, "agent-token-0123456789abcdef", slackvm_open_networks=("127.0.0.0/8",))
        with serving(app) as url:
            yield url
    finally:
        agent.store.close()


@contextmanager
def controller_serving(tmp_path: Path, topology: Any) -> Iterator[str]:
    cluster = LocalCluster(
        tmp_path, f"sqlite:///{tmp_path / 'c.db'}", topology, slackvm_open_networks=("127.0.0.0/8",)
    )
    try:
        cluster.add_host("h1")
        yield cluster.url
    finally:
        cluster.close()


def check(url: str, row: Row) -> None:
    for name in row.before:
        assert httpx.get(f"{url}/deploy?name={name}&cpu=1&mem=1&oc=1&qcow2=").text == PLACED
    response = httpx.get(url + row.path)
    assert response.status_code == 200
    assert response.headers["content-type"] == row.content_type
    assert response.text == row.body.replace("{url}", url)


@pytest.mark.parametrize("row", AGENT_ROWS.values(), ids=AGENT_ROWS.keys())
def test_the_agent_answers_each_outcome_in_slackvms_bytes(tmp_path, i7, row):
    with agent_serving(tmp_path, i7) as url:
        check(url, row)


@pytest.mark.parametrize("row", CONTROLLER_ROWS.values(), ids=CONTROLLER_ROWS.keys())
def test_the_controller_answers_each_outcome_in_slackvms_bytes(tmp_path, i7, row):
    with controller_serving(tmp_path, i7) as url:
        check(url, row)


def test_the_usage_text_names_the_address_the_client_reached(tmp_path, i7):
    """SlackVM's text names its own address: here the Host header, escaped
    (the text is HTML), with the scheme's port when the header has none."""
    with agent_serving(tmp_path, i7) as url:
        named = httpx.get(f"{url}/remove", headers={"Host": "node-7.example:8099"})
        assert named.text == "Wrong usage: http://node-7.example:8099/remove?name=example"
        bare = httpx.get(f"{url}/remove", headers={"Host": "node-7.example"})
        assert bare.text == "Wrong usage: http://node-7.example:80/remove?name=example"
        hostile = httpx.get(f"{url}/remove", headers={"Host": "<b>x</b>"})
        assert "<b>" not in hostile.text


def test_the_controller_keeps_its_dashboard_at_the_root(tmp_path, i7):
    with controller_serving(tmp_path, i7) as url:
        response = httpx.get(url + "/")
        assert response.status_code == 200
        assert "Scheduler is working" not in response.text
        assert "<html" in response.text.lower()


def test_a_removal_waiting_for_its_agent_is_a_pending_failure_not_a_202(tmp_path, i7):
    """The agent is away: the VM stays `deleting` and the controller retries;
    SlackVM's client gets a 200 that says it is not gone yet."""
    cluster = LocalCluster(
        tmp_path, f"sqlite:///{tmp_path / 'c.db'}", i7, slackvm_open_networks=("127.0.0.0/8",)
    )
    try:
        host = cluster.add_host("h1")
        assert httpx.get(f"{cluster.url}/deploy?name=v&cpu=1&mem=0.5&oc=1&qcow2=").text == PLACED
        host.stop()
        response = httpx.get(f"{cluster.url}/remove?name=v")
        assert (response.status_code, response.text) == (200, refused("deletion pending"))
        assert cluster.controller.vm("v").state.value == "deleting"
    finally:
        cluster.close()


class GlobalScheduler:
    """SlackVM's global scheduler's calls, as its code makes them: the
    status of each node and their first fit on it, the progress score of each
    node that fits (the highest wins), /deploy there, /listvm of each node to
    learn where VMs are, /remove on the VM's node. Answers are read with
    `.json()` as SlackVM's requester does."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.known: dict[str, str] = {}

    def fits(self, status: dict[str, Any], cpu: int, mem: float, ratio: float) -> bool:
        key = str(float(ratio))
        cpus = status["cpu"]
        level = cpus["subset"].get(key)
        cpu_ok = (level is not None and level["vavail"] + level["vpotential"] >= cpu) or cpus["avail"] >= cpu
        memory = status["mem"]
        pool = memory["subset"].get("1")
        mem_ok = (pool is not None and pool["vavail"] + pool["vpotential"] >= mem * 1024) or memory[
            "avail"
        ] >= mem * 1024
        return bool(cpu_ok and mem_ok)

    def deploy(self, name: str, cpu: int, mem: float, ratio: float) -> dict[str, Any]:
        candidates = [n for n in self.nodes if self.fits(httpx.get(f"{n}/status").json(), cpu, mem, ratio)]
        if not candidates:
            return {"success": False, "reason": "No appropriate node found"}
        score = {
            n: float(httpx.get(f"{n}/progress?cpu={cpu}&mem={mem}&oc={ratio}").json()["progress"])
            for n in candidates
        }
        chosen = max(candidates, key=lambda n: score[n])
        query = f"name={name}&cpu={cpu}&mem={mem}&oc={ratio}&qcow2="
        result: dict[str, Any] = httpx.get(f"{chosen}/deploy?{query}").json()
        if result["success"]:
            self.known[name] = chosen
        return result

    def resync(self) -> None:
        for node in self.nodes:
            for vm in httpx.get(f"{node}/listvm").json():
                self.known.setdefault(vm, node)

    def remove(self, name: str) -> dict[str, Any]:
        if name not in self.known:
            return {"success": False, "reason": "Unregistered VM"}
        result: dict[str, Any] = httpx.get(f"{self.known[name]}/remove?name={name}").json()
        if result["success"]:
            self.known.pop(name)
        return result


def test_slackvms_global_scheduler_drives_two_agents_to_the_end(tmp_path, i7):
    with agent_serving(tmp_path / "n1", i7) as one, agent_serving(tmp_path / "n2", i7) as two:
        scheduler = GlobalScheduler([one, two])
        asked = [
            ("a", 2, 2.0, 1.0),
            ("b", 2, 2.0, 2.0),
            ("c", 4, 8.0, 1.0),
            ("d", 1, 2.0, 3.0),
            ("e", 6, 1.0, 1.0),
        ]
        for name, cpu, mem, ratio in asked:
            assert scheduler.deploy(name, cpu, mem, ratio) == {"reason": None, "success": True}, name
        assert scheduler.deploy("f", 8, 1.0, 1.0) == {"reason": "No appropriate node found", "success": False}
        fresh = GlobalScheduler([one, two])  # a restarted global learns where VMs are from /listvm
        fresh.resync()
        assert fresh.known == scheduler.known
        assert set(fresh.known) == {"a", "b", "c", "d", "e"}
        assert set(fresh.known.values()) == {one, two}  # both nodes took VMs
        for name in "abcde":
            assert fresh.remove(name) == {"reason": None, "success": True}
        assert fresh.remove("a") == {"reason": "Unregistered VM", "success": False}
        for node in (one, two):
            assert httpx.get(f"{node}/listvm").json() == []
            assert httpx.get(f"{node}/status").json() == {
                "cpu": {"avail": 8, "subset": {}},
                "mem": {"avail": 31776, "subset": {}},
            }
