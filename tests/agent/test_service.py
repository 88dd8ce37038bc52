"""The agent core on the sim driver and a real SQLite store: placement made
real, re-pins applied, state stored before acting, and repaired at start."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pinfold.agent.domain import DomainSpec
from pinfold.agent.drivers import DriverError, GuestState, SimDriver
from pinfold.agent.reconcile import Action, Step
from pinfold.agent.registration import heartbeat_document
from pinfold.agent.service import Agent, AgentError, AgentSettings, NotStartedError, VMRequest
from pinfold.agent.store import Pending, Store, StoredVM
from pinfold.model.lifecycle import VMState
from pinfold.placement import VMSpec


@pytest.fixture
def parts(tmp_path: Path, i7):
    driver = SimDriver()
    store = Store(tmp_path / "agent.db")
    return i7, driver, store, tmp_path / "agent.db"


def agent_of(parts) -> Agent:
    topology, driver, store, _ = parts
    return Agent.open(topology, driver, store, AgentSettings(domain_type="qemu"))


def pins(driver: SimDriver) -> dict[str, frozenset[int]]:
    return {g.name: g.spec.cpuset for g in driver.guests() if g.spec is not None}


def test_vms_are_pinned_to_their_vnodes_and_repinned_when_they_change(parts):
    agent = agent_of(parts)
    driver = parts[1]
    agent.create(VMRequest("A", 2, 2048, 1.0))
    agent.create(VMRequest("B", 2, 2048, 2.0))
    assert pins(driver) == {"A": {0, 4}, "B": {1, 2, 3, 5, 6, 7}}
    agent.create(VMRequest("A2", 2, 1024, 1.0))  # premium grows: B's shared set shrinks
    assert pins(driver) == {"A": {0, 2, 4, 6}, "A2": {0, 2, 4, 6}, "B": {1, 3, 5, 7}}
    agent.delete("A2")
    assert pins(driver) == {"A": {0, 4}, "B": {1, 2, 3, 5, 6, 7}}
    assert pins(driver) == {name: agent.allocator.pinning(name) for name in agent.vms}


def test_a_restart_keeps_the_vnode_layout(parts):
    agent = agent_of(parts)
    agent.create(VMRequest("small", 1, 512, 2.0))
    agent.create(VMRequest("big", 4, 512, 2.0))
    agent.create(VMRequest("p", 2, 512, 1.0))
    agent.delete("big")
    before = {r: agent.allocator.vnode(r) for r in agent.allocator.levels}
    parts[2].close()
    again = Agent.open(parts[0], parts[1], Store(parts[3]), AgentSettings(domain_type="qemu"))
    assert {r: again.allocator.vnode(r) for r in again.allocator.levels} == before
    assert again.report == [Step(Action.KEEP, "small"), Step(Action.KEEP, "p")]


def test_refused_requests_change_nothing(parts):
    agent = agent_of(parts)
    agent.create(VMRequest("A", 6, 1024, 1.0))
    for request, code in [
        (VMRequest("big", 4, 1024, 1.0), "not enough cpu"),
        (VMRequest("A", 1, 1024, 1.0), "duplicate name"),
        (VMRequest("x<y>", 1, 1024, 1.0), "invalid request"),
        (VMRequest("neg", -1, 1024, 1.0), "invalid request"),
    ]:
        with pytest.raises(AgentError) as error:
            agent.create(request)
        assert error.value.code == code
    assert set(agent.vms) == {"A"}
    assert {g.name for g in parts[1].guests()} == {"A"}
    _, stored = parts[2].load()
    assert set(stored) == {"A"}


def test_a_hypervisor_failure_on_create_rolls_everything_back(parts):
    agent = agent_of(parts)
    parts[1].create(DomainSpec("clash", 1, 128, frozenset({0}), 1.0))  # a domain the store does not know
    with pytest.raises(AgentError, match="hypervisor failed"):
        agent.create(VMRequest("clash", 1, 128, 1.0))
    assert "clash" not in agent.vms
    assert agent.allocator.free_cpu_count == 8
    _, stored = parts[2].load()
    assert stored == {}


def test_lifecycle_actions_are_stored(parts):
    agent = agent_of(parts)
    agent.create(VMRequest("v", 1, 128, 2.0))
    assert agent.suspend("v").state == "paused"
    assert agent.resume("v").state == "running"
    assert agent.shutdown("v").state == "shutoff"
    with pytest.raises(AgentError, match="invalid"):
        agent.resume("v")
    assert agent.start("v").state == "running"
    _, stored = parts[2].load()
    assert stored["v"].state == "running"
    with pytest.raises(AgentError, match="unknown vm"):
        agent.delete("ghost")


def test_start_repairs_every_crash_point(parts, i7):
    """Leave the store and the hypervisor as a crash between two steps would,
    then start an agent over them."""
    topology, driver, store, path = parts
    first = agent_of(parts)
    first.create(VMRequest("steady", 1, 128, 2.0))
    first.create(VMRequest("gone", 1, 128, 2.0))
    first.create(VMRequest("half-deleted", 1, 128, 2.0))
    first.create(VMRequest("deleted", 1, 128, 2.0))
    # crash after storing a create, before the domain existed
    first.allocator.deploy(VMSpec("half-created", 1, 128, 2.0))
    store.save_vm(StoredVM(VMSpec("half-created", 1, 128, 2.0), "", "", VMState.CREATING, Pending.CREATE),
                  first.allocator.snapshot())  # fmt: skip
    # crash after marking deletes: one before the domain went, one after
    store.set_state("half-deleted", "running", Pending.DELETE)
    store.set_state("deleted", "running", Pending.DELETE)
    driver.delete("deleted")
    driver.delete("gone")  # removed behind pinfold's back
    driver.create(DomainSpec("stranger", 1, 128, frozenset({0}), 3.0))  # pinfold metadata, unknown here
    store.close()

    agent = Agent.open(topology, driver, Store(path), AgentSettings(domain_type="qemu"))
    assert {(step.action, step.name) for step in agent.report} == {
        (Action.KEEP, "steady"), (Action.MISSING, "gone"), (Action.DELETE, "half-deleted"),
        (Action.FORGET, "deleted"), (Action.CREATE, "half-created"), (Action.UNKNOWN, "stranger"),
    }  # fmt: skip
    assert set(agent.vms) == {"steady", "gone", "half-created"}
    assert agent.vms["gone"].state == "missing"
    assert {g.name for g in driver.guests()} == {"steady", "half-created", "stranger"}
    assert driver.info("stranger").spec.cpuset == frozenset({0})  # never touched
    agent.allocator.check_invariants()
    for name in ("steady", "half-created"):
        assert driver.info(name).spec.cpuset == agent.allocator.pinning(name)


def test_start_starts_a_created_domain_a_crash_left_defined_but_never_started(parts, i7):
    """kill -9 between libvirt's define and its start (crash point create:defined):
    the create was stored, so the restart carries it through to a running VM."""
    topology, driver, store, path = parts
    first = agent_of(parts)
    first.allocator.deploy(VMSpec("defined", 1, 128, 2.0))
    store.save_vm(StoredVM(VMSpec("defined", 1, 128, 2.0), "", "", VMState.CREATING, Pending.CREATE),
                  first.allocator.snapshot())  # fmt: skip
    driver.create(DomainSpec("defined", 1, 128, first.allocator.pinning("defined"), 2.0))
    driver.shutdown("defined", 1.0)  # as defined and not started
    store.close()
    agent = Agent.open(topology, driver, Store(path), AgentSettings(domain_type="qemu"))
    assert [(step.action, step.name) for step in agent.report] == [(Action.FINISH_CREATE, "defined")]
    assert (agent.vms["defined"].state, agent.vms["defined"].pending) == ("running", None)
    assert driver.info("defined").state is GuestState.RUNNING


def test_the_store_refuses_a_cpu_in_two_vnodes(tmp_path):
    import sqlite3

    from pinfold.placement import HostSnapshot

    store = Store(tmp_path / "s.db")
    vm = StoredVM(VMSpec("a", 1, 128, 1.0), "", "", VMState.RUNNING, None)
    with pytest.raises(sqlite3.IntegrityError):
        store.save_vm(vm, HostSnapshot({1.0: (0,), 2.0: (0,)}, (vm.spec,)))
    assert store.load()[1] == {}  # the whole transaction rolled back


def test_driver_errors_keep_their_codes():
    with pytest.raises(DriverError) as error:
        SimDriver().info("x")
    assert error.value.code == "not found"
    assert GuestState.RUNNING.value == "running"


def test_a_step_that_fails_at_start_is_recorded_and_the_agent_starts_all_the_same(parts, monkeypatch, caplog):
    topology, driver, store, path = parts
    first = agent_of(parts)
    first.create(VMRequest("steady", 1, 128, 2.0))
    first.create(VMRequest("doomed", 1, 128, 2.0))
    for name in ("broken", "fine"):  # crash after storing two creates, before either domain existed
        first.allocator.deploy(VMSpec(name, 1, 128, 2.0))
        store.save_vm(StoredVM(VMSpec(name, 1, 128, 2.0), "", "", VMState.CREATING, Pending.CREATE),
                      first.allocator.snapshot())  # fmt: skip
    store.set_state("doomed", "running", Pending.DELETE)  # and after marking a delete
    store.close()
    create, delete = driver.create, driver.delete

    def failing_create(spec: DomainSpec) -> None:
        if spec.name == "broken":
            raise DriverError("failed", "start broken: qemu exited")
        create(spec)

    def failing_delete(name: str) -> None:
        if name == "doomed":
            raise DriverError("failed", "delete doomed: libvirtd hiccup")
        delete(name)

    monkeypatch.setattr(driver, "create", failing_create)
    monkeypatch.setattr(driver, "delete", failing_delete)
    agent = Agent.open(topology, driver, Store(path), AgentSettings(domain_type="qemu"))
    failed = {step.name: step.error for step in agent.report if step.error}
    assert set(failed) == {"broken", "doomed"}
    assert "qemu exited" in failed["broken"]
    assert "cannot create broken" in caplog.text
    assert (agent.vms["broken"].state, agent.vms["broken"].pending) == ("error", Pending.CREATE)
    assert (agent.vms["doomed"].state, agent.vms["doomed"].pending) == ("error", Pending.DELETE)
    assert (agent.vms["fine"].state, agent.vms["fine"].pending) == ("running", None)
    assert agent.create(VMRequest("new", 1, 128, 2.0)).state == "running"  # the agent works
    monkeypatch.undo()
    agent.close()
    again = Agent.open(topology, driver, Store(path), AgentSettings(domain_type="qemu"))  # retried
    assert not [step for step in again.report if step.error]
    assert {name: vm.state for name, vm in again.vms.items()} == dict.fromkeys(
        ("steady", "broken", "fine", "new"), "running"
    )
    assert {g.name for g in driver.guests()} == {"steady", "broken", "fine", "new"}
    again.allocator.check_invariants()


def failing_repin(driver: SimDriver, monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    repin = driver.repin

    def fail(name: str, cpuset: frozenset[int]) -> None:
        if name == victim:
            raise DriverError("failed", f"re-pin {name}: Unable to write to cgroup")
        repin(name, cpuset)

    monkeypatch.setattr(driver, "repin", fail)


def test_a_create_whose_neighbours_cannot_be_repinned_is_undone(parts, monkeypatch):
    """A2 grows the premium vNode: B must leave its CPUs. When B cannot, A2 is
    refused (no 500, nothing left pending) rather than share CPUs with B."""
    agent = agent_of(parts)
    driver = parts[1]
    agent.create(VMRequest("A", 2, 2048, 1.0))
    agent.create(VMRequest("B", 2, 2048, 2.0))
    before = (pins(driver), agent.allocator.snapshot())
    failing_repin(driver, monkeypatch, "B")
    with pytest.raises(AgentError) as error:
        agent.create(VMRequest("A2", 2, 1024, 1.0))
    assert (error.value.code, "Unable to write to cgroup" in error.value.detail) == (
        "hypervisor failed",
        True,
    )
    assert set(agent.vms) == {"A", "B"}
    assert (pins(driver), agent.allocator.snapshot()) == before  # A went back to its CPUs
    _, stored = parts[2].load()
    assert {name: (vm.state, vm.pending) for name, vm in stored.items()} == {
        "A": ("running", None), "B": ("running", None),
    }  # fmt: skip
    # B could not be moved back either: where its vCPUs run is not known, so it stays stale
    assert set(agent.stale_pins()) == {"B"}
    monkeypatch.undo()
    agent.suspend("A")  # any change tries again first
    assert agent.stale_pins() == {}


def test_a_delete_stands_when_a_neighbour_cannot_be_repinned(parts, monkeypatch, caplog):
    agent = agent_of(parts)
    driver = parts[1]
    for name, ratio in (("A", 1.0), ("B", 2.0), ("A2", 1.0)):
        agent.create(VMRequest(name, 2, 1024, ratio))
    failing_repin(driver, monkeypatch, "B")
    agent.delete("A2")  # done: B keeps its old (smaller) set until it can be re-pinned
    assert set(agent.vms) == {"A", "B"}
    assert "cannot re-pin B" in caplog.text
    assert set(parts[2].load()[1]) == {"A", "B"}
    monkeypatch.undo()
    agent.close()
    again = Agent.open(parts[0], driver, Store(parts[3]), AgentSettings(domain_type="qemu"))
    assert pins(driver) == {name: again.allocator.pinning(name) for name in again.vms}


def overlapping(driver: SimDriver, agent: Agent) -> set[int]:
    """CPUs that a VM runs on (as the hypervisor has it) and another level's vNode holds."""
    shared: set[int] = set()
    for vm in agent.vms.values():
        level = vm.spec.ratio
        held = pins(driver).get(vm.domain, frozenset())
        for ratio in agent.allocator.levels:
            if ratio != level:
                shared |= held & set(agent.allocator.vnode(ratio))
    return shared


