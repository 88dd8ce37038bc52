"""The controller's agent client against a stand-in agent served on loopback:
a lifecycle action has its own, longer timeout than the other calls; a create
sends its request's fields as the agent's create body."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from pinfold.controller.agents import AgentClient, AgentRefusedError, AgentUnreachableError
from pinfold.controller.daemon import AgentClients
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.models import VMState
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore
from pinfold.model.vm import VMRequest
from tests.servers import Served, serving

#: the client's ordinary timeout; the stand-in agent takes SLOW_S, its action timeout is longer
TIMEOUT_S = 0.3
SLOW_S = 0.8
ACTION_TIMEOUT_S = 5.0


@pytest.fixture
def slow_agent() -> Iterator[str]:
    """An agent whose every answer takes SLOW_S, as a shutdown that ends in a forced power-off."""
    app = FastAPI()

    @app.post("/api/v1/vms/{name}/{action}")
    def act(name: str, action: str) -> dict[str, str]:
        time.sleep(SLOW_S)
        return {"name": name, "state": "shutoff" if action == "shutdown" else "running"}

    @app.get("/api/v1/vms/{name}")
    def get(name: str) -> dict[str, str]:
        time.sleep(SLOW_S)
        return {"name": name, "state": "running"}

    with serving(app) as url:
        yield url


def test_a_shutdown_slower_than_the_call_timeout_waits_for_the_agents_answer(slow_agent: str) -> None:
    client = AgentClient(slow_agent, "t" * 16, timeout_s=TIMEOUT_S, action_timeout_s=ACTION_TIMEOUT_S)
    try:
        assert client.act("v1", "shutdown")["state"] == "shutoff"
    finally:
        client.close()


def test_other_calls_keep_the_ordinary_timeout(slow_agent: str) -> None:
    client = AgentClient(slow_agent, "t" * 16, timeout_s=TIMEOUT_S, action_timeout_s=ACTION_TIMEOUT_S)
    try:
        with pytest.raises(AgentUnreachableError) as caught:
            client.get("v1")
        assert caught.value.sent
    finally:
        client.close()


def test_an_action_slower_than_the_action_timeout_is_unanswered(slow_agent: str) -> None:
    client = AgentClient(slow_agent, "t" * 16, timeout_s=TIMEOUT_S, action_timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(AgentUnreachableError):
            client.act("v1", "shutdown")
    finally:
        client.close()


def test_a_shutdown_through_the_controller_outlasting_the_call_timeout_succeeds(
    slow_agent: str, store: ControllerStore, i7_topology: dict[str, Any]
) -> None:
    """What `pinfold vm shutdown` does when the guest has to be forced off:
    the controller answers with the agent's state, not 502 "agent failed"."""
    clients = AgentClients("t" * 16, timeout_s=TIMEOUT_S, action_timeout_s=ACTION_TIMEOUT_S)
    try:
        controller = Controller(store, clients, stale_after_s=60.0)
        controller.register("h1", slow_agent, i7_topology, 6, 0)
        store.reserve(VMRequest("v1", 1, 512), "h1", Feasibility(), controller.clock())
        store.set_vm_state("v1", VMState.RUNNING, controller.clock())
        assert controller.act("v1", "shutdown").state is VMState.SHUTOFF
    finally:
        clients.close()


#: an agent's refused placement: its JSON error, and the refusal as data (agent/api.py)
REFUSAL: dict[str, Any] = {
    "code": "not enough cpu", "level": 1.0, "needed": 2.0, "free": 0.0, "capacity": 8.0,
    "fits_ever": True, "detail": "",
}  # fmt: skip
REFUSED: dict[str, Any] = {
    "error": "not enough cpu", "code": "not enough cpu", "detail": "not enough cpu at level 1.0: ...",
    "refusal": REFUSAL,
}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "needed"),
    [
        (REFUSED, 2.0),
        ({**REFUSED, "refusal": {**REFUSAL, "needed": "two"}}, None),  # not a refusal
        ({key: value for key, value in REFUSED.items() if key != "refusal"}, None),  # an older agent
    ],
    ids=["with-numbers", "malformed", "without"],
)
def test_the_client_reads_an_agents_refusal_as_data(body: dict[str, Any], needed: float | None) -> None:
    app = FastAPI()

    @app.post("/api/v1/vms")
    def create() -> JSONResponse:
        return JSONResponse(body, status_code=409)

    with serving(app) as url, pytest.raises(AgentRefusedError) as refused:
        AgentClient(url, "token").create(VMRequest("v", 2, 512))
    assert (refused.value.code, refused.value.status) == ("not enough cpu", 409)
    refusal = refused.value.refusal
    assert (refusal.requested if refusal else None) == needed


