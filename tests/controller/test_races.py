"""Identical creates sent at once, on a real database with a scripted agent:
the later waits for the earlier, then looks at the VM again. It gets the VM
if it is still the one it asked for, places it itself if the earlier found no
host, and is refused if another request took the name meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from pinfold.controller.agents import AgentClient, AgentRefusedError
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.models import VMState
from pinfold.controller.service import Controller, ControllerError, NoHostError, Placed
from pinfold.controller.store import ControllerStore, HostRecord, VMRecord
from pinfold.model.vm import VMRequest
from tests.model.test_vm import ED25519

#: short, so that a waiter that does not wake on the creator's end fails the test, not hangs it
RACE_WAIT_S = 5.0
TWIN = VMRequest("twin", 1, 512, 2.0)


class ScriptedAgent(AgentClient):
    """An agent whose first create waits for `release`, then refuses (its
    host is full after all); the others succeed."""

    def __init__(self) -> None:  # no HTTP client: nothing is sent
        self.creates: list[tuple[str, int]] = []
        self.first_asked = threading.Event()
        self.release = threading.Event()

    def create(self, request: VMRequest) -> dict[str, Any]:
        name = request.name
        self.creates.append((name, request.vcpus))
        if len(self.creates) == 1:
            self.first_asked.set()
            assert self.release.wait(10), "the test never released the first create"
            raise AgentRefusedError("no room", "taken behind the controller's back", 409)
        return {"name": name, "pinning": [0]}

    def get(self, name: str) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        pass


@pytest.fixture
def agent() -> ScriptedAgent:
    return ScriptedAgent()


@pytest.fixture
def controller(store: ControllerStore, agent: ScriptedAgent, i7_topology: dict[str, Any]) -> Controller:
    def agent_for(host: HostRecord) -> AgentClient:
        return agent

    # creates one by one: placed together (the coalescer), a name's creates never meet in this process
    control = Controller(store, agent_for, race_wait_s=RACE_WAIT_S, coalesce_at_most=1)
    control.register("h1", "http://h1:8099", i7_topology, 6, 0)
    return control


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def seen_reserved(controller: Controller, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a look-up of the VM finds it `reserved` (the later request is about to wait)."""
    seen = threading.Event()
    look_up = controller.store.vm

    def vm(name: str) -> VMRecord | None:
        record = look_up(name)
        if record is not None and record.state is VMState.RESERVED:
            seen.set()
        return record

    monkeypatch.setattr(controller.store, "vm", vm)
    return seen


def race(
    controller: Controller,
    agent: ScriptedAgent,
    pool: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
    later: VMRequest = TWIN,
) -> tuple[Future[Placed], Future[Placed]]:
    """The first create reaches its agent; the later one finds its
    reservation; then the first one's agent answers (no)."""
    first = pool.submit(controller.create, TWIN)
    assert agent.first_asked.wait(10)
    seen = seen_reserved(controller, monkeypatch)
    second = pool.submit(controller.create, later)
    assert seen.wait(10)
    agent.release.set()
    return first, second