def test_a_vm_that_cannot_leave_released_cpus_is_retried_and_no_cpus_are_handed_out_meanwhile(
    parts, monkeypatch, caplog
):
    """A2's delete shrinks the premium vNode: A must leave the CPUs it gives
    up. While A cannot, a create that could be given those CPUs is refused;
    every change (and every PoolKeeper tick) tries A again."""
    agent = agent_of(parts)
    driver = parts[1]
    agent.create(VMRequest("A", 2, 1024, 1.0))
    agent.create(VMRequest("A2", 2, 1024, 1.0))
    failing_repin(driver, monkeypatch, "A")
    agent.delete("A2")
    vnode = agent.allocator.pinning("A")
    assert pins(driver)["A"] - vnode  # A still runs on released CPUs
    assert agent.stale_pins() == {
        "A": {"cpus": sorted(vnode), "error": "failed: re-pin A: Unable to write to cgroup"}
    }
    for _ in range(3):  # tried again each time: logged once
        with pytest.raises(AgentError) as error:
            agent.create(VMRequest("B", 4, 1024, 2.0))
        assert error.value.code == "stale pins"
        assert "A to CPUs 0,4 (failed: re-pin A: Unable to write to cgroup)" in error.value.detail
    assert caplog.text.count("cannot re-pin A") == 1
    assert ("B" in agent.vms, "B" in pins(driver), overlapping(driver, agent)) == (False, False, set())
    monkeypatch.undo()
    agent.tend_pools(0.0)  # a PoolKeeper tick, no pool configured
    assert agent.stale_pins() == {}
    assert pins(driver)["A"] == vnode
    agent.create(VMRequest("B", 4, 1024, 2.0))
    assert overlapping(driver, agent) == set()


