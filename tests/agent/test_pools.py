"""Warm pools on the sim driver and a real SQLite store: members are made,
suspended after their warm-up, handed out under the asked name by a resume,
refilled, kept across restarts and repaired after a crash mid hand-out."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from pinfold.agent.domain import DomainSpec
from pinfold.agent.drivers import DriverError, GuestState, SimDriver
from pinfold.agent.pools import PoolKeeper, PoolSpec
from pinfold.agent.reconcile import Action
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Pending, Store
from pinfold.model.lifecycle import VMState

SMALL = PoolSpec(name="small", size=2, vcpus=1, memory_mib=128, ratio=2.0, warmup_s=5)


@pytest.fixture
def driver() -> SimDriver:
    return SimDriver()


def agent_with(tmp_path, i7, driver, *pools: PoolSpec) -> Agent:
    settings = AgentSettings(domain_type="qemu", pools=pools)
    return Agent.open(i7, driver, Store(tmp_path / "agent.db"), settings)


def states(driver: SimDriver) -> dict[str, GuestState]:
    return {guest.name: guest.state for guest in driver.guests()}


def filled(agent: Agent) -> Agent:
    while agent.tend_pools(0.0):
        pass
    agent.tend_pools(SMALL.warmup_s)
    return agent


def test_members_warm_up_then_wait_suspended(tmp_path, i7, driver):
    agent = agent_with(tmp_path, i7, driver, SMALL)
    assert agent.tend_pools(0.0) is True  # one member per step: requests never wait long
    assert agent.tend_pools(0.0) is False
    assert states(driver) == {"pool-small-0": GuestState.RUNNING, "pool-small-1": GuestState.RUNNING}
    assert agent.pool_status() == {"small": {"size": 2, "ready": 0, "warming": 2, "last_error": None}}
    agent.tend_pools(SMALL.warmup_s - 0.1)
    assert agent.pool_status()["small"]["ready"] == 0
    agent.tend_pools(SMALL.warmup_s)
    assert set(states(driver).values()) == {GuestState.PAUSED}
    assert agent.pool_status() == {"small": {"size": 2, "ready": 2, "warming": 0, "last_error": None}}
    assert agent.user_vms() == []  # members are the agent's, not a user's
    agent.allocator.check_invariants()


def test_a_matching_create_resumes_a_member_under_the_asked_name(tmp_path, i7, driver):
    agent = filled(agent_with(tmp_path, i7, driver, SMALL))
    pins_before = agent.allocator.pinning("pool-small-0")
    vm = agent.create(VMRequest("web", 1, 128, 2.0, owner="alice"))
    assert (vm.spec.name, vm.domain, vm.owner, vm.state, vm.pool) == (
        "web",
        "pool-small-0",
        "alice",
        "running",
        "",
    )
    assert states(driver)["pool-small-0"] is GuestState.RUNNING
    assert driver.info("pool-small-0").spec.owner == "alice"  # the domain's metadata too
    assert agent.allocator.pinning("web") == pins_before
    assert "pool-small-0" not in agent.allocator
    assert [v.spec.name for v in agent.user_vms()] == ["web"]
    assert agent.pool_status()["small"] == {"size": 2, "ready": 1, "warming": 0, "last_error": None}
    agent.tend_pools(10.0)  # refill: a new member, under a name no domain has
    assert "pool-small-2" in states(driver)
    agent.allocator.check_invariants()
    agent.suspend("web")  # actions reach the domain
    assert states(driver)["pool-small-0"] is GuestState.PAUSED
    agent.delete("web")
    assert "pool-small-0" not in states(driver)


def test_other_creates_are_cold_and_members_cannot_be_touched(tmp_path, i7, driver):
    agent = filled(agent_with(tmp_path, i7, driver, SMALL))
    agent.create(VMRequest("bigger", 2, 128, 2.0))
    agent.create(VMRequest("premium", 1, 128, 1.0))
    assert {"bigger", "premium"} <= set(states(driver))
    assert agent.pool_status()["small"]["ready"] == 2
    for action in (agent.delete, agent.suspend, agent.shutdown):
        with pytest.raises(AgentError, match="unknown vm"):
            action("pool-small-1")
    agent.create(VMRequest("web", 1, 128, 2.0))
    with pytest.raises(AgentError, match="duplicate name"):
        agent.create(VMRequest("pool-small-0", 1, 128, 2.0))  # web's domain


def test_hand_outs_and_members_survive_a_restart(tmp_path, i7, driver):
    agent = filled(agent_with(tmp_path, i7, driver, SMALL))
    agent.create(VMRequest("web", 1, 128, 2.0))
    layout = {r: agent.allocator.vnode(r) for r in agent.allocator.levels}
    agent.close()
    again = agent_with(tmp_path, i7, driver, SMALL)
    assert [(s.action, s.name) for s in again.report] == [(Action.KEEP, "web"), (Action.KEEP, "pool-small-1")]
    assert again.vms["web"].domain == "pool-small-0"
    assert {r: again.allocator.vnode(r) for r in again.allocator.levels} == layout
    assert again.pool_status()["small"]["ready"] == 1


class Crash(BaseException):
    """Stands for kill -9 between storing the hand-out and resuming."""


def test_a_hand_out_cut_short_is_resumed_at_the_next_start(tmp_path, i7, driver, monkeypatch):
    agent = filled(agent_with(tmp_path, i7, driver, SMALL))

    def crash(name: str) -> None:
        raise Crash

    monkeypatch.setattr(driver, "resume", crash)
    with pytest.raises(Crash):
        agent.create(VMRequest("web", 1, 128, 2.0))
    monkeypatch.undo()
    assert states(driver)["pool-small-0"] is GuestState.PAUSED
    agent.close()
    again = agent_with(tmp_path, i7, driver, SMALL)
    assert (again.vms["web"].state, again.vms["web"].pending) == ("running", None)
    assert states(driver)["pool-small-0"] is GuestState.RUNNING


def test_a_member_whose_create_was_cut_short_warms_up_again_at_the_next_start(
    tmp_path, i7, driver, monkeypatch
):
    """Recreated at start, a member is warming (then suspended and handed
    out), not running: a running member is never handed out or refilled."""
    agent = agent_with(tmp_path, i7, driver, SMALL)

    def crash(spec: object) -> None:
        raise Crash

    monkeypatch.setattr(driver, "create", crash)
    with pytest.raises(Crash):
        agent.tend_pools(0.0)  # stored (pending), never made
    monkeypatch.undo()
    assert states(driver) == {}
    agent.close()
    again = agent_with(tmp_path, i7, driver, SMALL)
    assert [(s.action, s.name) for s in again.report] == [(Action.CREATE, "pool-small-0")]
    assert again.vms["pool-small-0"].state == "warming"
    filled(again)
    assert again.pool_status()["small"] == {"size": 2, "ready": 2, "warming": 0, "last_error": None}
    assert again.create(VMRequest("web", 1, 128, 2.0)).domain == "pool-small-0"


def test_a_member_a_start_could_not_make_is_replaced(tmp_path, i7, driver, monkeypatch):
    """A member whose create a crash cut short, and that the next start could
    not make either, is left in state error: the keeper replaces it, rather
    than let it count towards the pool's size until another start."""
    agent = agent_with(tmp_path, i7, driver, SMALL)

    def crash(spec: object) -> None:
        raise Crash

    monkeypatch.setattr(driver, "create", crash)
    with pytest.raises(Crash):
        agent.tend_pools(0.0)
    agent.close()

    def refuse(spec: DomainSpec) -> None:
        raise DriverError("failed", "start pool-small-0: qemu exited")

    monkeypatch.setattr(driver, "create", refuse)
    again = agent_with(tmp_path, i7, driver, SMALL)
    assert (again.vms["pool-small-0"].state, again.vms["pool-small-0"].pending) == ("error", Pending.CREATE)
    monkeypatch.undo()
    filled(again)
    assert again.pool_status()["small"] == {"size": 2, "ready": 2, "warming": 0, "last_error": None}
    assert {(vm.state, vm.pending) for vm in again.vms.values()} == {("pooled", None)}
    assert set(states(driver).values()) == {GuestState.PAUSED}
    again.allocator.check_invariants()


