"""The agent asks the lifecycle table (pinfold.model.lifecycle) whether an
action is legal, with the state the guest is in, before it touches the
guest; and every state it stores is one of the table's."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

from pinfold.agent.drivers import GuestState, SimDriver
from pinfold.agent.pools import PoolSpec
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.model.lifecycle import POWER_ACTIONS, Action, Refused, VMState, transition
from pinfold.topology import Topology

AGENT_SOURCES = Path(__file__).resolve().parents[2] / "src" / "pinfold" / "agent"


class RecordingDriver(SimDriver):
    """The sim driver, recording every lifecycle operation it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        super().start(name)

    def shutdown(self, name: str, timeout_s: float) -> None:
        self.calls.append(("shutdown", name))
        super().shutdown(name, timeout_s)

    def suspend(self, name: str) -> None:
        self.calls.append(("suspend", name))
        super().suspend(name)

    def resume(self, name: str) -> None:
        self.calls.append(("resume", name))
        super().resume(name)


GUEST_STATES = (GuestState.RUNNING, GuestState.PAUSED, GuestState.SHUTOFF)


def _legal(state: VMState, action: Action) -> bool:
    try:
        transition(state, action)
    except Refused:
        return False
    return True


PAIRS = [(guest, action) for guest in GUEST_STATES for action in POWER_ACTIONS]


def _guest_in(driver: RecordingDriver, domain: str, state: GuestState) -> None:
    """Put the guest in `state` behind the agent's back (its store may lag, as
    with a guest that powers itself off), then forget those calls."""
    if state is GuestState.PAUSED:
        driver.suspend(domain)
    elif state is GuestState.SHUTOFF:
        driver.shutdown(domain, 0)
    driver.calls.clear()


@pytest.mark.parametrize(("guest", "action"), PAIRS, ids=[f"{g}-{a}" for g, a in PAIRS])
def test_an_action_is_done_or_refused_by_the_table_before_the_driver(
    tmp_path: Path, i7: Topology, guest: GuestState, action: Action
) -> None:
    driver = RecordingDriver()
    agent = Agent.open(i7, driver, Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    agent.create(VMRequest("v", 1, 128, 2.0))
    _guest_in(driver, "v", guest)
    operation = getattr(agent, action.value)
    if _legal(VMState(guest.value), action):
        assert operation("v").state is transition(VMState(guest.value), action)
        assert driver.calls == [(action.value, "v")]
        return
    with pytest.raises(AgentError) as refused:
        operation("v")
    assert refused.value.code == "invalid"
    assert refused.value.detail.startswith(f"v is {guest.value}: {action.value} needs ")
    assert driver.calls == []  # refused by the table: the driver was not asked


# -- every state the agent stores is a VMState --------------------------------------------

#: the calls that store a VM's state, and the position of their state argument
_STORING = {"_set": 1, "set_state": 1, "StoredVM": 3}


def _state_arguments(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            position = _STORING.get(callee)
            if position is not None and len(node.args) > position:
                found.append(node.args[position])
            found += [keyword.value for keyword in node.keywords if keyword.arg == "state"]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(side, ast.Attribute) and side.attr == "state" for side in sides):
                found += sides
    return found


def _literals(expression: ast.expr) -> list[str]:
    return [
        node.value
        for node in ast.walk(expression)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_the_agent_stores_and_compares_states_only_through_the_enum() -> None:
    """No bare string where the agent stores a VM's state or compares one:
    each is a VMState member (mypy checks the types; this the spelling)."""
    bare = {
        f"{path.relative_to(AGENT_SOURCES)}:{expression.lineno}: {literal!r}"
        for path in AGENT_SOURCES.rglob("*.py")
        for expression in _state_arguments(ast.parse(path.read_text(), str(path)))
        for literal in _literals(expression)
    }
    assert bare == set()


def test_the_meta_test_sees_a_bare_state() -> None:
    source = (
        'self._set(name, "stopping", None)\nif vm.state == "pooled": pass\nStoredVM(s, o, i, "x", None)\n'
    )
    found = [
        literal for expression in _state_arguments(ast.parse(source)) for literal in _literals(expression)
    ]
    assert sorted(found) == ["pooled", "stopping", "x"]


def test_every_state_in_the_agents_database_is_a_vm_state(tmp_path: Path, i7: Topology) -> None:
    """A run through warm pools, a hand-out, suspend, shutdown and a lost
    domain: every state written to SQLite is a VMState value."""
    pool = PoolSpec(name="small", size=2, vcpus=1, memory_mib=128, ratio=2.0, warmup_s=5)
    driver = RecordingDriver()
    agent = Agent.open(
        i7, driver, Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu", pools=(pool,))
    )
    seen: set[str] = set()

    def look() -> None:
        with sqlite3.connect(tmp_path / "agent.db") as db:
            seen.update(state for (state,) in db.execute("SELECT state FROM vms"))

    while agent.tend_pools(0.0):
        look()
    agent.tend_pools(pool.warmup_s)
    look()
    agent.create(VMRequest("taken", 1, 128, 2.0))  # from the pool
    agent.create(VMRequest("cold", 2, 256, 2.0))
    agent.suspend("cold")
    look()
    agent.shutdown("taken")
    look()
    driver.delete(agent.vms["cold"].domain)
    with pytest.raises(AgentError):
        agent.resume("cold")  # finds the domain gone: missing
    look()
    assert {"warming", "pooled", "paused", "shutoff", "missing"} <= seen
    assert seen <= {state.value for state in VMState}