def test_a_resize_stands_when_a_neighbour_cannot_follow_and_its_pin_is_kept_stale(parts, monkeypatch):
    agent = agent_of(parts)
    driver = parts[1]
    agent.create(VMRequest("A", 2, 1024, 1.0))
    agent.create(VMRequest("A2", 2, 1024, 1.0))
    failing_repin(driver, monkeypatch, "A")
    agent.resize("A2", 1, 1024)  # the premium vNode shrinks by one CPU
    assert agent.vms["A2"].spec.vcpus == 1
    assert set(agent.stale_pins()) == {"A"}
    with pytest.raises(AgentError, match="stale pins"):
        agent.create(VMRequest("B", 1, 128, 2.0))
    with pytest.raises(AgentError, match="stale pins"):
        agent.resize("A2", 2, 1024)
    monkeypatch.undo()
    agent.create(VMRequest("B", 1, 128, 2.0))
    assert pins(driver) == {name: agent.allocator.pinning(name) for name in agent.vms}


def test_a_refused_resize_leaves_the_layout_exactly_as_it_was(parts):
    """Placed again after the removal, v0 would get CPU 5 where it had CPU 2,
    with neither the store nor the domains told."""
    agent = agent_of(parts)
    agent.create(VMRequest("v0", 4, 128, 2.0))
    agent.create(VMRequest("v1", 3, 128, 2.0))
    before = agent.allocator.snapshot()
    with pytest.raises(AgentError, match="not enough cpu"):
        agent.resize("v0", 64, 128)
    assert agent.allocator.snapshot() == before == parts[2].load()[0]
    assert pins(parts[1]) == {name: agent.allocator.pinning(name) for name in agent.vms}
    agent.allocator.check_invariants()


