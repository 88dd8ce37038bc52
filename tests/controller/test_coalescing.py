"""Creates that arrive while another is under way are placed together
(issue 16): `Coalescer`, the leader/follower batching, and the controller's
use of it, where the VMs land where one-by-one creates in the same order would
put them, with each host's share reserved, made and marked running once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pinfold.controller.agents import AgentRefusedError, AgentUnreachableError
from pinfold.controller.coalescing import Coalescer
from pinfold.controller.database import connect
from pinfold.controller.service import Controller, ControllerError, NoHostError, Placed
from pinfold.controller.store import ControllerStore
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from tests.controller.test_bulk_batches import write_commits


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


class Gate:
    """A batch runner that holds its first batch until opened, and records each batch."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.batches: list[tuple[str, list[str]]] = []

    def run(self, key: str, items: list[str]) -> list[str | BaseException]:
        self.batches.append((key, list(items)))
        if len(self.batches) == 1:
            assert self.open.wait(30)
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


def start_queued(coalescer: Coalescer[Any, Any, Any], thread: threading.Thread) -> None:
    """Start a thread that submits, and wait until its item is queued."""
    queued = coalescer.queued
    thread.start()
    wait_until(lambda: coalescer.queued == queued + 1)


def submit_in_order(
    coalescer: Coalescer[str, str, str], submissions: list[tuple[str, str]]
) -> dict[str, Any]:
    """Each (key, item) submitted from its own thread, each queued before the next starts."""
    answers: dict[str, Any] = {}

    def submit(key: str, item: str) -> None:
        try:
            answers[item] = coalescer.submit(key, item)
        except ValueError as error:
            answers[item] = error

    threads = []
    for key, item in submissions:
        threads.append(threading.Thread(target=submit, args=(key, item)))
        start_queued(coalescer, threads[-1])
    return {"threads": threads, "answers": answers}


def open_and_join(gate: Gate, threads: list[threading.Thread]) -> None:
    """Let the held batch go, then wait for every thread, none held for ever."""
    gate.open.set()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a request still waits"


def held_first(
    gate: Gate, most: int = 32, gather_s: float = 0.01
) -> tuple[Coalescer[str, str, str], threading.Thread]:
    """A coalescer whose first batch ("first" alone) is under way, held at the gate."""
    coalescer: Coalescer[str, str, str] = Coalescer(gate.run, identity=str, most=most, gather_s=gather_s)
    first = threading.Thread(target=coalescer.submit, args=("k", "first"))
    first.start()
    wait_until(lambda: len(gate.batches) == 1)
    return coalescer, first


def test_a_lone_item_runs_at_once_and_those_arriving_meanwhile_run_together_next():
    gate = Gate()
    coalescer, first = held_first(gate)
    assert gate.batches == [("k", ["first"])]
    assert coalescer.queued == 0
    later = submit_in_order(coalescer, [("k", "b"), ("k", "c"), ("k", "d")])
    assert gate.batches == [("k", ["first"])], "nothing runs beside the batch under way"
    gate.open.set()
    for thread in [first, *later["threads"]]:
        thread.join(30)
    assert gate.batches == [("k", ["first"]), ("k", ["b", "c", "d"])]
    assert later["answers"] == {"b": "B", "c": "C", "d": "D"}
    assert (coalescer.batches, coalescer.items) == (2, 4)


def test_the_next_batch_waits_for_the_client_the_last_one_answered():
    """When "first" ends, three requests were in flight ("first" and the two
    queued behind it): the next batch waits for the third, the client
    "first" answered, sending its next request ("again"), and takes all three
    (the code before ran "a" and "b" at once, then "again" alone: two
    batches taking turns). `gather_s` is long here, so only gathering can
    put the three together."""
    gate = Gate()
    coalescer, first = held_first(gate, gather_s=60.0)
    later = submit_in_order(coalescer, [("k", "a"), ("k", "b")])
    gate.open.set()
    first.join(30)
    wait_until(lambda: coalescer.queued == 2)
    assert gate.batches == [("k", ["first"])], "a and b wait for the third"
    assert coalescer.submit("k", "again") == "AGAIN"
    for thread in later["threads"]:
        thread.join(30)
    assert gate.batches == [("k", ["first"]), ("k", ["a", "b", "again"])]
    assert later["answers"] == {"a": "A", "b": "B"}


