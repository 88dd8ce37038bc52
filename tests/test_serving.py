"""The HTTP server both daemons run (pinfold.serving), on real sockets on
loopback: a request must arrive whole within its deadline, connections are
bounded, and a body over the limit is refused before it is read."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from websockets.sync.client import connect as ws_connect

import pinfold
from pinfold import serving
from pinfold.agent.api import create_app as agent_app
from pinfold.agent.config import load_config
from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.controller.api import create_app as controller_app
from pinfold.controller.config import ControllerConfig, ControllerConfigError, load_controller_config
from pinfold.controller.daemon import build_controller
from pinfold.serving import MAX_HEAD_BYTES, ServerLimits
from pinfold.topology import Topology
from tests.servers import Served, free_port, wait_for_health

#: short limits, so that each test waits a fraction of a second for the server
LIMITS = ServerLimits(request_timeout_s=0.5, max_connections=3, max_body_bytes=64 * 1024)
#: how long a test waits for the server before calling it stuck
PATIENCE_S = 5.0


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    @app.get("/slow")
    def slow() -> dict[str, str]:
        time.sleep(LIMITS.request_timeout_s * 2)  # longer than a request may take to arrive
        return {"slow": "done"}

    return app


@contextmanager
def running(app: FastAPI, limits: ServerLimits = LIMITS) -> Iterator[int]:
    """`app` served as the daemons serve theirs, on a free loopback port."""
    served = Served(app, limits=limits)
    try:
        yield served.port
    finally:
        served.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a timeout (the server
    kept the connection open) fails the test."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {PATIENCE_S} s") from None
        if not chunk:
            return received
        received += chunk


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict[str, object]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """One whole request and its whole (JSON, content-length) response."""
    sock.sendall(request)
    received = b""
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < _length(received):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; received {received!r}"
        received += chunk
    return received


def _length(received: bytes) -> int:
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


PING = b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n"


def test_headers_that_never_end_are_closed_after_the_request_timeout() -> None:
    with running(echo_app()) as port, connect(port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: test\r\n")
        response = read_until_closed(sock)
        assert time.monotonic() - started < PATIENCE_S
        assert status_of(response) == 408
        assert body_of(response)["error"] == "request timeout"


def test_a_slow_body_is_closed_after_the_request_timeout() -> None:
    with running(echo_app()) as port, connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789")
        assert status_of(read_until_closed(sock)) == 408


def test_a_byte_now_and_then_does_not_extend_the_deadline() -> None:
    """The deadline is for the whole request, not for each read."""
    with running(echo_app()) as port, connect(port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /ping HTTP/1.1\r\n")
        sock.settimeout(0.1)
        received = b""
        while not received and time.monotonic() - started < PATIENCE_S:
            try:
                sock.sendall(b"X-Slow: y\r\n")
                received = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        assert time.monotonic() - started < PATIENCE_S, "a trickle kept the request open"


def test_a_request_that_begins_in_the_same_write_as_a_whole_one_has_its_own_deadline() -> None:
    """The first request arrives whole (its deadline ends) and the next one's
    first bytes come with it, in one read: the next one's deadline runs from
    there, so headers that never end still close the connection."""
    with running(echo_app()) as port, connect(port) as sock:
        started = time.monotonic()
        sock.sendall(PING + b"GET /ping HTTP/1.1\r\nHost: test\r\n")
        received = read_until_closed(sock)
        assert time.monotonic() - started < PATIENCE_S
        first, second = received.split(b"HTTP/1.1 ", 2)[1:]
        assert status_of(b"HTTP/1.1 " + first) == 200
        assert status_of(b"HTTP/1.1 " + second) == 408


def test_no_deadline_runs_while_the_daemon_works_even_when_the_next_request_has_begun() -> None:
    """The next request's first bytes arrive while the daemon works on one
    (for longer than a request may take to arrive): that one is answered,
    and only then does the next one's deadline run (it never ends: 408)."""
    with running(echo_app()) as port, connect(port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\nGET /ping HTTP/1.1\r\n")
        received = read_until_closed(sock)
        first, second = received.split(b"HTTP/1.1 ", 2)[1:]
        assert status_of(b"HTTP/1.1 " + first) == 200
        assert body_of(b"HTTP/1.1 " + first) == {"slow": "done"}
        assert status_of(b"HTTP/1.1 " + second) == 408


def test_a_request_head_over_the_bound_is_refused_400_without_waiting_for_its_end() -> None:
    with running(echo_app()) as port:
        with connect(port) as sock:
            header = b"X-Large: " + b"a" * (MAX_HEAD_BYTES // 2) + b"\r\n"
            assert (
                status_of(exchange(sock, b"GET /ping HTTP/1.1\r\nHost: test\r\n" + header + b"\r\n")) == 200
            )
        with connect(port) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: test\r\nX-Huge: ")
            for _ in range(2 * MAX_HEAD_BYTES // 1024):
                try:
                    sock.sendall(b"a" * 1024)
                except (BrokenPipeError, ConnectionResetError):
                    break
            response = read_until_closed(sock)
            assert status_of(response) == 400, response[:200]
            assert time.monotonic() - started < LIMITS.request_timeout_s, (
                "refused by the deadline, not the bound"
            )


def test_whole_requests_still_work_also_after_an_idle_pause_on_a_kept_alive_connection() -> None:
    with running(echo_app()) as port, connect(port) as sock:
        assert status_of(exchange(sock, PING)) == 200
        body = b'{"a": 1}'
        post = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        # idle between two requests for longer than one request may take to arrive: no deadline runs
        time.sleep(LIMITS.request_timeout_s * 2)
        response = exchange(sock, post)
        assert status_of(response) == 200
        assert body_of(response) == {"length": len(body)}


def test_connections_above_the_bound_are_answered_503_and_closed() -> None:
    with running(echo_app(), ServerLimits(request_timeout_s=5, max_connections=3)) as port:
        held = [connect(port) for _ in range(3)]
        for sock in held:  # each answered: the server holds all three
            assert status_of(exchange(sock, PING)) == 200
        with connect(port) as extra:
            extra.sendall(PING)
            response = read_until_closed(extra)
            assert status_of(response) == 503
            assert body_of(response)["error"] == "service unavailable"
        held.pop().close()
        deadline = time.monotonic() + PATIENCE_S
        while True:  # the server learns of the close on its own time
            with connect(port) as sock:
                sock.sendall(PING)
                if status_of(read_until_closed_or_answer(sock)) == 200:
                    break
            assert time.monotonic() < deadline, "a freed connection slot was not reused"
        for sock in held:
            sock.close()


def read_until_closed_or_answer(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_a_body_declared_over_the_limit_is_refused_413_before_it_is_read() -> None:
    with running(echo_app()) as port, connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000)
        response = read_until_closed(sock)
        assert status_of(response) == 413
        assert body_of(response)["error"] == "payload too large"


def test_a_streamed_body_over_the_limit_is_refused_413() -> None:
    chunk = b"x" * 16384
    with running(echo_app()) as port, connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(8):  # 128 KiB, twice the limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused part-way: the answer is waiting
        response = read_until_closed(sock)
        assert status_of(response) == 413


def test_a_body_under_the_limit_is_read_whole() -> None:
    body = json.dumps({"pad": "x" * 60000}).encode()
    with running(echo_app()) as port:
        response = httpx.post(f"http://127.0.0.1:{port}/echo", content=body, timeout=PATIENCE_S)
        assert response.json() == {"length": len(body)}


def test_a_ten_megabyte_heartbeat_or_create_is_refused_by_both_daemons(tmp_path: Path) -> None:
    """The agent's create and the controller's heartbeat, with the default 1 MiB limit."""
    i7 = Topology.load(Path(pinfold.__file__).parent / "data" / "topology_i7-1185G7.json")
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    controller, clients = build_controller(ControllerConfig(data_dir=tmp_path / "controller"), "a" * 16)
    apps = {
        "/api/v1/vms": agent_app(agent, "t" * 16),
        "/api/v1/hosts/h1/heartbeat": controller_app(controller, "b" * 16, "a" * 16),
    }
    try:
        for path, app in apps.items():
            with running(app, ServerLimits()) as port, connect(port) as sock:
                head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 10000000\r\n\r\n"
                sock.sendall(head.encode() + b"{" + b" " * 100000)
                response = read_until_closed(sock)
                assert status_of(response) == 413, response[:200]
                assert "1048576" in str(body_of(response)["detail"])
    finally:
        agent.store.close()
        clients.close()
        controller.store.engine.dispose()


def test_the_limits_are_settings_of_both_daemons_with_sane_defaults(tmp_path: Path) -> None:
    agent = load_config(
        None, {}, {"PINFOLD_AGENT_REQUEST_TIMEOUT_S": "2.5", "PINFOLD_AGENT_MAX_CONNECTIONS": "7"}
    )
    assert agent.limits == ServerLimits(request_timeout_s=2.5, max_connections=7, max_body_bytes=1 << 20)
    settings = tmp_path / "controller.toml"
    settings.write_text("max_body_bytes = 4096\n")
    controller = load_controller_config(settings, {}, {})
    assert controller.limits == ServerLimits(
        request_timeout_s=10.0, max_connections=1000, max_body_bytes=4096
    )
    with pytest.raises(ControllerConfigError, match="max_body_bytes"):
        load_controller_config(None, {}, {"PINFOLD_CONTROLLER_MAX_BODY_BYTES": "0"})


def test_the_controller_daemon_closes_an_unfinished_request(tmp_path: Path) -> None:
    """The real `pinfold controller`, its request timeout set short."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "pinfold",
        "controller",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
    ]
    environ = dict(os.environ, PINFOLD_CONTROLLER_REQUEST_TIMEOUT_S="0.5")
    process = subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, "the controller")
        with connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            assert status_of(read_until_closed(sock)) == 408
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def test_a_websocket_lives_past_the_request_timeout() -> None:
    """The deadline is for an HTTP request to arrive whole; once a connection
    is upgraded to a WebSocket (a console), it is no request any more and
    the deadline must not close it (it did: every console died after 10 s)."""
    app = echo_app()

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            await websocket.send_bytes(await websocket.receive_bytes())

    with running(app) as port, ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=PATIENCE_S) as ws:
        # past the deadline, counted from the handshake's first byte (the server's clock, not a guess:
        # the deadline is LIMITS.request_timeout_s; three times that leaves room on a busy machine)
        time.sleep(3 * LIMITS.request_timeout_s)
        ws.send(b"still here")
        assert ws.recv(timeout=PATIENCE_S) == b"still here"


def test_warm_up_answers_one_request_in_process_before_the_port_opens() -> None:
    """An app's first request built Starlette's middleware stack and imported
    parts of anyio: 11-16 ms for the first create sent to each agent (issue
    16, fifteenth round). `warm_up` pays that before serving, with one GET of
    /healthz through the app itself (no socket)."""
    app = FastAPI()
    served: list[str] = []

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        served.append("healthz")
        return {"status": "ok"}

    assert app.middleware_stack is None
    serving.warm_up(app)
    assert served == ["healthz"]
    assert app.middleware_stack is not None


def test_a_failed_warm_up_is_logged_and_the_daemon_serves_all_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        raise RuntimeError("not ready")

    serving.warm_up(app)
    assert "the warm-up request failed" in caplog.text


def test_both_daemons_warm_their_app_up_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serving.run` (how the agent and the controller serve) warms the app up
    first, then runs the server."""
    steps: list[str] = []

    class Server:
        started = True

        def run(self) -> None:
            steps.append("serve")

    app = FastAPI()
    monkeypatch.setattr(serving, "warm_up", lambda warmed: steps.append("warm up" if warmed is app else "?"))
    monkeypatch.setattr(serving, "server", lambda *_args: Server())
    serving.run(app, serving.HttpSettings(), "127.0.0.1", free_port(), "test")
    assert steps == ["warm up", "serve"]