def test_a_create_sends_the_requests_fields_as_the_agents_body() -> None:
    """The bytes the positional create sent before it took a `VMRequest`:
    every field, but an empty image is left out."""
    app = FastAPI()
    received: list[bytes] = []

    @app.post("/api/v1/vms", status_code=201)
    async def create(request: Request) -> dict[str, str]:
        received.append(await request.body())
        return {"state": "running"}

    with serving(app) as url:
        client = AgentClient(url, "t" * 16, timeout_s=10)
        try:
            client.create(VMRequest("web-1", 2, 512, 2.0, "alice", "/img/base.qcow2"))
            client.create(VMRequest("d", 1, 128))
            client.create(VMRequest("k", 1, 128, ssh_keys=("ssh-ed25519 AAAA a",), user_data="#!/bin/sh\n"))
        finally:
            client.close()
    assert received == [
        b'{"name":"web-1","vcpus":2,"memory_mib":512,"ratio":2.0,"owner":"alice","image":"/img/base.qcow2"}',
        b'{"name":"d","vcpus":1,"memory_mib":128,"ratio":1.0,"owner":""}',
        # keys and user data only when there are some: a create without them sends what it did
        b'{"name":"k","vcpus":1,"memory_mib":128,"ratio":1.0,"owner":"","ssh_keys":["ssh-ed25519 AAAA a"],'
        b'"user_data":"#!/bin/sh\\n"}',
    ]


def _recording_agent(peers: list[str]) -> FastAPI:
    """A stand-in agent that notes each request's peer (its address and port)."""
    app = FastAPI()

    @app.get("/api/v1/vms/{name}")
    def get(name: str, request: Request) -> dict[str, str]:
        peers.append(f"{request.client.host}:{request.client.port}" if request.client else "")
        return {"name": name, "state": "running"}

    return app


def test_calls_to_one_agent_share_a_kept_connection() -> None:
    peers: list[str] = []
    with serving(_recording_agent(peers)) as url:
        client = AgentClient(url, "t" * 16)
        try:
            for _ in range(3):
                assert client.get("v1") == {"name": "v1", "state": "running"}
        finally:
            client.close()
    assert len(peers) == 3, peers
    assert len(set(peers)) == 1, peers  # one connection, kept alive


def test_an_agent_restarted_between_two_calls_is_reached_again() -> None:
    """The kept connection died with the agent: the next call finds it
    dropped and opens a new one (no "no answer"); while the agent is down
    the call was not sent at all (`sent` False: nothing to wait for)."""
    peers: list[str] = []
    first = Served(_recording_agent(peers))
    client = AgentClient(first.url, "t" * 16, timeout_s=5)
    try:
        assert client.get("v1") == {"name": "v1", "state": "running"}
        first.stop()
        with pytest.raises(AgentUnreachableError) as down:
            client.get("v1")
        assert not down.value.sent
        again = Served(_recording_agent(peers), port=first.port)
        try:
            assert client.get("v2") == {"name": "v2", "state": "running"}
        finally:
            again.stop()
    finally:
        client.close()
    assert len(peers) == 2, peers
    assert peers[0] != peers[1], peers  # a new connection after the restart


def test_an_answer_that_is_not_json_is_no_answer() -> None:
    """A 200 that is not the agent's JSON (a proxy's page, a truncated
    body): the call may have been carried out, so it is "unreachable, sent"."""
    app = FastAPI()

    @app.post("/api/v1/vms")
    def create() -> PlainTextResponse:
        return PlainTextResponse("<html>gateway</html>")

    with serving(app) as url, pytest.raises(AgentUnreachableError, match="not JSON") as caught:
        AgentClient(url, "t" * 16).create(VMRequest("v", 2, 512))
    assert caught.value.sent


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A TCP port that takes connections and never says a word (no TLS handshake)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener


@pytest.mark.parametrize("reset", [False, True], ids=["timed-out", "reset"])
def test_a_tls_handshake_that_fails_is_a_call_not_sent(silent_listener: socket.socket, reset: bool) -> None:
    """The TCP connection was made, the TLS one never was (the agent said
    nothing, or reset the connection): nothing reached the agent, so a create
    goes to the next host, as when the connection is refused."""

    def reset_it() -> None:
        peer, _address = silent_listener.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.recv(1)  # the client's hello has started
        peer.close()  # a reset, not a clean close

    resetter = threading.Thread(target=reset_it, daemon=True)
    if reset:
        resetter.start()
    port = silent_listener.getsockname()[1]
    client = AgentClient(f"https://127.0.0.1:{port}", "t" * 16, timeout_s=5 if reset else 0.3)
    try:
        with pytest.raises(AgentUnreachableError, match="cannot reach the agent") as caught:
            client.get("v1")
        assert not caught.value.sent
    finally:
        client.close()
        if reset:
            resetter.join(timeout=5)


@pytest.mark.parametrize(
    "address", ["http://", "http://:8080", "http://h:99999", "http://a b:1", "http://h:0"]
)
def test_an_address_that_cannot_be_called_is_an_agent_not_reached(address: str) -> None:
    """A registration's address the HTTP client cannot use: each call is
    refused as unreachable (not sent), not an error of the controller's own."""
    client = AgentClient(address, "t" * 16)
    with pytest.raises(AgentUnreachableError, match="not usable") as caught:
        client.create(VMRequest("v", 1, 128))
    assert not caught.value.sent
    client.close()
