"""A small real cluster on loopback for the controller's tests: sim-driver
agents, each a real uvicorn server with its own SQLite store and its own API
token, enrolling with the cluster's agent token and sending heartbeats with
their host credential through the real `Registrar`; and a controller on a real
database, served on loopback too."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pinfold.agent.addresses import AddressBook
from pinfold.agent.api import create_app as agent_app
from pinfold.agent.drivers import Driver, SimDriver
from pinfold.agent.registration import Registrar, heartbeat_document, registration_document
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.controller.api import create_app as controller_app
from pinfold.controller.daemon import AgentClients
from pinfold.controller.database import connect
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore
from pinfold.topology import Topology
from tests.servers import Served

ADMIN = "admin-token-0123456789abcdef"
#: the cluster's agent token: the enrolment token
AGENT = "agent-token-0123456789abcdef"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
PERIOD_S = 0.25
#: the controller's heartbeat period in tests: down after 3 s of silence (a 0.75 s window
#: was missed under CI load: a host taken for down in a test about something else)
CONTROLLER_PERIOD_S = 1.0
#: longer than any agent call takes here, even with 16 requests at once on 2 cores
STALE_AFTER_S = 5.0


@dataclass
class Host:
    host_id: str
    agent: Agent
    served: Served
    registrar: Registrar
    #: the agent's own API token (the controller calls it with this one)
    token: str

    def stop(self) -> None:
        """The agent dies: no more heartbeats, no more answers."""
        self.registrar.stop()
        self.served.stop()


@dataclass
class LocalCluster:
    tmp_path: Path
    database_url: str
    topology: Topology
    controller: Controller = field(init=False)
    hosts: dict[str, Host] = field(default_factory=dict)
    #: the controller's period: a host is down after three missed ones (agents beat every PERIOD_S,
    #: four times as often, so that a late beat on a loaded 2-core machine is not taken for a death)
    heartbeat_period_s: float = CONTROLLER_PERIOD_S
    #: the controller's default placement policy
    policy: str = "progress"
    #: networks whose clients may use SlackVM's routes without a token
    slackvm_open_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.clients = AgentClients(AGENT, timeout_s=10)
        store = ControllerStore(connect(self.database_url))
        self.controller = Controller(
            store,
            self.clients,
            heartbeat_period_s=self.heartbeat_period_s,
            default_policy=self.policy,
            stale_after_s=STALE_AFTER_S,
        )
        self.served = Served(controller_app(self.controller, ADMIN, AGENT, self.slackvm_open_networks))
        self.url = self.served.url
        #: the controller's API as an admin (`httpx.Client(base_url=cluster.url)` for no token)
        self.http = httpx.Client(base_url=self.url, timeout=30, headers=ADMIN_AUTH)

    def add_host(
        self,
        host_id: str,
        driver: Driver | None = None,
        settings: AgentSettings | None = None,
        topology: Topology | None = None,
        period_s: float = PERIOD_S,
        token: str | None = None,
    ) -> Host:
        topology = topology or self.topology
        host = start_host(self.tmp_path, topology, host_id, self.url, driver, settings, period_s, token=token)
        self.hosts[host_id] = host
        return host

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop()
            host.agent.store.close()
        self.http.close()
        self.served.stop()
        self.clients.close()
        self.controller.store.engine.dispose()


def start_host(
    tmp_path: Path,
    topology: Topology,
    host_id: str,
    controller_url: str,
    driver: Driver | None = None,
    settings: AgentSettings | None = None,
    period_s: float = PERIOD_S,
    *,
    token: str | None = None,
    agent: Agent | None = None,
) -> Host:
    """An agent served on loopback, registered with the controller at
    `controller_url` (before this returns) and sending heartbeats every
    `period_s`, a period its `Registrar` states in the registration. Its API
    token is `token` (default: its own, made from the host id); its host
    credential is kept in TMP_PATH/HOST_ID/host.token. `agent`: an agent
    restarting (the same one, served and registering anew)."""
    if agent is None:
        store = Store(tmp_path / host_id / "agent.db")
        agent = Agent.open(
            topology, driver or SimDriver(), store, settings or AgentSettings(domain_type="qemu")
        )
    token = token or f"{host_id}-api-token-0123456789abcdef"
    served = Served(agent_app(agent, token))
    book = AddressBook(agent)  # the heartbeat carries the VMs' NICs, as the daemon's does
    registrar = Registrar(
        controller_url, AGENT, host_id,
        lambda: registration_document(agent, host_id, served.url, token),
        lambda: heartbeat_document(agent, None, book),
        period_s, tmp_path / host_id / "host.token",
    )  # fmt: skip
    registrar.beat()
    registrar.start()
    return Host(host_id, agent, served, registrar, token)
