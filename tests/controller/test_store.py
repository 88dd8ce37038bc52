"""ControllerStore on SQLite and PostgreSQL: hosts, reservations, VM states, events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import event

from pinfold.controller.database import connect
from pinfold.controller.feasibility import Feasibility, fits
from pinfold.controller.models import VM, VMState
from pinfold.controller.store import (
    ControllerStore,
    DuplicateVMError,
    Holding,
    HostRecord,
    RefusedError,
    StoreError,
    UnknownHostError,
    UnknownVMError,
    VMRecord,
)
from pinfold.model.lifecycle import AGENT_STATES, CONTROLLER_STATES
from pinfold.model.vm import VMRequest
from pinfold.placement import HostAllocator, VMSpec
from pinfold.topology import slackvm_json


def always(_host: HostRecord, _existing: Sequence[Holding], _new: VMRequest) -> str | None:
    return None


@pytest.fixture
def registered(store: ControllerStore, i7_topology: dict[str, Any]) -> ControllerStore:
    store.register_host("h1", "http://h1:8000", i7_topology, 6, 0, now=100.0)
    return store


# -- hosts ----------------------------------------------------------------------


def test_register_then_read_back(store: ControllerStore, i7_topology: dict[str, Any]) -> None:
    record = store.register_host("h1", "http://h1:8000", i7_topology, 6, 512, now=100.0)

    assert record == store.host("h1")
    assert store.hosts() == [record]
    assert (record.address, record.critical_size, record.reserved_memory_mib) == ("http://h1:8000", 6, 512)
    assert record.topology == i7_topology
    assert (record.draining, record.registered_at, record.last_heartbeat, record.heartbeat) == (
        False,
        100.0,
        100.0,
        None,
    )


def test_reregister_updates_the_host_and_keeps_draining_and_vms(
    registered: ControllerStore, i7_topology: dict[str, Any]
) -> None:
    registered.set_draining("h1", True)
    registered.reserve(VMRequest("web-1", 1, 256), "h1", always, now=101.0)

    record = registered.register_host("h1", "http://h1:9000", i7_topology, 3, 1024, now=200.0)

    assert (record.address, record.critical_size, record.reserved_memory_mib) == ("http://h1:9000", 3, 1024)
    assert record.draining is True
    assert (record.registered_at, record.last_heartbeat) == (100.0, 200.0)
    assert [vm.name for vm in registered.vms("h1")] == ["web-1"]


def test_heartbeat_stores_the_payload_of_a_known_host(registered: ControllerStore) -> None:
    payload = {"usage": {"cpu": 0.25}, "vnodes": {"1.0": [0, 4]}, "gpus": []}

    assert registered.heartbeat("h1", payload, now=130.0) is True

    record = registered.host("h1")
    assert record is not None
    assert (record.heartbeat, record.last_heartbeat) == (payload, 130.0)


def test_heartbeat_of_an_unknown_host_is_false(registered: ControllerStore) -> None:
    assert registered.heartbeat("h2", {}, now=130.0) is False
    assert [host.id for host in registered.hosts()] == ["h1"]


def test_mark_down_reports_a_silent_host_once_and_its_next_heartbeat_brings_it_up(
    registered: ControllerStore,
) -> None:
    assert registered.mark_down("h1", silent_since=150.0, now=160.0) is True
    assert registered.mark_down("h1", silent_since=150.0, now=170.0) is False  # already down
    assert [host.down for host in registered.liveness()] == [True]
    registered.heartbeat("h1", {}, now=180.0)
    assert registered.liveness()[0].down is False
    assert [(e.kind, e.time) for e in registered.events()] == [("host down", 160.0), ("host up", 180.0)]


def test_mark_down_leaves_a_host_heard_from_since_the_caller_looked(registered: ControllerStore) -> None:
    registered.heartbeat("h1", {}, now=155.0)
    assert registered.mark_down("h1", silent_since=150.0, now=160.0) is False
    assert registered.events() == []


def test_drain_and_undrain(registered: ControllerStore) -> None:
    assert registered.set_draining("h1", True).draining is True
    assert registered.host("h1") == registered.hosts()[0]
    assert registered.hosts()[0].draining is True
    assert registered.set_draining("h1", False).draining is False


def test_drain_of_an_unknown_host_raises(registered: ControllerStore) -> None:
    with pytest.raises(UnknownHostError):
        registered.set_draining("h2", True)


@pytest.mark.parametrize("host_id", ["", "h" * 64], ids=["empty", "64-chars"])
def test_register_refuses_a_bad_host_id(
    store: ControllerStore, i7_topology: dict[str, Any], host_id: str
) -> None:
    with pytest.raises(StoreError, match="1 to 63"):
        store.register_host(host_id, "http://x", i7_topology, 6, 0, now=1.0)
    assert store.hosts() == []


def test_hosts_are_listed_by_id(store: ControllerStore, i7_topology: dict[str, Any]) -> None:
    for host_id in ["h3", "h1", "h2"]:
        store.register_host(host_id, f"http://{host_id}", i7_topology, 6, 0, now=1.0)
    assert [host.id for host in store.hosts()] == ["h1", "h2", "h3"]


# -- reservations ---------------------------------------------------------------


def test_reserve_stores_a_reserved_vm(registered: ControllerStore) -> None:
    vm = registered.reserve(VMRequest("web-1", 2, 2048, 2.0, "alice", "debian"), "h1", fits, now=150.0)

    assert vm == registered.vm("web-1")
    assert (vm.host_id, vm.vcpus, vm.memory_mib, vm.ratio, vm.owner, vm.image) == (
        "h1",
        2,
        2048,
        2.0,
        "alice",
        "debian",
    )
    assert (vm.state, vm.detail, vm.created_at, vm.updated_at) == (VMState.RESERVED, "", 150.0, 150.0)


def test_a_reserved_vm_gives_back_its_request(registered: ControllerStore) -> None:
    """What `Controller._again` hands a stale reservation's agent: the request as reserved."""
    request = VMRequest("web-1", 2, 2048, 2.0, "alice", "/images/debian.qcow2")
    registered.reserve(request, "h1", fits, now=150.0)
    record = registered.vm("web-1")
    assert record is not None
    assert record.request == request


