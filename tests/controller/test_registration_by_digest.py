"""A registration names its topology by digest (issue 16: 10,000 hosts of
one model need not send the same 157 KB document 10,000 times): the agent
tries the digest first and sends the document only when the controller holds
none under that key, and the controller refuses a digest it does not hold
without registering anything."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinfold.agent.drivers import SimDriver
from pinfold.agent.registration import BEAT_JITTER, Registrar, heartbeat_document, registration_document
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.topology import Topology, slackvm_json
from tests.controller.cluster import AGENT, PERIOD_S, LocalCluster

ENROLMENT = {"Authorization": f"Bearer {AGENT}"}


class Recording(httpx.HTTPTransport):
    """A real transport that notes, for each registration it carries, the
    topology field it sent, its body's size and the answer's status."""

    def __init__(self) -> None:
        super().__init__()
        self.registrations: list[tuple[str, int, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/api/v1/hosts":
            body = request.read()
            sent = "topology" if b'"topology":' in body else "topology_digest"
            self.registrations.append((sent, len(body), response.status_code))
        return response


@pytest.fixture
def cluster(tmp_path: Path, i7: Topology) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    yield local
    local.close()


@contextlib.contextmanager
def agent_registrar(
    cluster: LocalCluster,
    host_id: str,
    period_s: float = PERIOD_S,
    transport: httpx.HTTPTransport | None = None,
) -> Iterator[Registrar]:
    """The registrar (not started) of an agent of the cluster's host model; both closed at the end."""
    agent = Agent.open(
        cluster.topology, SimDriver(), Store(cluster.tmp_path / host_id / "agent.db"),
        AgentSettings(domain_type="qemu"),
    )  # fmt: skip
    token = f"{host_id}-api-token-0123456789abcdef"
    registrar = Registrar(
        cluster.url, AGENT, host_id,
        lambda: registration_document(agent, host_id, "http://127.0.0.1:1", token),
        lambda: heartbeat_document(agent, None),
        period_s, cluster.tmp_path / host_id / "host.token", transport=transport,
    )  # fmt: skip
    try:
        yield registrar
    finally:
        registrar.stop()
        agent.store.close()


def register(cluster: LocalCluster, host_id: str) -> Recording:
    """An agent of the cluster's host model registering once through a recording transport."""
    transport = Recording()
    with agent_registrar(cluster, host_id, transport=transport) as registrar:
        registrar.beat()
        assert registrar.registered, registrar.last_error
    return transport


def test_the_first_host_of_a_model_sends_its_document_and_the_next_only_its_digest(
    cluster: LocalCluster,
) -> None:
    first = register(cluster, "h1")
    assert [(sent, status) for sent, _, status in first.registrations] == [
        ("topology_digest", 409),  # the controller holds no document of this model yet
        ("topology", 200),
    ]
    second = register(cluster, "h2")
    assert [(sent, status) for sent, _, status in second.registrations] == [("topology_digest", 200)]
    whole, by_digest = first.registrations[1][1], second.registrations[0][1]
    assert by_digest < whole, (by_digest, whole)
    h1, h2 = cluster.controller.store.host("h1"), cluster.controller.store.host("h2")
    assert h1 is not None
    assert h2 is not None
    assert h2.topology == h1.topology
    assert h2.topology_digest == slackvm_json.digest(slackvm_json.to_dict(cluster.topology, distances=False))
    assert {"h1", "h2"} <= set(cluster.controller.schedulable_hosts())


def registration(**fields: Any) -> dict[str, Any]:
    return {"host_id": "hx", "address": "http://127.0.0.1:1", "critical_size": 6, "reserved_memory_mib": 0,
            **fields}  # fmt: skip


def test_an_unknown_digest_is_refused_and_registers_nothing(cluster: LocalCluster) -> None:
    unknown = cluster.http.post(
        "/api/v1/hosts", json=registration(topology_digest="0" * 64), headers=ENROLMENT
    )
    assert unknown.status_code == 409, unknown.text
    assert unknown.json()["error"] == "unknown topology"
    assert "0" * 64 in unknown.json()["detail"]
    assert cluster.http.get("/api/v1/hosts/hx").status_code == 404
    assert cluster.controller.store.host("hx") is None


