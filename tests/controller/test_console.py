"""VM consoles through the controller's proxy: a real cluster on loopback (a
sim-driver agent, the controller on SQLite), websockets' own client. The admin
token opens it, the agent's refusals come back with their status, the close
of the agent's console reaches the client, and the log is read through it."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

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


def cli(cluster: LocalCluster, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": ADMIN_AUTH["Authorization"][7:],
           "PINFOLD_CLI_CONFIG": "/nonexistent/cli.toml"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "pinfold", "vm", "console", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


def read_pipe_until(pipe: IO[bytes], wanted: bytes, timeout_s: float = 30.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while wanted not in seen:
        ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {wanted!r} in {seen!r}"
        chunk = os.read(pipe.fileno(), 4096)
        assert chunk, f"the command ended before {wanted!r}: {seen!r}"
        seen += chunk
    return seen


def test_pinfold_vm_console_attaches_and_ctrl_bracket_leaves(cluster):
    process = cli(cluster, "web")
    assert process.stdin is not None
    assert process.stdout is not None
    read_pipe_until(process.stdout, b"echoed]\r\n")
    process.stdin.write(b"typed in the cli\r")
    process.stdin.flush()
    read_pipe_until(process.stdout, b"typed in the cli\r\n")
    process.stdin.write(b"\x1d")
    process.stdin.flush()
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert b"Ctrl-] leaves" in err
    assert b"[left with Ctrl-]]" in err


def test_pinfold_vm_console_says_why_it_is_refused(cluster):
    process = cli(cluster, "nope")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert b"unknown vm" in out


def test_a_browser_passes_the_admin_token_as_a_subprotocol(cluster):
    """Browsers cannot set headers on a WebSocket: the dashboard offers the token as a subprotocol."""
    token = ADMIN_AUTH["Authorization"][7:]
    offered = [Subprotocol("pinfold.console"), Subprotocol(f"pinfold.token.{token}")]
    with connect(ws_url(cluster), subprotocols=offered, open_timeout=WAIT_S) as ws:
        assert ws.subprotocol == "pinfold.console"
        read_until(ws, b"echoed]\r\n")
    wrong = [Subprotocol("pinfold.console"), Subprotocol("pinfold.token.wrong")]
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(cluster), subprotocols=wrong, open_timeout=WAIT_S)
    assert refused.value.response.status_code == 401


def test_pinfold_vm_console_puts_a_terminal_in_raw_mode_and_restores_it(cluster):
    """On a real pty: raw mode (no local echo, Ctrl-C goes to the guest), restored on leaving."""
    controller, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    env = {**os.environ, "PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": ADMIN_AUTH["Authorization"][7:],
           "PINFOLD_CLI_CONFIG": "/nonexistent/cli.toml"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "pinfold", "vm", "console", "web"],
        stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        with os.fdopen(controller, "r+b", buffering=0) as pty_side:
            read_pipe_until(pty_side, b"echoed]\r\n")
            pty_side.write(b"raw\x03line\r")  # Ctrl-C is a byte for the guest, not a signal here
            read_pipe_until(pty_side, b"raw\x03line\r\n")
            pty_side.write(b"\x1d")
            _, err = process.communicate(timeout=30)
            assert process.returncode == 0, err
            assert termios.tcgetattr(terminal) == before  # read while the pty is still open
    finally:
        if process.poll() is None:
            process.kill()
        os.close(terminal)


def test_a_writer_that_reconnects_as_the_last_one_leaves_is_let_in(cluster):
    """A client that closes its console and opens it again at once (a
    terminal reattaching, the dashboard's page reloaded) must get the seat:
    the one it left is its own. 200 rounds of connect, a keystroke echoed,
    close, through the controller's proxy."""
    failures: list[str] = []
    for round_ in range(200):
        try:
            with console(cluster) as writer:
                read_until(writer, b"echoed]\r\n")
                writer.send(f"round {round_}\r".encode())
                read_until(writer, f"round {round_}\r\n".encode())
        except InvalidStatus as refused:
            failures.append(f"round {round_}: {refused.response.status_code} {refused.response.body!r}")
    assert failures == []