def test_reserve_refuses_when_the_host_is_full_with_the_placement_reason(
    registered: ControllerStore, i7_topology: dict[str, Any]
) -> None:
    allocator = HostAllocator(slackvm_json.from_dict(i7_topology), report_pins=False)
    for i in range(8):
        registered.reserve(VMRequest(f"vm-{i}", 1, 512), "h1", fits, now=float(i))
        allocator.deploy(VMSpec(f"vm-{i}", 1, 512, 1.0))
    expected = allocator.check(VMSpec("one-too-many", 1, 512, 1.0))
    assert expected is not None

    with pytest.raises(RefusedError) as refused:
        registered.reserve(VMRequest("one-too-many", 1, 512), "h1", fits, now=9.0)

    assert refused.value.reason == expected.describe()
    assert refused.value.reason.startswith("not enough cpu")
    assert refused.value.host_id == "h1"
    assert registered.vm("one-too-many") is None
    assert len(registered.vms("h1")) == 8


def test_deleting_a_vm_frees_its_room(registered: ControllerStore) -> None:
    for i in range(8):
        registered.reserve(VMRequest(f"vm-{i}", 1, 512), "h1", fits, now=float(i))
    with pytest.raises(RefusedError):
        registered.reserve(VMRequest("late", 1, 512), "h1", fits, now=9.0)

    deleted = registered.delete_vm("vm-3")

    assert deleted is not None
    assert deleted.name == "vm-3"
    assert registered.reserve(VMRequest("late", 1, 512), "h1", fits, now=10.0).name == "late"
    assert registered.delete_vm("vm-3") is None


def test_reserve_on_a_draining_host_is_refused(registered: ControllerStore) -> None:
    registered.set_draining("h1", True)
    with pytest.raises(RefusedError, match="host unavailable"):
        registered.reserve(VMRequest("web-1", 1, 256), "h1", fits, now=1.0)
    assert registered.vms() == []


def test_reserve_on_an_unknown_host_raises(registered: ControllerStore) -> None:
    with pytest.raises(UnknownHostError):
        registered.reserve(VMRequest("web-1", 1, 256), "h2", fits, now=1.0)
    assert registered.vms() == []


@pytest.mark.parametrize("second_host", ["h1", "h2"], ids=["same-host", "other-host"])
def test_reserving_a_taken_name_raises_duplicate_with_the_existing_vm(
    registered: ControllerStore, i7_topology: dict[str, Any], second_host: str
) -> None:
    registered.register_host("h2", "http://h2:8000", i7_topology, 6, 0, now=1.0)
    first = registered.reserve(VMRequest("web-1", 1, 256), "h1", fits, now=1.0)

    with pytest.raises(DuplicateVMError) as duplicate:
        registered.reserve(VMRequest("web-1", 4, 4096), second_host, fits, now=2.0)

    assert duplicate.value.existing == first
    assert registered.vms() == [first]


