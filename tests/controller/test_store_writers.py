"""Writers on one SQLite file queue on the store's own lock (issue 16).

Profiled with 20 sim agents and 8 clients: three quarters of a create's
wall time went to waiting in `BEGIN IMMEDIATE`, where SQLite's busy handler
sleeps in growing steps (up to 100 ms) before trying again, so a writer
woke long after the lock was free. The store now lets one writer of its
process at a time into SQLite; the others wait on a Python lock, which
hands over at once. The test makes SQLite's own wait zero: a writer that
ever reached a locked database fails ("database is locked").
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from pinfold.controller import database
from pinfold.controller.database import connect
from pinfold.controller.group_commit import GroupCommit, GroupCommitError
from pinfold.controller.store import ControllerStore, DuplicateVMError, Holding, HostRecord
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest

WRITERS = 8
EACH = 25


def always(_host: HostRecord, _existing: Sequence[Holding], _new: VMRequest) -> str | None:
    return None


def test_concurrent_writers_never_reach_sqlites_busy_handler(
    tmp_path: Path, i7_topology: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_S", 0)
    store = ControllerStore(connect(f"sqlite:///{tmp_path / 'controller.db'}"))
    store.register_host("h1", "http://127.0.0.1:1", i7_topology, 4, 0, now=0.0)
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer(n: int) -> None:
        start.wait()
        try:
            for i in range(EACH):
                name = f"w{n}-{i}"
                store.reserve(VMRequest(name, 1, 64, 1.0), "h1", always, now=1.0)
                store.set_vm_state(name, VMState.RUNNING, now=2.0)
                store.heartbeat("h1", {"n": i}, now=3.0)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.engine.dispose()
    assert [str(error)[:120] for error in errors] == []
    assert len(store.vms()) == WRITERS * EACH


def _store(tmp_path: Path, topology: dict[str, Any]) -> ControllerStore:
    store = ControllerStore(connect(f"sqlite:///{tmp_path / 'controller.db'}"))
    store.register_host("h1", "http://127.0.0.1:1", topology, 4, 0, now=0.0)
    return store


def test_concurrent_writers_share_commits(tmp_path: Path, i7_topology: dict[str, Any]) -> None:
    """Group commit: writers that come while another writes join its
    transaction and commit with it (one fsync for many). Before: one commit
    per write (`200 commits for 200 writes`)."""
    store = _store(tmp_path, i7_topology)
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _connection: commits.append(1))
    start = threading.Barrier(WRITERS)

    def writer(n: int) -> None:
        start.wait()
        for i in range(EACH):
            store.reserve(VMRequest(f"w{n}-{i}", 1, 64, 1.0), "h1", always, now=1.0)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.vms()) == WRITERS * EACH
    assert len(commits) < WRITERS * EACH, f"{len(commits)} commits for {WRITERS * EACH} writes"
    store.engine.dispose()


def test_a_failed_writer_undoes_only_its_own_work(tmp_path: Path, i7_topology: dict[str, Any]) -> None:
    """Three writers in one group: the first holds its turn until the other
    two wait for theirs; the second fails (its name is taken); the first's and
    the third's VMs are committed, the second's work is not."""
    store = _store(tmp_path, i7_topology)
    store.reserve(VMRequest("taken", 1, 64, 1.0), "h1", always, now=1.0)
    group = store._group
    assert group is not None
    release = threading.Event()
    outcomes: dict[str, BaseException | None] = {}

    def first(_host: HostRecord, _existing: Sequence[Holding], _new: VMRequest) -> str | None:
        release.wait(timeout=60)  # inside the first writer's turn
        return None

    def reserve(name: str, fits: Any = always) -> None:
        try:
            store.reserve(VMRequest(name, 1, 64, 1.0), "h1", fits, now=2.0)
            outcomes[name] = None
        except BaseException as error:
            outcomes[name] = error

    threads = [threading.Thread(target=reserve, args=(name,)) for name in ("taken", "c")]
    threads.insert(0, threading.Thread(target=reserve, args=("a", first)))
    _in_turn_order(group, threads)  # "taken" and "c" behind "a", in this order
    release.set()
    for thread in threads:
        thread.join()
    assert outcomes["a"] is None
    assert outcomes["c"] is None
    assert isinstance(outcomes["taken"], DuplicateVMError)
    assert sorted(vm.name for vm in store.vms()) == ["a", "c", "taken"]
    store.engine.dispose()


def test_a_failed_first_writer_undoes_its_work_and_the_writers_behind_it_commit(
    tmp_path: Path, i7_topology: dict[str, Any]
) -> None:
    """The group's first writer joins its transaction without a SAVEPOINT
    (nothing else to keep): when it fails, after writing, its work is rolled
    back with the transaction, and the writers queued behind it write and
    commit in a new one."""
    store = _store(tmp_path, i7_topology)
    group = store._group
    assert group is not None
    release = threading.Event()
    outcomes: dict[str, BaseException | None] = {}
    groups_before = group._group

    def first() -> None:
        try:
            with group.write() as session:
                session.execute(
                    text("INSERT INTO events (time, kind, subject, detail) VALUES (1, 'x', 'y', '{}')")
                )
                release.wait(timeout=60)
                raise ValueError("first refused")
        except BaseException as error:
            outcomes["first"] = error

    def reserve(name: str) -> None:
        try:
            store.reserve(VMRequest(name, 1, 64, 1.0), "h1", always, now=2.0)
            outcomes[name] = None
        except BaseException as error:
            outcomes[name] = error

    threads = [threading.Thread(target=first), *(threading.Thread(target=reserve, args=(n,)) for n in "bc")]
    _in_turn_order(group, threads)
    release.set()
    for thread in threads:
        thread.join()
    assert isinstance(outcomes["first"], ValueError)
    # the failure ended the first group (in a savepoint, "b" and "c" would have joined it)
    assert group._group - groups_before == 2
    assert outcomes["b"] is None
    assert outcomes["c"] is None
    assert sorted(vm.name for vm in store.vms()) == ["b", "c"]
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM events WHERE kind = 'x'")).scalar_one() == 0
    store.engine.dispose()


def test_a_writer_alone_sends_no_savepoint(tmp_path: Path, i7_topology: dict[str, Any]) -> None:
    """One writer at a time (a single client: every write) needs no
    SAVEPOINT: no other writer's work shares its transaction. Before, each
    write sent SAVEPOINT and RELEASE, two statements of a create's sixteen."""
    store = _store(tmp_path, i7_topology)
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for i in range(3):
        store.reserve(VMRequest(f"vm{i}", 1, 64, 1.0), "h1", always, now=2.0)
    assert len(store.vms()) == 3
    assert not [s for s in statements if "SAVEPOINT" in s.upper()], statements
    store.engine.dispose()


