"""A bulk create's batched reservations (issue 16): each host's share of a
bulk is reserved in one transaction, the host replayed once, and the VMs
land exactly where one-by-one creates in the same order would put them.

In-process, with an agent stand-in that accepts every create at once: only
the controller's own choices and transactions are under test here (the
REST path with real sim agents is tests/controller/test_bulk.py's).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from pinfold.controller import feasibility
from pinfold.controller.database import connect
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.service import Controller, ControllerError, NoHostError, Placed
from pinfold.controller.store import ControllerStore, UnknownHostError
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest

HOSTS = 12


class Accepting:
    """An agent that creates whatever it is asked, at once."""

    def create(self, request: VMRequest) -> dict[str, Any]:
        return {"name": request.name, "pinning": []}

    def create_many(self, requests: list[VMRequest]) -> list[dict[str, Any]]:
        return [self.create(request) for request in requests]

    def delete(self, name: str) -> bool:
        return True


def controller_on(url: str, topology: dict[str, Any], policy: str) -> Controller:
    agent = Accepting()
    controller = Controller(
        ControllerStore(connect(url)),
        lambda host: agent,  # type: ignore[arg-type,return-value]
        heartbeat_period_s=3600,
        default_policy=policy,
    )
    for i in range(HOSTS):
        controller.register(f"h{i:02d}", f"http://127.0.0.1:{9000 + i}", topology, 2, 0)
    return controller


def mixed(count: int) -> list[VMRequest]:
    """VMs of mixed sizes and levels, more than the hosts can take."""
    return [
        VMRequest(f"vm{i}", (1, 2, 4, 1, 2)[i % 5], (256, 1024, 2048)[i % 3], (1.0, 2.0, 3.0)[i % 3])
        for i in range(count)
    ]


def hosts_of(controller: Controller) -> dict[str, str | None]:
    return {vm.name: vm.host_id for vm in controller.vms()}


@pytest.fixture
def fresh(tmp_path: Path, i7_topology: dict[str, Any]) -> Iterator[Any]:
    made: list[Controller] = []

    def make(name: str, policy: str) -> Controller:
        controller = controller_on(f"sqlite:///{tmp_path / name}.db", i7_topology, policy)
        made.append(controller)
        return controller

    yield make
    for controller in made:
        controller.store.engine.dispose()


@pytest.mark.parametrize("policy", ["progress", "first-fit", "best-fit", "worst-fit"])
def test_a_bulk_places_every_vm_on_the_host_one_by_one_creates_choose(fresh, policy):
    """The same mixed VMs, one by one on a fresh cluster and in one bulk on
    another: the same host for every VM, the same ones refused for lack of
    room (the cluster fills up before the end), with every policy."""
    requests = mixed(HOSTS * 9)
    single = fresh("single", policy)
    refused_singly = set()
    for request in requests:
        try:
            single.create(request)
        except NoHostError:
            refused_singly.add(request.name)
    bulk = fresh("bulk", policy).create_many(requests)
    refused_in_bulk = {
        r.name for r, o in zip(requests, bulk.outcomes, strict=True) if isinstance(o, NoHostError)
    }
    assert refused_singly
    assert refused_in_bulk == refused_singly
    assert all(
        isinstance(o, Placed)
        for r, o in zip(requests, bulk.outcomes, strict=True)
        if r.name not in refused_singly
    )
    placed = hosts_of(single)
    assert len(set(placed.values())) == HOSTS
    assert hosts_of_bulk(bulk) == placed


def hosts_of_bulk(bulk: Any) -> dict[str, str | None]:
    return {o.record.name: o.record.host_id for o in bulk.outcomes if isinstance(o, Placed)}


def write_commits(controller: Controller) -> list[str]:
    """A list that grows by one at each commit of a transaction that wrote."""
    commits: list[str] = []

    def statement(conn: Any, _cursor: Any, text: str, *_: Any) -> None:
        if text.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            conn.info["wrote"] = True

    def commit(conn: Any) -> None:
        if conn.info.pop("wrote", False):
            commits.append("commit")

    event.listen(controller.store.engine, "before_cursor_execute", statement)
    event.listen(controller.store.engine, "commit", commit)
    return commits


def test_a_bulk_commits_twice_per_host_not_twice_per_vm(tmp_path, database_url, i7_topology):
    """60 VMs (on the 8 hosts `progress` fills): one transaction reserves
    each host's share and one marks it running (16 commits), where reserving
    and marking each VM alone took two commits per VM (120)."""
    controller = controller_on(database_url, i7_topology, "progress")
    commits = write_commits(controller)
    try:
        bulk = controller.create_many([VMRequest(f"vm{i}", 1, 256, 1.0) for i in range(60)])
        assert all(isinstance(outcome, Placed) for outcome in bulk.outcomes)
        used = {vm.host_id for vm in controller.vms()}
        assert len(commits) <= 2 * len(used), f"{len(commits)} commits for 60 VMs on {len(used)} hosts"
    finally:
        controller.store.engine.dispose()


class Failing:
    """An admission that fails at the third VM (a bug, a lost connection)."""

    def __init__(self) -> None:
        self.seen = 0

    def admit(self, new: VMRequest) -> None:
        self.seen += 1
        if self.seen == 3:
            raise RuntimeError("the check failed")


def test_a_batch_that_fails_midway_reserves_none_of_its_vms(database_url, i7_topology):
    """One transaction: the two VMs admitted before the failure are not kept."""
    controller = controller_on(database_url, i7_topology, "progress")
    failing = Failing()
    try:
        with pytest.raises(RuntimeError):
            controller.store.reserve_many(
                [VMRequest(f"vm{i}", 1, 256) for i in range(4)], "h00", lambda host, vms: failing, 1.0
            )
        assert failing.seen == 3
        assert controller.vms() == []
        assert controller.store.reserve_many([VMRequest("vm0", 1, 256)], "h00", lambda h, v: Failing(), 2.0)[
            0
        ]
    finally:
        controller.store.engine.dispose()


def test_reservations_on_a_host_replay_it_once_while_nothing_else_changes_it(
    tmp_path, i7_topology, monkeypatch
):
    """Each reservation used to replay every VM of its host through a new
    allocator (0.06 ms a VM, at every create); the allocator a reservation
    leaves is taken by the next one when the host holds exactly what it holds."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    replays: list[str] = []
    replayed = feasibility._replayed

    def counted(host: Any, *rest: Any) -> Any:
        replays.append(host.id)
        return replayed(host, *rest)

    monkeypatch.setattr(feasibility, "_replayed", counted)
    try:
        for i in range(6):
            controller.create(VMRequest(f"vm{i}", 1, 256))
        assert replays == ["h00"]
        controller.delete("vm0")  # the host changed: replayed again, once
        for i in range(6, 8):
            controller.create(VMRequest(f"vm{i}", 1, 256))
        assert replays == ["h00", "h00"]
    finally:
        controller.store.engine.dispose()