@pytest.mark.parametrize(
    "fields",
    [
        {},  # neither
        {"topology_digest": "A" * 64},  # not lower-case hex
        {"topology_digest": "0" * 63},
        {"topology_digest": 5},
    ],
    ids=["neither", "upper-case", "short", "a number"],
)
def test_a_registration_needs_one_well_formed_topology(cluster: LocalCluster, fields: dict[str, Any]) -> None:
    refused = cluster.http.post("/api/v1/hosts", json=registration(**fields), headers=ENROLMENT)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == "invalid request"
    assert cluster.controller.store.host("hx") is None


@pytest.mark.parametrize(
    "address", ["http://", "http://:8080", "http://h:99999", "http://a b:1", "http://h:0"]
)
def test_an_address_the_controller_cannot_call_is_refused_at_registration(
    cluster: LocalCluster, i7_topology: dict[str, Any], address: str
) -> None:
    """Refused with the registration (422, nothing stored), not accepted and
    then "not usable" at each call to the agent."""
    refused = cluster.http.post(
        "/api/v1/hosts", json=registration(topology=i7_topology, address=address), headers=ENROLMENT
    )
    assert refused.status_code == 422, refused.text
    assert "cannot call this address" in refused.json()["detail"]
    assert cluster.controller.store.host("hx") is None
    called = cluster.http.post(
        "/api/v1/hosts", json=registration(topology=i7_topology, address="http://127.0.0.1:9/a/"),
        headers=ENROLMENT,
    )  # fmt: skip
    assert called.status_code == 200, called.text


def test_a_document_and_a_digest_together_are_refused(
    cluster: LocalCluster, i7_topology: dict[str, Any]
) -> None:
    both = registration(topology=i7_topology, topology_digest=slackvm_json.digest(i7_topology))
    refused = cluster.http.post("/api/v1/hosts", json=both, headers=ENROLMENT)
    assert refused.status_code == 422, refused.text
    assert "not both" in refused.text
    assert cluster.controller.store.host("hx") is None


class CountedStop(threading.Event):
    """A registrar's stop event that notes each wait between rounds and
    stops the registrar after `rounds` of them."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.rounds:
            self.set()
        return self.is_set()


def test_registered_agents_beat_a_little_early_at_random_so_that_they_do_not_stay_in_step(
    cluster: LocalCluster,
) -> None:
    """Agents started together would beat in step for ever, their beats one
    burst at the controller: the first wait after the registration is drawn
    anywhere in the period, and each wait after a beat is up to a tenth of the
    period shorter, drawn each round, and never longer (the controller
    judges a host down after three periods)."""
    period_s = 10.0
    stop = CountedStop(rounds=41)
    with agent_registrar(cluster, "h1", period_s) as registrar:
        registrar._stop = stop  # the rounds run at once: each wait is noted, not waited
        registrar._run()
        assert registrar.registered, registrar.last_error
    first, *waits = [wait for wait in stop.waits if wait is not None]
    assert 0 <= first < period_s
    assert len(waits) == 40
    assert all(BEAT_JITTER * -period_s <= wait - period_s <= 0 for wait in waits), waits
    assert max(waits) - min(waits) > period_s * BEAT_JITTER / 4, waits  # drawn, not one fixed offset
    assert len(set(waits)) > 30


def test_agents_registered_together_have_their_beats_spread_over_the_period(cluster: LocalCluster) -> None:
    """Twenty registrars started at once: their first beats after the
    registration are spread over the period, not in one burst (with only a
    tenth of jitter a round, 20 sim agents' beats came within 0.5-0.9 s)."""
    period_s = 10.0
    firsts: list[float] = []
    for i in range(20):
        stop = CountedStop(rounds=1)
        with agent_registrar(cluster, f"h{i + 1}", period_s) as registrar:
            registrar._stop = stop
            registrar._run()
            assert registrar.registered, registrar.last_error
        (first,) = stop.waits
        assert first is not None
        firsts.append(first)
    assert all(0 <= wait < period_s for wait in firsts), firsts
    # 20 draws over the whole period: all within half of it has odds of about 4 in 100,000
    assert max(firsts) - min(firsts) > period_s / 2, firsts
