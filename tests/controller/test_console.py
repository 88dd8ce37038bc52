"""VM consoles through the controller's proxy: a real cluster on loopback (a
sim-driver agent, the controller on SQLite), websockets' own client. The admin
token opens it, the agent's refusals come back with their status, the close
of the agent's console reaches the client, and the log is read through it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pinfold.agent.service import AgentSettings
from tests.agent.test_console import read_until
from tests.controller.cluster import ADMIN_AUTH, AGENT, LocalCluster

WAIT_S = 5.0


@pytest.fixture
def cluster(tmp_path: Path, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    try:
        local.add_host("h1", settings=AgentSettings(domain_type="qemu", serial_dir=tmp_path / "consoles"))
        created = local.http.post("/api/v1/vms", json={"name": "web", "vcpus": 1, "memory_mib": 256})
        assert created.status_code == 201, created.text
        yield local
    finally:
        local.close()


def ws_url(cluster: LocalCluster, name: str = "web", mode: str = "write") -> str:
    return f"{cluster.url.replace('http://', 'ws://')}/api/v1/vms/{name}/console?mode={mode}"


@contextmanager
def console(cluster: LocalCluster, mode: str = "write") -> Iterator[ClientConnection]:
    with connect(ws_url(cluster, mode=mode), additional_headers=ADMIN_AUTH, open_timeout=WAIT_S) as ws:
        yield ws


def refusal(url: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers=headers, open_timeout=WAIT_S)
    return refused.value.response.status_code, json.loads(refused.value.response.body or b"{}")


def test_a_console_round_trip_through_the_controller(cluster):
    with console(cluster) as writer, console(cluster, mode="read") as reader:
        status, body = refusal(ws_url(cluster), ADMIN_AUTH)
        assert (status, body["error"]) == (409, "invalid")  # the agent's word: the seat is taken
        read_until(writer, b"echoed]\r\n")
        writer.send(b"through the proxy\r")
        assert read_until(writer, b"\r\n").endswith(b"through the proxy\r\n")
        read_until(reader, b"through the proxy\r\n")


def test_only_the_admin_token_opens_it(cluster):
    assert refusal(ws_url(cluster), {})[0] == 401
    assert refusal(ws_url(cluster), {"Authorization": f"Bearer {AGENT}"})[0] == 401
    assert cluster.http.get("/api/v1/vms/web/console/log", headers={"Authorization": ""}).status_code == 401


def test_the_agents_refusals_and_close_come_through(cluster):
    status, body = refusal(ws_url(cluster, "nope"), ADMIN_AUTH)
    assert (status, body["error"]) == (404, "unknown vm")
    with console(cluster) as ws:
        read_until(ws, b"echoed]\r\n")
        assert cluster.http.post("/api/v1/vms/web/shutdown").status_code == 200
        with pytest.raises(ConnectionClosed) as closed:
            read_until(ws, b"never")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000
    assert "stopped" in closed.value.rcvd.reason
    status, body = refusal(ws_url(cluster), ADMIN_AUTH)
    assert (status, body["error"]) == (409, "invalid")


def test_the_console_log_through_the_controller(cluster):
    with console(cluster) as ws:
        ws.send(b"logged line\r")
        read_until(ws, b"logged line\r\n")
    log = cluster.http.get("/api/v1/vms/web/console/log", params={"bytes": 13})
    assert log.status_code == 200
    assert log.content == b"logged line\r\n"
    assert cluster.http.get("/api/v1/vms/web/console/log", params={"bytes": -1}).status_code == 422
    assert cluster.http.get("/api/v1/vms/nope/console/log").status_code == 404
