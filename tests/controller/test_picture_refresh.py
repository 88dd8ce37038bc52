"""The picture's periodic check against the database (`Controller.refresh_vms`,
every heartbeat period and before "no host"): each host's VM names are
compared, and only the hosts that differ have their VMs read (issue 16: every
VM's record, read every period, was 19 ms of the controller's time with 1,000
VMs and grows with them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from pinfold.controller.models import VM
from pinfold.controller.service import Controller
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from tests.controller.test_bulk_batches import controller_on


def reads_of_vms(controller: Controller, monkeypatch: Any) -> list[str | None]:
    """The hosts whose VM records the store is asked for from now on (None: every VM)."""
    asked: list[str | None] = []
    read = controller.store.vms

    def noted(host_id: str | None = None) -> Any:
        asked.append(host_id)
        return read(host_id)

    monkeypatch.setattr(controller.store, "vms", noted)
    return asked


def test_a_picture_in_step_reads_no_vm_record(tmp_path, i7_topology, monkeypatch):
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        for i in range(5):
            controller.create(VMRequest(f"vm{i}", 1, 256))
        asked = reads_of_vms(controller, monkeypatch)
        controller.refresh_vms()
        assert asked == []
        assert all(controller.scheduler.holds(f"vm{i}") for i in range(5))
    finally:
        controller.store.engine.dispose()


def test_only_the_hosts_changed_behind_the_picture_are_read_again(tmp_path, i7_topology, monkeypatch):
    """Another replica's create on one host and delete on another (written
    to the database behind this controller's picture): those two hosts are
    read, and the picture then holds what the database holds."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        placed = controller.create(VMRequest("here", 1, 256))
        assert placed.record.host_id == "h00"
        controller.create(VMRequest("stays", 1, 256))
        controller.store.reserve(VMRequest("elsewhere", 1, 256), "h03", lambda h, v, n: None, 1.0)
        controller.store.set_vm_state("elsewhere", VMState.RUNNING, 2.0)
        controller.store.delete_vm("here", None, 3.0)
        asked = reads_of_vms(controller, monkeypatch)
        controller.refresh_vms()
        assert sorted(asked) == ["h00", "h03"]  # type: ignore[type-var]
        picture = controller.scheduler
        assert (picture.holds("elsewhere"), picture.holds("here"), picture.holds("stays")) == (
            True,
            False,
            True,
        )
    finally:
        controller.store.engine.dispose()


def test_a_vm_on_a_host_the_picture_lacks_rebuilds_the_picture(tmp_path, i7_topology, monkeypatch):
    """A host registered and given a VM behind the picture (by another
    replica): the picture is rebuilt from every VM, as before, and holds both."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        controller.store.register_host("late", "http://127.0.0.1:9999", i7_topology, 2, 0, 1.0)
        controller.store.reserve(VMRequest("on-late", 1, 256), "late", lambda h, v, n: None, 1.0)
        asked = reads_of_vms(controller, monkeypatch)
        controller.refresh_vms()
        assert asked == [None]
        assert controller.scheduler.holds("on-late")
    finally:
        controller.store.engine.dispose()


def test_a_vm_moved_behind_the_picture_to_a_host_checked_first_rebuilds_it_once(
    tmp_path, i7_topology, monkeypatch
):
    """Another replica moved a VM from h01 to h00: h00 is read first, cannot
    take the VM while the picture still places it on h01, so the whole
    picture is rebuilt, once, and h01 is not read after it."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        controller.store.reserve(VMRequest("moved", 1, 256), "h01", lambda h, v, n: None, 1.0)
        controller.refresh_vms()  # the picture takes it on h01
        with controller.store.engine.begin() as connection:
            connection.execute(update(VM).where(VM.name == "moved").values(host_id="h00"))
        asked = reads_of_vms(controller, monkeypatch)
        controller.refresh_vms()
        assert asked == ["h00", None]
        assert controller.scheduler.stale_hosts(controller.store.names_on_hosts()) == []
    finally:
        controller.store.engine.dispose()


def test_a_create_under_way_does_not_make_its_host_read(tmp_path, i7_topology, monkeypatch):
    """The upkeep's check running in the middle of a bulk create, after the
    picture holds its VMs and before their rows are committed: those VMs are
    no difference, so no host is read again (that read dropped them from the
    picture, and cost 10-20 ms of a create burst)."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        asked = reads_of_vms(controller, monkeypatch)
        reserve = controller.store.reserve_many
        checks = []

        def upkeep_first(*args: Any, **kwargs: Any) -> Any:
            controller.refresh_vms()
            checks.append(list(asked))
            return reserve(*args, **kwargs)

        monkeypatch.setattr(controller.store, "reserve_many", upkeep_first)
        bulk = controller.create_many([VMRequest(f"vm{i}", 1, 256) for i in range(3)])
        assert checks == [[]]
        assert all(not isinstance(outcome, Exception) for outcome in bulk.outcomes)
        assert all(controller.scheduler.holds(f"vm{i}") for i in range(3))
    finally:
        controller.store.engine.dispose()


def test_a_second_create_of_a_name_under_way_gets_the_vm_not_no_host(tmp_path, i7_topology, monkeypatch):
    """The same name sent again while a bulk create holds it in the picture,
    before its row is committed: the second create finds no host in the
    picture (the name is on one already) and brings it in step counting every
    difference, so both requests get the VM ("no host" for the first one's
    hold was the review's finding on the upkeep's change)."""
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        reserve = controller.store.reserve_many
        again: list[Any] = []

        def sent_again_first(*args: Any, **kwargs: Any) -> Any:
            if not again:  # the bulk's reservation, the first one made
                again.append(None)
                again[0] = controller.create(VMRequest("x", 1, 256))
            return reserve(*args, **kwargs)

        monkeypatch.setattr(controller.store, "reserve_many", sent_again_first)
        bulk = controller.create_many([VMRequest("x", 1, 256), VMRequest("y", 1, 256)])
        (second,) = again
        first = bulk.outcomes[0]
        assert first is not None
        assert not isinstance(first, Exception), first
        assert first.record.name == second.record.name == "x"
        assert first.record.host_id == second.record.host_id
        assert [first.created, second.created].count(True) == 1
    finally:
        controller.store.engine.dispose()


def test_a_change_behind_the_picture_counts_beside_a_create_under_way(tmp_path, i7_topology):
    controller = controller_on(f"sqlite:///{tmp_path / 'c.db'}", i7_topology, "first-fit")
    try:
        controller.create(VMRequest("mine", 1, 256))
        names_on = controller.store.names_on_hosts()
        assert controller.scheduler.stale_hosts(names_on, frozenset({"mine"})) == []
        changed = {**names_on, "h00": {"theirs"}}  # another replica's VM, and this one's in flight
        assert controller.scheduler.stale_hosts(changed, frozenset({"mine"})) == ["h00"]
        assert controller.scheduler.stale_hosts(changed, frozenset({"mine", "theirs"})) == []
    finally:
        controller.store.engine.dispose()