def test_another_keys_request_is_not_held_by_a_gathering():
    """Only requests of the last batch's key gather: "x", of another key,
    queued behind "first", runs as soon as "first" ends, though "a" waits
    for the client "first" answered (a gathering that counted every key held
    "x" too, and a busy key could hold it for ever). "a" then runs once "x"
    ended, and nothing waited out the long `gather_s`."""
    gate = Gate()
    coalescer, first = held_first(gate, gather_s=600.0)
    later = submit_in_order(coalescer, [("other", "x"), ("k", "a")])
    open_and_join(gate, [first, *later["threads"]])
    assert gate.batches == [("k", ["first"]), ("other", ["x"]), ("k", ["a"])]
    assert later["answers"] == {"x": "X", "a": "A"}


def test_after_a_gathering_ran_out_of_time_the_next_batch_gathers_nothing():
    """The clients did not come back at once (unrelated requests, or fewer
    clients now): the batch after the one whose gathering ran out of time
    goes at once, so such a stream waits at most every other batch."""
    gate = Gate()
    coalescer, first = held_first(gate, gather_s=0.05)
    later = submit_in_order(coalescer, [("k", "a"), ("k", "b")])
    open_and_join(gate, [first, *later["threads"]])
    assert gate.batches == [("k", ["first"]), ("k", ["a", "b"])]  # they waited 0.05 s for a third
    coalescer.gather_s = 600.0
    second = threading.Thread(target=coalescer.submit, args=("k", "alone"))
    second.start()
    second.join(60)
    assert not second.is_alive(), "held by a gathering"
    assert gate.batches[-1] == ("k", ["alone"])


def test_gathering_ends_when_its_time_is_up():
    """The third request never comes: "a" and "b" go together once
    `gather_s` has passed since "first" ended."""
    gate = Gate()
    coalescer, first = held_first(gate, gather_s=0.05)
    later = submit_in_order(coalescer, [("k", "a"), ("k", "b")])
    open_and_join(gate, [first, *later["threads"]])
    assert gate.batches == [("k", ["first"]), ("k", ["a", "b"])]


def test_a_lone_client_is_never_held():
    """One request at a time: each was the only one in flight when the one
    before it ended, so each runs at once, however long `gather_s` is."""
    gate = Gate()
    gate.open.set()
    coalescer: Coalescer[str, str, str] = Coalescer(gate.run, identity=str, gather_s=600.0)
    answers: list[str] = []
    client = threading.Thread(target=lambda: answers.extend(coalescer.submit("k", item) for item in "abc"))
    client.start()
    client.join(60)  # held, it would take 600 s a request
    assert answers == ["A", "B", "C"]
    assert gate.batches == [("k", ["a"]), ("k", ["b"]), ("k", ["c"])]


def test_a_wait_cannot_be_negative():
    with pytest.raises(ValueError, match="not negative"):
        Coalescer(Gate().run, identity=str, gather_s=-1.0)


def test_keys_are_not_mixed_and_an_item_sent_twice_waits_for_the_next_batch():
    gate = Gate()
    coalescer, first = held_first(gate)
    later = submit_in_order(coalescer, [("k", "a"), ("other", "x"), ("k", "a"), ("k", "b")])
    gate.open.set()
    for thread in [first, *later["threads"]]:
        thread.join(30)
    assert sorted(gate.batches[1:]) == [("k", ["a"]), ("k", ["a", "b"]), ("other", ["x"])]
    assert later["answers"] == {"a": "A", "x": "X", "b": "B"}


def test_an_items_error_is_raised_in_its_thread_alone_and_a_failed_batch_in_all_of_them():
    gate = Gate()
    coalescer, first = held_first(gate, most=2)
    later = submit_in_order(coalescer, [("k", "bad1"), ("k", "good"), ("k", "last")])
    gate.open.set()
    for thread in [first, *later["threads"]]:
        thread.join(30)
    batches = [items for _, items in gate.batches]
    # two at most a batch; which two depends on which queued thread wakes first to lead
    assert batches[0] == ["first"]
    assert sorted(len(items) for items in batches[1:]) == [1, 2]
    assert sorted(item for items in batches[1:] for item in items) == ["bad1", "good", "last"]
    assert isinstance(later["answers"]["bad1"], ValueError)
    assert later["answers"]["good"] == "GOOD"

    def broken(key: str, items: list[str]) -> list[str | BaseException]:
        raise ValueError("the batch failed")

    with pytest.raises(ValueError, match="the batch failed"):
        Coalescer(broken, identity=str).submit("k", "any")
    with pytest.raises(ValueError, match="at least one item"):
        Coalescer(broken, identity=str, most=0)


