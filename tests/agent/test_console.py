"""VM consoles through the agent's WebSocket over a real uvicorn server on
loopback (sim driver, real SQLite store, websockets' own client): the round
trip, one writer and several readers, the refusals before the upgrade, the end
of a console with its guest, and the console log read and removed with its VM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pinfold.agent.api import create_app
from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import Agent, AgentSettings, VMRequest
from pinfold.agent.store import Store
from tests.servers import serving

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 5.0


@pytest.fixture
def rig(tmp_path: Path, i7) -> Iterator[tuple[Agent, str]]:
    """A sim agent with one running VM `web`, its console logs in tmp_path/consoles."""
    settings = AgentSettings(domain_type="qemu", serial_dir=tmp_path / "consoles")
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), settings)
    agent.create(VMRequest("web", 1, 256, 1.0))
    try:
        with serving(create_app(agent, TOKEN)) as url:
            yield agent, url
    finally:
        agent.close()


def ws_url(url: str, name: str = "web", mode: str | None = None) -> str:
    query = f"?mode={mode}" if mode else ""
    return f"{url.replace('http://', 'ws://')}/api/v1/vms/{name}/console{query}"


@contextmanager
def console(url: str, name: str = "web", mode: str | None = None) -> Iterator[ClientConnection]:
    with connect(ws_url(url, name, mode), additional_headers=AUTH, open_timeout=WAIT_S) as ws:
        yield ws


def read_until(ws: ClientConnection, wanted: bytes) -> bytes:
    """What the console sends until `wanted` has appeared (fails after WAIT_S)."""
    seen = b""
    while wanted not in seen:
        chunk = ws.recv(timeout=WAIT_S)
        assert isinstance(chunk, bytes), "the console sends binary frames"
        seen += chunk
    return seen


def refusal(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers=headers or {}, open_timeout=WAIT_S)
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


def test_a_console_round_trip_on_the_sim_driver(rig):
    _, url = rig
    with console(url) as ws:
        assert b"simulated console" in read_until(ws, b"echoed]\r\n")
        ws.send(b"echo hello\r")
        assert read_until(ws, b"\r\n") == b"echo hello\r\n"


def test_the_token_is_required_before_the_upgrade(rig):
    _, url = rig
    assert refusal(ws_url(url))[0] == 401
    status, body = refusal(ws_url(url), {"Authorization": "Bearer wrong"})
    assert status == 401
    assert body["error"] == "unauthorized"


def test_a_stopped_or_missing_vm_is_refused_before_the_upgrade(rig):
    agent, url = rig
    status, body = refusal(ws_url(url, "nope"), AUTH)
    assert (status, body["error"]) == (404, "unknown vm")
    agent.shutdown("web")
    status, body = refusal(ws_url(url), AUTH)
    assert (status, body["error"]) == (409, "invalid")
    assert "running" in str(body["detail"])
    assert refusal(ws_url(url, mode="sideways"), AUTH)[0] == 400


def test_one_writer_several_readers(rig):
    _, url = rig
    with console(url) as writer, console(url, mode="read") as one, console(url, mode="read") as two:
        status, body = refusal(ws_url(url, mode="write"), AUTH)
        assert status == 409
        assert "mode=read" in str(body["detail"])
        read_until(writer, b"echoed]\r\n")
        one.send(b"from a reader\r")  # dropped: a reader watches
        writer.send(b"from the writer\r")
        for client in (writer, one, two):
            seen = read_until(client, b"from the writer\r\n")
            assert b"from a reader" not in seen
    with console(url) as writer_again:  # the seat is free once its writer left
        read_until(writer_again, b"echoed]\r\n")


def test_the_console_closes_with_its_guest(rig):
    agent, url = rig
    with console(url) as ws:
        read_until(ws, b"echoed]\r\n")
        agent.shutdown("web")
        with pytest.raises(ConnectionClosed) as closed:
            read_until(ws, b"never")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000
    assert "stopped" in closed.value.rcvd.reason


def test_the_console_log_is_readable_bounded_and_removed_with_its_vm(rig, tmp_path):
    agent, url = rig
    with console(url) as ws:
        ws.send(b"remember me\r")
        read_until(ws, b"remember me\r\n")
    log_url = f"{url}/api/v1/vms/web/console/log"
    assert httpx.get(log_url).status_code == 401
    whole = httpx.get(log_url, headers=AUTH)
    assert whole.status_code == 200
    assert b"simulated console" in whole.content
    assert whole.content.endswith(b"remember me\r\n")
    tail = httpx.get(log_url, params={"bytes": 5}, headers=AUTH)
    assert tail.content == b" me\r\n"
    assert httpx.get(log_url, params={"bytes": 0}, headers=AUTH).status_code == 422
    log = tmp_path / "consoles" / f"{agent.find('web').domain}.log"
    assert log.exists()
    agent.delete("web")
    assert not log.exists()
    assert httpx.get(log_url, headers=AUTH).status_code == 404


def test_the_sim_driver_has_no_domain_to_give_a_console(tmp_path):
    """Simulated guests always have a console; an unknown one is "not found"."""
    from pinfold.agent.domain import DomainSpec
    from pinfold.agent.drivers import DriverError, SimDriver

    driver = SimDriver()
    driver.create(DomainSpec("d", 1, 128, frozenset({0}), 1.0))
    assert driver.give_console("d") is False
    with pytest.raises(DriverError, match="not found"):
        driver.give_console("nope")