def test_fits_sees_the_host_and_its_vms_in_reservation_order(registered: ControllerStore) -> None:
    for name in ["c", "a", "b"]:
        registered.reserve(VMRequest(name, 1, 256), "h1", fits, now=1.0)
    seen: list[tuple[str, list[str], str]] = []

    def recording(host: HostRecord, existing: Sequence[Holding], new: VMRequest) -> str | None:
        seen.append((host.id, [vm.name for vm in existing], new.name))
        return None

    registered.reserve(VMRequest("d", 1, 256), "h1", recording, now=2.0)

    assert seen == [("h1", ["c", "a", "b"], "d")]


def test_seq_increases_and_is_never_reused(registered: ControllerStore) -> None:
    a = registered.reserve(VMRequest("a", 1, 256), "h1", fits, now=1.0)
    b = registered.reserve(VMRequest("b", 1, 256), "h1", fits, now=1.0)
    registered.delete_vm("b")
    c = registered.reserve(VMRequest("c", 1, 256), "h1", fits, now=1.0)
    assert a.seq < b.seq < c.seq


def test_a_batch_draws_increasing_numbers_in_one_statement_on_postgresql(registered: ControllerStore) -> None:
    """A batch's VMs are numbered in order, after the VMs before them, and a
    VM the batch refuses only leaves a gap. On PostgreSQL the batch draws its
    numbers with one statement (a round trip to the server each: issue 16,
    fifteenth round) and the counter table gets no row; SQLite (in process)
    inserts and deletes a counter row a VM, as before."""
    before = registered.reserve(VMRequest("before", 1, 256), "h1", fits, now=1.0)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    batch = [
        VMRequest("a", 1, 256),
        VMRequest("huge", 64, 256),
        VMRequest("b", 1, 256),
        VMRequest("c", 1, 256),
    ]
    event.listen(registered.engine, "before_cursor_execute", record)
    try:
        outcomes = registered.reserve_many(batch, "h1", Feasibility().on_host, now=2.0)
    finally:
        event.remove(registered.engine, "before_cursor_execute", record)
    assert isinstance(outcomes[1], RefusedError)
    a, b, c = (outcome for outcome in outcomes if isinstance(outcome, VMRecord))
    assert before.seq < a.seq < b.seq < c.seq
    counter = [s for s in seen if "vm_sequence" in s and "nextval" not in s]
    if registered.engine.dialect.name == "postgresql":
        assert len([s for s in seen if "nextval" in s]) == 1, seen
        assert counter == []
    else:
        assert len(counter) == 6, seen  # an insert and a delete for each of the three VMs
    with registered.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM vm_sequence").scalar() == 0


def test_a_vm_the_schema_forbids_is_a_store_error(registered: ControllerStore) -> None:
    """A feasibility check that lets anything through still cannot store 0 vCPUs."""
    with pytest.raises(StoreError, match="schema"):
        registered.reserve(VMRequest("zero", 0, 256), "h1", always, now=1.0)
    assert registered.vms() == []


def test_another_store_sees_what_one_committed(registered: ControllerStore, database_url: str) -> None:
    registered.reserve(VMRequest("web-1", 1, 256), "h1", fits, now=1.0)
    registered.add_event("vm.reserved", "web-1", {"host": "h1"}, now=1.0)
    engine = connect(database_url)
    try:
        other = ControllerStore(engine)
        assert other.vms() == registered.vms()
        assert other.hosts() == registered.hosts()
        assert other.events() == registered.events()
    finally:
        engine.dispose()


# -- VM states ------------------------------------------------------------------


@pytest.mark.parametrize("state", CONTROLLER_STATES, ids=str)
def test_every_vm_state_round_trips(registered: ControllerStore, state: VMState) -> None:
    registered.reserve(VMRequest("web-1", 1, 256), "h1", fits, now=1.0)

    record = registered.set_vm_state("web-1", state, now=5.0, detail="why")

    assert (record.state, record.detail, record.created_at, record.updated_at) == (state, "why", 1.0, 5.0)
    assert registered.vm("web-1") == record


def test_unknown_state_is_refused(registered: ControllerStore) -> None:
    registered.reserve(VMRequest("web-1", 1, 256), "h1", fits, now=1.0)
    with pytest.raises(StoreError, match="unknown vm state"):
        registered.set_vm_state("web-1", "exploded", now=2.0)
    vm = registered.vm("web-1")
    assert vm is not None
    assert vm.state is VMState.RESERVED