class HeldAgent:
    """An agent that creates what it is asked at once, but holds the first
    create until opened; records each call."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.calls: list[list[str]] = []

    def create(self, request: VMRequest) -> dict[str, Any]:
        self.calls.append([request.name])
        if len(self.calls) == 1:
            assert self.open.wait(30)
        return {"name": request.name, "pinning": [0]}

    def create_many(self, requests: list[VMRequest]) -> list[dict[str, Any]]:
        self.calls.append([request.name for request in requests])
        return [{"name": request.name, "pinning": [0]} for request in requests]


@pytest.fixture
def controllers(tmp_path: Path, i7_topology: dict[str, Any]) -> Iterator[Callable[..., Controller]]:
    made: list[Controller] = []

    def make(name: str, agent: Any) -> Controller:
        controller = Controller(
            ControllerStore(connect(f"sqlite:///{tmp_path / name}.db")),
            lambda host: agent,
            heartbeat_period_s=3600,
        )
        for i in range(4):
            controller.register(f"h{i}", f"http://127.0.0.1:{9000 + i}", i7_topology, 2, 0)
        made.append(controller)
        return controller

    yield make
    for controller in made:
        controller.store.engine.dispose()


def test_creates_arriving_during_a_create_are_placed_together_where_one_by_one_creates_go(controllers):
    """One create held at its agent; 9 more arrive meanwhile (more than the
    first host holds). They are placed in one pass: each host's share made in
    one agent call, two commits per host, and every VM on the host that
    one-by-one creates in the same order choose. One that fits nowhere is
    refused alone, with its reasons."""
    agent = HeldAgent()
    together = controllers("together", agent)
    requests = [VMRequest(f"vm{i}", (2, 1, 4)[i % 3], 512, (1.0, 2.0)[i % 2]) for i in range(10)]
    requests.append(VMRequest("huge", 64, 512, 1.0))
    answers: dict[str, Placed | ControllerError] = {}

    def create(request: VMRequest) -> None:
        try:
            answers[request.name] = together.create(request)
        except ControllerError as error:
            answers[request.name] = error

    first = threading.Thread(target=create, args=(requests[0],))
    first.start()
    wait_until(lambda: len(agent.calls) == 1)
    threads = [first]
    for request in requests[1:]:
        threads.append(threading.Thread(target=create, args=(request,)))
        start_queued(together.coalescer, threads[-1])
    commits = write_commits(together)
    agent.open.set()
    for thread in threads:
        thread.join(30)

    accepting = HeldAgent()
    accepting.open.set()
    one_by_one = controllers("alone", accepting)
    for request in requests[:-1]:
        one_by_one.create(request)
    expected = {vm.name: vm.host_id for vm in one_by_one.vms()}
    got = {name: a.record.host_id for name, a in answers.items() if isinstance(a, Placed)}
    assert got == expected
    assert len(set(expected.values())) >= 2
    assert isinstance(answers["huge"], NoHostError)
    assert all(
        a.created and a.pinning == (0,) and a.host is not None
        for a in answers.values()
        if isinstance(a, Placed)
    )
    made_together = agent.calls[1:]
    assert sorted(name for call in made_together for name in call) == sorted(r.name for r in requests[1:-1])
    assert len(made_together) == len({got[r.name] for r in requests[1:-1]}), "one agent call per host"
    # the first create's `running` write, then two a host (fewer when SQLite's group commit joins them)
    assert len(commits) <= 1 + 2 * len(made_together), f"{len(commits)} commits"
    assert (together.coalescer.batches, together.coalescer.items) == (2, 11)


def test_the_same_create_sent_twice_meanwhile_makes_one_vm_and_both_get_it(controllers):
    agent = HeldAgent()
    controller = controllers("twins", agent)
    first = threading.Thread(target=controller.create, args=(VMRequest("first", 1, 512),))
    first.start()
    wait_until(lambda: len(agent.calls) == 1)
    twin = VMRequest("twin", 2, 512, 2.0)
    answers: list[Placed] = []
    threads = [threading.Thread(target=lambda: answers.append(controller.create(twin))) for _ in range(2)]
    for thread in threads:
        start_queued(controller.coalescer, thread)
    agent.open.set()
    for thread in [first, *threads]:
        thread.join(30)
    assert sorted(a.created for a in answers) == [False, True]
    assert {a.record.host_id for a in answers} == {
        next(vm.host_id for vm in controller.vms() if vm.name == "twin")
    }
    assert [call for call in agent.calls if "twin" in call] == [["twin"]]


class HeldDeletes(HeldAgent):
    """`HeldAgent`, whose lone deletes hold the first until opened; its
    batches of deletes refuse `stuck`, and get no answer when they hold `far`.
    Records each call."""

    def __init__(self) -> None:
        super().__init__()
        self.deletes: list[list[str]] = []
        self.open_deletes = threading.Event()

    def delete(self, name: str) -> bool:
        self.deletes.append([name])
        if len(self.deletes) == 1:
            assert self.open_deletes.wait(30)
        return True

    def delete_many(self, names: list[str]) -> list[bool | AgentRefusedError]:
        self.deletes.append(list(names))
        if "far" in names:
            raise AgentUnreachableError("timed out", sent=True)
        refused = AgentRefusedError("hypervisor failed", "the domain would not go", 502)
        return [refused if name == "stuck" else True for name in names]


def test_deletes_arriving_during_a_delete_are_done_together_each_with_its_own_outcome(controllers):
    """One delete held at its agent; deletes of VMs on several hosts arrive
    meanwhile, with an unknown name, a VM being migrated, one its agent
    refuses, and some on a host whose agent does not answer. They are done
    in one pass: two commits (every VM marked `deleting`, the deleted ones
    forgotten), one agent call per host, and each request gets what a
    delete alone would have."""
    agent = HeldDeletes()
    agent.open.set()
    controller = controllers("deletes", agent)
    names = ["far", *(f"vm{i}" for i in range(8)), "stuck", "moving"]  # four a host
    for name in names:
        controller.create(VMRequest(name, 2, 512))
    hosts = {vm.name: vm.host_id for vm in controller.vms()}
    assert hosts["stuck"] != hosts["far"]
    controller.store.set_vm_state("moving", VMState.MIGRATING, 1.0)
    unanswered = {name for name in names if hosts[name] == hosts["far"] and name not in ("moving", "vm0")}
    answers: dict[str, Any] = {}

    def delete(name: str) -> None:
        try:
            answers[name] = controller.delete(name)
        except ControllerError as error:
            answers[name] = error

    first = threading.Thread(target=delete, args=("vm0",))
    first.start()
    wait_until(lambda: len(agent.deletes) == 1)
    threads = [first]
    for name in [*(name for name in names if name != "vm0"), "ghost"]:
        threads.append(threading.Thread(target=delete, args=(name,)))
        start_queued(controller.deleter, threads[-1])
    commits = write_commits(controller)
    agent.open_deletes.set()
    for thread in threads:
        thread.join(30)

    assert answers["ghost"].code == "unknown vm"
    assert answers["moving"].code == "invalid"
    assert answers["stuck"].code == "agent failed"
    assert "the domain would not go" in answers["stuck"].detail
    for name in unanswered:  # retried every period, as a delete alone leaves it
        assert answers[name].state is VMState.DELETING, name
    deleted = set(names) - unanswered - {"stuck", "moving"}
    assert unanswered
    assert len(deleted) > 1
    assert all(answers[name] is None for name in deleted), answers
    left = {vm.name: vm.state for vm in controller.vms()}
    assert left == {**dict.fromkeys([*unanswered, "stuck"], VMState.DELETING), "moving": VMState.MIGRATING}
    events = [e.subject for e in controller.store.events(limit=1000) if e.kind == "vm deleted"]
    assert sorted(events) == sorted(deleted)
    calls = agent.deletes[1:]
    assert sorted(name for call in calls for name in call) == sorted(set(names) - {"vm0", "moving"})
    assert len(calls) == len({hosts[name] for call in calls for name in call}), "one agent call per host"
    # the first delete's forget, then the pass's two (alone: two a VM deleted, one a VM left deleting)
    assert len(commits) == 3, f"{len(commits)} commits"
    assert (controller.deleter.batches, controller.deleter.items) == (2, 12)
    # the picture forgot them too: the freed CPUs take new VMs where the deleted ones were
    again = controller.create(VMRequest("again", 2, 512))
    assert again.record.host_id is not None
