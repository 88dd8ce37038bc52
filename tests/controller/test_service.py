"""The Controller on a real database with a hand-driven clock and no agents:
hosts going down and coming back, across a controller's restart."""

from __future__ import annotations

from typing import Any

import pytest

from pinfold.controller.agents import AgentClient
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore, HostRecord

PERIOD_S = 10.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def no_agents(host: HostRecord) -> AgentClient:
    raise AssertionError(f"no agent call expected, not to {host.id}")


def controller(store: ControllerStore, clock: Clock) -> Controller:
    """A controller on `store`; a second one on the same store is a restart."""
    return Controller(store, no_agents, heartbeat_period_s=PERIOD_S, clock=clock)


def liveness_events(store: ControllerStore) -> list[str]:
    return [event.kind for event in store.events() if event.kind in ("host down", "host up")]


def test_a_restarted_controller_does_not_report_a_down_host_again(
    store: ControllerStore, i7_topology: dict[str, Any]
) -> None:
    clock = Clock()
    first = controller(store, clock)
    first.register("h1", "http://h1:8099", i7_topology, 6, 0)
    clock.now += 3 * PERIOD_S + 1
    assert first.check_hosts() == ["h1"]
    assert first.check_hosts() == ["h1"]
    restarted = controller(store, clock)
    clock.now += PERIOD_S
    assert restarted.check_hosts() == ["h1"]
    assert liveness_events(store) == ["host down"]


@pytest.mark.parametrize("comes_back_by", ["heartbeat", "registration"])
def test_a_host_back_after_being_down_is_reported_up_even_by_a_restarted_controller(
    store: ControllerStore, i7_topology: dict[str, Any], comes_back_by: str
) -> None:
    clock = Clock()
    first = controller(store, clock)
    first.register("h1", "http://h1:8099", i7_topology, 6, 0)
    clock.now += 3 * PERIOD_S + 1
    first.check_hosts()
    restarted = controller(store, clock)
    if comes_back_by == "heartbeat":
        assert restarted.heartbeat("h1", {})
    else:
        restarted.register("h1", "http://h1:8099", i7_topology, 6, 0)
    assert restarted.host("h1").state == "up"
    assert restarted.check_hosts() == []
    assert liveness_events(store) == ["host down", "host up"]
    clock.now += 3 * PERIOD_S + 1  # and down again: a second event, as it should
    assert restarted.check_hosts() == ["h1"]
    assert liveness_events(store) == ["host down", "host up", "host down"]


def test_a_host_is_down_after_three_of_its_agents_own_periods(
    store: ControllerStore, i7_topology: dict[str, Any]
) -> None:
    """The agent beats every 30 s, the controller checks every 10 s: judged by
    the controller's period alone it would be down 30 s after each beat."""
    clock = Clock()
    control = controller(store, clock)
    control.register("slow", "http://slow:8099", i7_topology, 6, 0, heartbeat_period_s=3 * PERIOD_S)
    control.register("plain", "http://plain:8099", i7_topology, 6, 0)  # an agent that does not say
    clock.now += 3 * PERIOD_S + 1
    assert control.host("slow").state == "up"
    assert control.check_hosts() == ["plain"]
    assert control.schedulable_hosts() == ["slow"]
    clock.now += 6 * PERIOD_S
    assert control.check_hosts() == ["plain", "slow"]


def test_an_agent_period_shorter_than_the_controllers_does_not_hurry_it(
    store: ControllerStore, i7_topology: dict[str, Any]
) -> None:
    clock = Clock()
    control = controller(store, clock)
    control.register("fast", "http://fast:8099", i7_topology, 6, 0, heartbeat_period_s=1.0)
    clock.now += 3 * PERIOD_S - 1
    assert control.check_hosts() == []