def test_a_vm_that_cannot_be_repinned_at_start_is_in_the_report_and_stays_stale(parts, monkeypatch):
    topology, driver, store, path = parts
    agent = agent_of(parts)
    agent.create(VMRequest("A", 2, 1024, 1.0))
    agent.create(VMRequest("B", 2, 1024, 2.0))
    driver.repin("A", frozenset(range(8)))  # as a crash mid re-pin could leave it
    store.close()
    failing_repin(driver, monkeypatch, "A")
    again = Agent.open(topology, driver, Store(path), AgentSettings(domain_type="qemu"))
    assert again.report == [
        Step(Action.KEEP, "A"), Step(Action.KEEP, "B"),
        Step(Action.REPIN, "A", "failed: re-pin A: Unable to write to cgroup"),
    ]  # fmt: skip
    assert set(again.stale_pins()) == {"A"}
    with pytest.raises(AgentError, match="stale pins"):
        again.create(VMRequest("C", 1, 128, 2.0))
    monkeypatch.undo()
    again.create(VMRequest("C", 1, 128, 2.0))
    assert pins(driver) == {name: again.allocator.pinning(name) for name in again.vms}


def test_a_neighbour_whose_domain_has_gone_is_marked_missing_and_the_create_stands(parts):
    agent = agent_of(parts)
    driver = parts[1]
    agent.create(VMRequest("A", 2, 2048, 1.0))
    agent.create(VMRequest("B", 2, 2048, 2.0))
    driver.delete("B")  # behind pinfold's back
    assert agent.create(VMRequest("A2", 2, 1024, 1.0)).state == "running"
    assert agent.vms["B"].state == "missing"
    assert parts[2].load()[1]["B"].state == "missing"