@pytest.mark.parametrize("state", sorted(set(AGENT_STATES) - set(CONTROLLER_STATES)), ids=str)
def test_an_agent_only_state_is_refused_before_the_database(
    registered: ControllerStore, state: VMState
) -> None:
    """A state of the shared enum the controller does not store is the store's
    refusal, not a CHECK violation from the database."""
    registered.reserve(VMRequest("web-1", 1, 256), "h1", fits, now=1.0)
    with pytest.raises(StoreError, match="unknown vm state"):
        registered.set_vm_state("web-1", state, now=2.0)
    assert registered.vm("web-1").state is VMState.RESERVED  # type: ignore[union-attr]


def test_the_schema_check_lists_the_controller_states() -> None:
    """`CONTROLLER_STATES` and the CHECK on vms.state (and so the migrations) agree."""
    check = next(c for c in VM.__table__.constraints if c.name == "ck_vms_state_known")  # type: ignore[attr-defined]
    listed = str(check.sqltext)
    assert listed == "state IN (" + ", ".join(f"'{state}'" for state in CONTROLLER_STATES) + ")"


def test_state_of_an_unknown_vm_raises(registered: ControllerStore) -> None:
    with pytest.raises(UnknownVMError):
        registered.set_vm_state("nobody", VMState.RUNNING, now=2.0)


def test_vms_filters_by_host(registered: ControllerStore, i7_topology: dict[str, Any]) -> None:
    registered.register_host("h2", "http://h2:8000", i7_topology, 6, 0, now=1.0)
    registered.reserve(VMRequest("a", 1, 256), "h1", fits, now=1.0)
    registered.reserve(VMRequest("b", 1, 256), "h2", fits, now=1.0)
    registered.reserve(VMRequest("c", 1, 256), "h1", fits, now=1.0)

    assert [vm.name for vm in registered.vms("h1")] == ["a", "c"]
    assert [vm.name for vm in registered.vms("h2")] == ["b"]
    assert [vm.name for vm in registered.vms()] == ["a", "b", "c"]


# -- events ---------------------------------------------------------------------


def test_events_page_after_an_id(store: ControllerStore) -> None:
    added = [store.add_event("vm.created", f"vm-{i}", {"i": i}, now=float(i)) for i in range(5)]

    assert store.events() == added
    assert store.events(after_id=added[1].id) == added[2:]
    assert store.events(after_id=added[1].id, limit=2) == added[2:4]
    assert store.events(after_id=added[-1].id) == []
    assert (added[0].kind, added[0].subject, added[0].detail, added[0].time) == (
        "vm.created",
        "vm-0",
        {"i": 0},
        0.0,
    )


def test_hosts_of_one_model_share_one_topology_document(
    store: ControllerStore, i7_topology: dict[str, Any], database_url: str
) -> None:
    other = {**i7_topology, "memset": {"total": 1024, "allowed": 1024}}
    for host_id in ("a", "b", "c"):
        store.register_host(host_id, f"http://{host_id}:1", i7_topology, 6, 0, now=1.0)
    store.register_host("d", "http://d:1", other, 6, 0, now=1.0)
    with store.engine.connect() as connection:
        count = connection.exec_driver_sql("SELECT count(*) FROM topologies").scalar_one()
    assert count == 2
    fresh = ControllerStore(connect(database_url))  # another process: documents read from the database
    records = {host.id: host for host in fresh.hosts()}
    assert records["a"].topology == i7_topology
    assert records["a"].topology_digest == records["c"].topology_digest != records["d"].topology_digest
    assert records["d"].topology["memset"]["total"] == 1024
    fresh.engine.dispose()


def test_a_state_change_or_a_deletion_and_its_event_commit_together(registered: ControllerStore) -> None:
    from pinfold.controller.store import NewEvent

    registered.reserve(VMRequest("web-1", 1, 256), "h1", fits, now=101.0)
    registered.set_vm_state("web-1", "running", 102.0, event=NewEvent("vm created", "web-1", {"host": "h1"}))
    registered.delete_vm("web-1", NewEvent("vm deleted", "web-1", {"host": "h1"}), 103.0)
    assert [(e.kind, e.subject, e.time, dict(e.detail)) for e in registered.events()] == [
        ("vm created", "web-1", 102.0, {"host": "h1"}),
        ("vm deleted", "web-1", 103.0, {"host": "h1"}),
    ]
    with pytest.raises(UnknownVMError):  # nothing recorded for a VM that is not there
        registered.set_vm_state("web-1", "running", 104.0, event=NewEvent("vm created", "web-1", {}))
    assert len(registered.events()) == 2