def test_a_create_whose_twin_found_no_host_places_the_vm_itself(
    controller: Controller, agent: ScriptedAgent, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    first, second = race(controller, agent, pool, monkeypatch)
    with pytest.raises(NoHostError):
        first.result(timeout=30)
    placed = second.result(timeout=30)
    assert time.monotonic() - started < RACE_WAIT_S  # woken by the first one's end, not the wait's
    assert (placed.created, placed.record.state, placed.record.host_id) == (True, VMState.RUNNING, "h1")
    assert agent.creates == [("twin", 1), ("twin", 1)]


def test_a_waiting_create_is_refused_when_another_request_took_the_name_meanwhile(
    controller: Controller, agent: ScriptedAgent, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first create fails; before the waiting one looks again, a create of
    another size takes the name: that VM is not the waiting one's."""
    forget = controller._forget
    other: list[Placed] = []

    def forget_then_take_the_name(name: str, *args: Any) -> None:
        forget(name, *args)
        if not other:  # the first create's reservation is dropped: another size comes in
            other.append(controller.create(VMRequest("twin", 2, 512, 2.0)))

    monkeypatch.setattr(controller, "_forget", forget_then_take_the_name)
    first, second = race(controller, agent, pool, monkeypatch)
    with pytest.raises(NoHostError):
        first.result(timeout=30)
    with pytest.raises(ControllerError) as refused:
        second.result(timeout=30)
    assert refused.value.code == "duplicate name"
    assert other[0].record.vcpus == 2
    assert agent.creates == [("twin", 1), ("twin", 2)]


def test_a_retry_of_a_reservation_without_a_creator_answers_at_once_on_sqlite(
    controller: Controller, store: ControllerStore
) -> None:
    """A controller that died after reserving and came back: nobody in this
    process creates the VM, and on SQLite no other controller can. On
    PostgreSQL another replica may be its creator: the retry waits for it."""
    sqlite = store.engine.dialect.name == "sqlite"
    # a long wait on SQLite, so that "at once" reads as a fraction of it on a loaded machine
    controller.race_wait_s = 20.0 if sqlite else 1.0
    store.reserve(TWIN, "h1", Feasibility(), controller.clock())
    started = time.monotonic()
    placed = controller.create(TWIN)
    took = time.monotonic() - started
    assert (placed.created, placed.record.state) == (False, VMState.RESERVED)
    if sqlite:
        assert took < controller.race_wait_s / 4
    else:
        assert took >= controller.race_wait_s


def test_creates_past_the_cap_of_waiters_answer_with_the_reservation_at_once(
    controller: Controller, agent: ScriptedAgent, pool: ThreadPoolExecutor
) -> None:
    """Each waiter holds one of the server's workers: past the cap, the VM is
    returned `reserved` at once (as when the wait runs out)."""
    controller.max_race_waiters = 0
    first = pool.submit(controller.create, TWIN)
    assert agent.first_asked.wait(10)
    started = time.monotonic()
    placed = controller.create(TWIN)
    assert time.monotonic() - started < 1.0
    assert (placed.created, placed.record.state) == (False, VMState.RESERVED)
    agent.release.set()
    with pytest.raises(NoHostError):
        first.result(timeout=30)


def recorded_creates(agent: ScriptedAgent, monkeypatch: pytest.MonkeyPatch) -> list[VMRequest]:
    """The requests the agent is asked to create from now on (each one succeeds)."""
    sent: list[VMRequest] = []

    def create(request: VMRequest) -> dict[str, Any]:
        sent.append(request)
        return {"name": request.name}

    monkeypatch.setattr(agent, "create", create)
    return sent


def test_a_stale_reservation_finished_by_a_retry_keeps_the_retrys_first_boot_inputs(
    controller: Controller, agent: ScriptedAgent, store: ControllerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory does not keep SSH keys or user data (they go to the
    agent's cloud-init seed): a retry that finishes a dead controller's
    reservation sends the agent the keys and user data it carries, not the
    reservation's bare request (which would make the VM without its seed)."""
    sent = recorded_creates(agent, monkeypatch)
    keyed = VMRequest("keyed", 1, 512, 2.0, ssh_keys=(ED25519,), user_data="#cloud-config\n")
    store.reserve(keyed, "h1", Feasibility(), controller.clock() - controller.stale_after_s - 1)
    controller.create(keyed)
    assert [(r.name, r.ssh_keys, r.user_data) for r in sent] == [("keyed", keyed.ssh_keys, keyed.user_data)]


def test_a_retry_with_other_first_boot_inputs_does_not_finish_a_stale_reservation(
    controller: Controller, agent: ScriptedAgent, store: ControllerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead controller's reservation keeps the digest of its keys and user
    data: a request under that name with others is not the same request, so
    it is refused (409 `duplicate name`) and hands the agent nothing; the
    reservation stays for the same request (or a heartbeat) to settle."""
    sent = recorded_creates(agent, monkeypatch)
    keyed = VMRequest("keyed", 1, 512, 2.0, ssh_keys=(ED25519,), user_data="#cloud-config\n")
    store.reserve(keyed, "h1", Feasibility(), controller.clock() - controller.stale_after_s - 1)
    for other in (replace(keyed, ssh_keys=()), replace(keyed, user_data="#cloud-config\nruncmd: [x]\n")):
        with pytest.raises(ControllerError) as refused:
            controller.create(other)
        assert (refused.value.code, refused.value.code.status) == ("duplicate name", 409)
    assert sent == []
    assert store.vm("keyed").state is VMState.RESERVED  # type: ignore[union-attr]
    assert controller.create(keyed).record.state is VMState.RUNNING
    assert [(r.ssh_keys, r.user_data) for r in sent] == [(keyed.ssh_keys, keyed.user_data)]


def test_a_heartbeat_does_not_forget_a_stale_reservation_a_retry_is_finishing(
    controller: Controller, agent: ScriptedAgent, store: ControllerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry finishes a dead controller's stale reservation; while its agent
    is creating the VM, a heartbeat sampled before that create (the VM not
    listed) arrives. It must not forget the VM: the next retry would place it
    again on another host, and the first agent would keep it too (found by
    kill -9 during a bulk create, tests/controller/test_crash.py)."""

    def create(request: VMRequest) -> dict[str, Any]:
        assert controller.heartbeat("h1", {"vms": {}})  # the agent has not listed it yet
        return {"name": request.name, "pinning": [0]}

    monkeypatch.setattr(agent, "create", create)
    store.reserve(TWIN, "h1", Feasibility(), controller.clock() - controller.stale_after_s - 1)
    placed = controller.create(TWIN)
    assert placed.record.state is VMState.RUNNING
    assert store.vm(TWIN.name) is not None