class SlowShutdown(SimDriver):
    """A guest that takes its time to power off: `shutdown` waits for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        self.release = threading.Event()

    def shutdown(self, name: str, timeout_s: float) -> None:
        self.waiting.set()
        assert self.release.wait(10)
        super().shutdown(name, timeout_s)


@contextmanager
def shutting_down(agent: Agent, name: str) -> Iterator[dict[str, object]]:
    """`agent.shutdown(name)` in a thread, caught waiting for the guest; the
    result (or AgentError) is in the yielded dict once the block is left."""
    driver = agent.driver
    assert isinstance(driver, SlowShutdown)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["vm"] = agent.shutdown(name)
        except AgentError as error:
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    assert driver.waiting.wait(10)
    try:
        yield outcome
    finally:
        driver.release.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_graceful_shutdown_waits_without_holding_the_agent(parts):
    topology, _, store, _ = parts
    driver = SlowShutdown()
    agent = Agent.open(topology, driver, store, AgentSettings(domain_type="qemu"))
    agent.create(VMRequest("slow", 1, 128, 2.0))
    agent.create(VMRequest("other", 1, 128, 2.0))
    with shutting_down(agent, "slow") as outcome:
        assert agent.lock.acquire(timeout=2), "the agent's lock is held during the wait"
        agent.lock.release()
        assert heartbeat_document(agent, None)["vms"] == {"slow": "stopping", "other": "running"}
        assert agent.suspend("other").state == "paused"  # other VMs go on
        agent.create(VMRequest("new", 1, 128, 2.0))
        stored = store.load()[1]["slow"]
        assert (stored.state, stored.pending) == ("stopping", Pending.SHUTDOWN)  # crash-safe
        for action in (agent.start, agent.suspend, agent.shutdown):
            with pytest.raises(AgentError, match="its shutdown is not finished"):
                action("slow")
    vm = outcome["vm"]
    assert isinstance(vm, StoredVM)
    assert (vm.state, vm.pending) == ("shutoff", None)
    assert (store.load()[1]["slow"].state, driver.info("slow").state) == ("shutoff", GuestState.SHUTOFF)


def test_a_delete_during_a_graceful_shutdown_wins(parts):
    topology, _, store, _ = parts
    driver = SlowShutdown()
    agent = Agent.open(topology, driver, store, AgentSettings(domain_type="qemu"))
    agent.create(VMRequest("slow", 1, 128, 2.0))
    with shutting_down(agent, "slow") as outcome:
        agent.delete("slow")
    assert isinstance(outcome["error"], AgentError)
    assert outcome["error"].code == "unknown vm"
    assert (agent.vms, store.load()[1], driver.guests()) == ({}, {}, [])


class GatedShutdown(SimDriver):
    """Each `shutdown` waits at its own gate (`gates[i]`, in call order); one
    whose domain was deleted meanwhile (even if another took its name) finds
    it gone, as libvirt would."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[threading.Event] = []
        self.arrived = threading.Semaphore(0)

    def shutdown(self, name: str, timeout_s: float) -> None:
        spec = self.info(name).spec
        gate = threading.Event()
        self.gates.append(gate)
        self.arrived.release()
        assert gate.wait(10)
        current = self.guests()
        if not any(guest.name == name and guest.spec is spec for guest in current):
            raise DriverError("not found", f"no domain with matching name '{name}'")
        super().shutdown(name, timeout_s)