def test_a_broken_member_that_cannot_be_deleted_is_the_pools_last_error(tmp_path, i7, driver, monkeypatch):
    agent = filled(agent_with(tmp_path, i7, driver, SMALL))
    agent.store.set_state("pool-small-0", VMState.POOLED, Pending.DELETE)  # a delete a crash cut short
    agent.close()
    delete = driver.delete

    def refuse(name: str) -> None:
        raise DriverError("failed", f"delete {name}: libvirtd hiccup")

    monkeypatch.setattr(driver, "delete", refuse)
    again = agent_with(tmp_path, i7, driver, SMALL)
    assert again.vms["pool-small-0"].state == "error"
    with pytest.raises(AgentError, match="libvirtd hiccup"):
        again.tend_pools(0.0)
    assert again.pool_status()["small"]["last_error"] == (
        "hypervisor failed: cannot replace the broken member pool-small-0 (error, delete pending): "
        "failed: delete pool-small-0: libvirtd hiccup"
    )
    monkeypatch.setattr(driver, "delete", delete)
    filled(again)
    assert again.pool_status()["small"] == {"size": 2, "ready": 2, "warming": 0, "last_error": None}
    assert {(vm.state, vm.pending) for vm in again.vms.values()} == {("pooled", None)}


def test_a_member_that_cannot_be_deleted_does_not_stop_the_other_pools(tmp_path, i7, driver, monkeypatch):
    other = PoolSpec(name="other", size=1, vcpus=1, memory_mib=128, ratio=1.0, warmup_s=5)
    agent = agent_with(tmp_path, i7, driver, SMALL, other)
    while agent.tend_pools(0.0):
        pass
    agent.store.set_state("pool-small-0", VMState.POOLED, Pending.DELETE)  # a delete a crash cut short
    agent.close()

    def refuse(name: str) -> None:
        raise DriverError("failed", f"delete {name}: libvirtd hiccup")

    monkeypatch.setattr(driver, "delete", refuse)
    again = agent_with(tmp_path, i7, driver, SMALL, other)
    for now in (0.0, other.warmup_s):  # the other pool's member starts warming, then is done
        with pytest.raises(AgentError, match="libvirtd hiccup"):
            again.tend_pools(now)
    assert again.pool_status()["other"] == {"size": 1, "ready": 1, "warming": 0, "last_error": None}
    assert states(driver)["pool-other-0"] is GuestState.PAUSED
    assert str(again.pool_status()["small"]["last_error"]).startswith("hypervisor failed: cannot replace")