def test_a_failed_writers_error_waits_for_its_groups_commit(tmp_path: Path) -> None:
    """A writer whose body fails may have decided on earlier writers' work,
    not stored yet: its error goes out once the group has committed, as the
    others' answers do. Three writers in one group: "a" holds its turn until
    the others queue, "b" fails, "c" holds its turn; while "c" writes, the
    group cannot have committed, so "b" must not have raised yet (before the
    fix it raised as soon as it handed its turn on)."""
    engine = connect(f"sqlite:///{tmp_path / 'controller.db'}")
    group = GroupCommit(engine)
    release_a, release_c, c_writes = threading.Event(), threading.Event(), threading.Event()
    outcomes: dict[str, BaseException | None] = {}

    def writer(name: str) -> None:
        try:
            with group.write():
                if name == "a":
                    release_a.wait(timeout=60)
                elif name == "b":
                    raise ValueError("b refused")
                else:
                    c_writes.set()
                    release_c.wait(timeout=60)
            outcomes[name] = None
        except BaseException as error:
            outcomes[name] = error

    threads = {name: threading.Thread(target=writer, args=(name,)) for name in "abc"}
    _in_turn_order(group, list(threads.values()))
    release_a.set()
    assert c_writes.wait(timeout=60)
    threads["b"].join(timeout=2)
    early = "b" in outcomes
    release_c.set()
    for thread in threads.values():
        thread.join()
    engine.dispose()
    assert not early, "b's error went out while its group was still open"
    assert isinstance(outcomes["b"], ValueError)
    assert outcomes["a"] is None
    assert outcomes["c"] is None