def test_the_end_of_a_shutdown_is_not_recorded_on_a_new_vm_of_the_same_name(parts):
    """Delete a VM while it shuts down, create one of the same name and shut
    it down too: the first shutdown ends without touching the second VM."""
    topology, _, store, _ = parts
    driver = GatedShutdown()
    agent = Agent.open(topology, driver, store, AgentSettings(domain_type="qemu"))
    agent.create(VMRequest("v", 1, 128, 2.0))
    outcomes: list[dict[str, object]] = [{}, {}]

    def shut_down(outcome: dict[str, object]) -> None:
        try:
            outcome["vm"] = agent.shutdown("v")
        except AgentError as error:
            outcome["error"] = error

    first = threading.Thread(target=shut_down, args=(outcomes[0],))
    first.start()
    assert driver.arrived.acquire(timeout=10)
    agent.delete("v")
    agent.create(VMRequest("v", 1, 128, 2.0))
    second = threading.Thread(target=shut_down, args=(outcomes[1],))
    second.start()
    assert driver.arrived.acquire(timeout=10)
    driver.gates[0].set()  # the first shutdown ends while the second waits
    first.join(10)
    error = outcomes[0]["error"]
    assert isinstance(error, AgentError)
    assert error.code == "unknown vm"
    assert (agent.vms["v"].state, agent.vms["v"].pending) == ("stopping", Pending.SHUTDOWN)
    driver.gates[1].set()
    second.join(10)
    vm = outcomes[1]["vm"]
    assert isinstance(vm, StoredVM)
    assert (vm.state, vm.pending) == ("shutoff", None)
    assert (store.load()[1]["v"].state, driver.info("v").state) == ("shutoff", GuestState.SHUTOFF)