def test_a_kept_allocator_never_holds_what_the_database_does_not(tmp_path, i7_topology):
    """i7: 8 CPUs. A check admits 6 vCPUs whose transaction then rolls back
    (the database never had them): the next check of the host, with the host
    empty, admits 8; one with 8 there, held behind the kept allocator's back
    (another replica), refuses 1 more."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        host = controller.store.host("h00")
        assert host is not None
        fits = Feasibility()
        assert fits.on_host(host, []).admit(VMRequest("lost", 6, 256)) is None
        assert fits.on_host(host, []).admit(VMRequest("all", 8, 256)) is None
        elsewhere = controller.store.reserve(VMRequest("other", 8, 256), "h00", lambda h, v, n: None, 1.0)
        assert fits.on_host(host, [elsewhere]).admit(VMRequest("more", 1, 256)) is not None
    finally:
        controller.store.engine.dispose()


def test_a_new_vms_create_reads_its_host_once_and_its_name_only_under_the_lock(tmp_path, i7_topology):
    """The host a create's agent is asked on is the one its reservation read
    under the host's lock, and a name the picture lacks is checked there
    only: each was read before the reservation too, a statement and a
    connection each. Also: the answer names that host."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    host_rows: list[str] = []
    name_rows: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "FROM hosts" in statement and "WHERE hosts.id =" in statement:
            host_rows.append(statement)
        if "FROM vms" in statement and "WHERE vms.name =" in statement:
            name_rows.append(statement)

    event.listen(controller.store.engine, "before_cursor_execute", note)
    try:
        placed = controller.create(VMRequest("vm0", 1, 256))
        assert placed.host is not None
        assert placed.host.id == placed.record.host_id == "h00"
        assert len(host_rows) == 1, host_rows
        assert name_rows == []
    finally:
        event.remove(controller.store.engine, "before_cursor_execute", note)
        controller.store.engine.dispose()


def test_a_name_the_picture_lacks_is_still_the_same_vm_again(tmp_path, i7_topology):
    """A VM written behind this controller's picture (as another replica
    would): the same create again is found by the reservation (its name
    check, `IN`, before any look-up by name) and answered as a repeat, a
    different one refused as a duplicate name."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "FROM vms" in statement and ("WHERE vms.name IN" in statement or "WHERE vms.name =" in statement):
            seen.append("reservation" if "WHERE vms.name IN" in statement else "look-up")

    try:
        request = VMRequest("elsewhere", 1, 256)
        controller.store.reserve(request, "h01", lambda h, v, n: None, 1.0)
        controller.store.set_vm_state("elsewhere", VMState.RUNNING, 2.0)
        event.listen(controller.store.engine, "before_cursor_execute", note)
        again = controller.create(request)
        event.remove(controller.store.engine, "before_cursor_execute", note)
        assert not again.created
        assert again.record.host_id == "h01"
        assert seen[0] == "reservation", seen
        with pytest.raises(ControllerError, match="duplicate name"):
            controller.create(VMRequest("elsewhere", 2, 256))
        assert [vm.name for vm in controller.store.vms()] == ["elsewhere"]
    finally:
        controller.store.engine.dispose()


def test_a_repeat_whose_ranked_hosts_all_vanished_is_still_a_repeat(tmp_path, i7_topology, monkeypatch):
    """Every ranked host gone before its reservation took its lock: no
    reservation checked the name, so it is looked up before `no host` is
    answered, and a VM the picture lacks is found as the same one again."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        request = VMRequest("elsewhere", 1, 256)
        controller.store.reserve(request, "h01", lambda h, v, n: None, 1.0)
        controller.store.set_vm_state("elsewhere", VMState.RUNNING, 2.0)

        def vanished(vms: Any, host_id: str, *rest: Any) -> Any:
            raise UnknownHostError(host_id)

        monkeypatch.setattr(controller.store, "reserve_many", vanished)
        again = controller.create(request)
        assert not again.created
        assert again.record.host_id == "h01"
        with pytest.raises(NoHostError):  # a new name, its hosts gone: no host, as before
            controller.create(VMRequest("new", 1, 256))
    finally:
        controller.store.engine.dispose()