def test_members_no_pool_wants_are_deleted(tmp_path, i7, driver):
    agent = filled(agent_with(tmp_path, i7, driver, SMALL))
    agent.close()
    smaller = agent_with(tmp_path, i7, driver, SMALL.model_copy(update={"size": 1}))
    smaller.tend_pools(0.0)
    assert set(states(driver)) == {"pool-small-0"}
    smaller.close()
    none = agent_with(tmp_path, i7, driver)
    none.tend_pools(0.0)
    assert states(driver) == {}
    assert len(none.allocator) == 0


def test_a_pool_larger_than_the_host_fills_what_fits_and_says_why(tmp_path, i7, driver):
    huge = PoolSpec(name="huge", size=50, vcpus=4, memory_mib=1024, ratio=1.0, warmup_s=0)
    agent = agent_with(tmp_path, i7, driver, huge)

    def fill() -> None:
        while agent.tend_pools(0.0):
            pass

    with pytest.raises(AgentError, match="not enough cpu"):
        fill()
    assert len(states(driver)) == len(i7.usable_cpus) // 4
    assert str(agent.pool_status()["huge"]["last_error"]).startswith("not enough cpu: ")
    agent.allocator.check_invariants()


def test_the_pool_keeper_logs_a_failure_once_and_keeps_it_until_tending_works(caplog):
    outcomes = [AgentError("not enough cpu", "1 vCPU at 2.0"), AgentError("not enough cpu", "1 vCPU at 2.0")]
    rounds = []

    def tend(now: float) -> bool:
        rounds.append(now)
        if outcomes:
            raise outcomes.pop(0)
        return False

    keeper = PoolKeeper(tend, period_s=0.01)
    with caplog.at_level(logging.INFO, logger="pinfold.agent.pools"):
        keeper.start()
        try:
            deadline = time.monotonic() + 10
            while len(rounds) < 4:
                assert time.monotonic() < deadline, "the keeper stopped tending"
                time.sleep(0.01)
        finally:
            keeper.stop()
    assert keeper.last_error is None  # it works again
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["warm pools: not enough cpu: 1 vCPU at 2.0 (trying again every 0.01 s)",
                        "warm pools: tending works again"]  # fmt: skip


def test_a_version_1_store_is_migrated(tmp_path, i7, driver):
    path = tmp_path / "agent.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE vms (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
            vcpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL, ratio REAL NOT NULL,
            owner TEXT NOT NULL DEFAULT '', image TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,
            pending TEXT);
        CREATE TABLE vnode_cpus (ratio REAL NOT NULL, position INTEGER NOT NULL, cpu INTEGER NOT NULL UNIQUE,
            PRIMARY KEY (ratio, position));
        INSERT INTO vms (name, vcpus, memory_mib, ratio, state) VALUES ('old', 1, 128, 2.0, 'running');
        INSERT INTO vnode_cpus VALUES (2.0, 0, 1);
        """
    )
    db.close()
    _, vms = Store(path).load()
    assert (vms["old"].domain, vms["old"].pool) == ("old", "")


def test_a_snapshot_shows_the_users_vms_and_counts_the_pool_members(tmp_path, i7, driver):
    """`Agent.snapshot`, what the API and the heartbeat read: the users' VMs and
    their pins; pool members count among the host's VMs but are nobody's."""
    agent = filled(agent_with(tmp_path, i7, driver, SMALL))
    agent.create(VMRequest("web", 2, 256, 1.0))
    now = agent.snapshot()
    assert list(now.vms) == ["web"]
    assert now.vm_count == 3
    assert now.pins == {"web": agent.pinning("web")}
    assert now.pins["web"] == sorted(now.vnodes[1.0])
    assert now.pools == {"small": {"size": 2, "ready": 2, "warming": 0, "last_error": None}}
    assert now.memory_allocated_mib == 2 * 128 + 256
    assert now.memory_free_mib == now.memory_usable_mib - now.memory_allocated_mib
    assert now.free_cpus == len(now.usable_cpus) - sum(len(cpus) for cpus in now.vnodes.values())
    assert agent.pinning("nothing") == []