def test_a_failed_shutdown_records_the_state_the_guest_is_in(parts):
    agent = agent_of(parts)
    driver = parts[1]
    agent.create(VMRequest("v", 1, 128, 2.0))
    driver.shutdown("v", 0)  # the guest powered itself off: the store still says running
    with pytest.raises(AgentError, match="invalid"):
        agent.shutdown("v")
    assert (agent.vms["v"].state, agent.vms["v"].pending) == ("shutoff", None)


@pytest.mark.parametrize(("guest_off", "state"), [(True, "shutoff"), (False, "running")], ids=["off", "on"])
def test_a_shutdown_cut_short_by_a_crash_records_the_domain_state_at_start(parts, guest_off, state):
    agent = agent_of(parts)
    topology, driver, store, path = parts
    agent.create(VMRequest("v", 1, 128, 2.0))
    store.set_state("v", "stopping", Pending.SHUTDOWN)  # as the mark before the wait leaves it
    if guest_off:
        driver.shutdown("v", 0)
    store.close()
    again = Agent.open(topology, driver, Store(path), AgentSettings(domain_type="qemu"))
    assert again.report == [Step(Action.FINISH_SHUTDOWN, "v")]
    assert (again.vms["v"].state, again.vms["v"].pending) == (state, None)


class UnlistableDriver(SimDriver):
    """A hypervisor that cannot list its domains: a start-up that asks it fails."""

    def guests(self):
        raise DriverError("failed", "cannot list domains")


def test_building_an_agent_does_no_io_and_a_request_before_start_up_is_a_clear_error(parts):
    topology, _, store, path = parts
    leftover = path.parent / "disks" / ".partial-x.qcow2"
    leftover.parent.mkdir()
    leftover.write_bytes(b"")
    agent = Agent(topology, UnlistableDriver(), store, AgentSettings(domain_type="qemu"))  # asks nothing
    assert leftover.exists()
    with pytest.raises(NotStartedError, match="start_up"):
        agent.user_vms()
    with pytest.raises(NotStartedError, match="start_up"):
        agent.create(VMRequest("A", 1, 512, 1.0))
    with pytest.raises(DriverError, match="cannot list"):
        agent.start_up()
    with pytest.raises(NotStartedError):  # a start-up that failed leaves the agent not started
        agent.user_vms()
    started = Agent.open(topology, SimDriver(), store, AgentSettings(domain_type="qemu"))
    assert started.user_vms() == []
    assert started.report == []
    assert not leftover.exists()
    with pytest.raises(RuntimeError, match="already started"):
        started.start_up()


def test_a_start_up_that_cannot_restore_the_allocator_can_be_tried_again(parts, monkeypatch):
    topology, driver, store, _ = parts
    agent = Agent(topology, driver, store, AgentSettings(domain_type="qemu"))

    def broken(*args: object) -> None:
        raise ValueError("a stored layout that does not fit this topology")

    monkeypatch.setattr("pinfold.agent.startup.HostAllocator.restore", broken)
    with pytest.raises(ValueError, match="does not fit"):
        agent.start_up()
    monkeypatch.undo()
    with pytest.raises(NotStartedError):
        agent.user_vms()
    assert agent.start_up() == []