def test_a_failed_group_commit_fails_every_writer_and_calls_on_failure(tmp_path: Path) -> None:
    """The commit itself fails: every writer of the group gets
    `GroupCommitError`, and `on_failure` empties what the store cached from
    the group's work (its topology documents) before the next writer runs."""
    engine = connect(f"sqlite:///{tmp_path / 'controller.db'}")
    failures: list[int] = []
    group = GroupCommit(engine, on_failure=lambda: failures.append(1))

    def refuse(_connection: Any) -> None:
        raise RuntimeError("disk full")

    event.listen(engine, "commit", refuse)
    with pytest.raises(GroupCommitError, match="disk full"), group.write() as session:
        session.execute(text("SELECT 1"))
    event.remove(engine, "commit", refuse)
    assert failures == [1]
    with group.write() as session:  # the next group starts afresh
        session.execute(text("SELECT 1"))
    assert failures == [1]
    engine.dispose()


CRASH_IN_A_GROUP = """
import os, signal, sys, threading
from pinfold.controller.database import connect
from pinfold.controller.group_commit import GroupCommit, GroupCommitError
from pinfold.controller.store import ControllerStore
from pinfold.model.vm import VMRequest

store = ControllerStore(connect(sys.argv[1]))
group = store._group
go_a, in_b = threading.Event(), threading.Event()

def a_fits(host, existing, new):
    go_a.wait()
    return None

def b_fits(host, existing, new):
    in_b.set()
    threading.Event().wait()  # b keeps its turn until the process dies

def reserve(name, fits):
    store.reserve(VMRequest(name, 1, 64, 1.0), "h1", fits, 3.0)
    print("answered", name, flush=True)  # never: no writer of the group returns before its commit

a = threading.Thread(target=reserve, args=("a", a_fits), daemon=True)
b = threading.Thread(target=reserve, args=("b", b_fits), daemon=True)
a.start()
while not group._turn.locked():
    pass
b.start()
while group._queued != 1:
    pass
go_a.set()  # a writes, hands its turn to b, and waits for the group's commit
in_b.wait()
assert group._members == 1
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_inside_an_open_group_keeps_nothing_of_it(tmp_path: Path, i7_topology: dict[str, Any]) -> None:
    """The crash point group commit adds: writers that did their work in the
    group's transaction and wait for its commit, none of them answered yet.
    After kill -9 there, the database has none of the group's work and is
    whole (what was committed before is there, and a new writer writes)."""
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    store = _store(tmp_path, i7_topology)
    store.reserve(VMRequest("before", 1, 64, 1.0), "h1", always, now=1.0)
    store.engine.dispose()
    done = subprocess.run(
        [sys.executable, "-c", CRASH_IN_A_GROUP, url],
        timeout=120,
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "answered" not in done.stdout
    again = ControllerStore(connect(url))
    assert [vm.name for vm in again.vms()] == ["before"]
    again.reserve(VMRequest("after", 1, 64, 1.0), "h1", always, now=4.0)
    assert [vm.name for vm in again.vms()] == ["before", "after"]
    again.engine.dispose()


def _in_turn_order(group: GroupCommit, threads: Sequence[threading.Thread]) -> None:
    """Start writer `threads` so that they have their turns in that order:
    the first has its turn (and must keep it), each next one queued behind."""
    threads[0].start()
    _until(lambda: group._turn.locked())
    for queued, thread in enumerate(threads[1:], start=1):
        thread.start()
        _until(lambda queued=queued: group._queued == queued)


def _until(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
