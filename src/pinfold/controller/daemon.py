"""Assemble and run the controller: database, tokens, agents' clients, the
periodic checks, and the HTTP server."""

from __future__ import annotations

import gc
import signal
import ssl
import sys
import threading
from collections.abc import Callable

from pinfold import serving
from pinfold.controller.agents import ACTION_TIMEOUT_S, AgentClient
from pinfold.controller.api import create_app
from pinfold.controller.config import ControllerConfig
from pinfold.controller.consolidation import ConsolidationSettings, Consolidator
from pinfold.controller.database import connect
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore, HostRecord
from pinfold.tls import client_context, warn_plain_url

__all__ = ["build_controller", "serve"]


class AgentClients:
    """One client per host address and agent token, made on first use (each
    keeps its connections in a urllib3 pool). Each agent is called with its
    own API token, which it sent when it registered; `fallback_token` (the
    enrolment token) only for a host registered by an older agent, which sent
    none (its API token was then the cluster's agent token)."""

    def __init__(
        self,
        fallback_token: str,
        timeout_s: float,
        action_timeout_s: float = ACTION_TIMEOUT_S,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._fallback_token = fallback_token
        self._verify = verify
        self._timeout_s = timeout_s
        self._action_timeout_s = action_timeout_s
        self._clients: dict[tuple[str, str], AgentClient] = {}
        self._lock = threading.Lock()

    def __call__(self, host: HostRecord) -> AgentClient:
        key = (host.address, host.agent_token or self._fallback_token)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                warn_plain_url("pinfold controller", host.address)
                client = self._clients[key] = AgentClient(
                    *key, self._timeout_s, action_timeout_s=self._action_timeout_s, verify=self._verify
                )
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def build_controller(
    config: ControllerConfig, agent_token: str, verify: ssl.SSLContext | bool = True
) -> tuple[Controller, AgentClients]:
    """`verify`: what agents' HTTPS certificates are checked against."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    clients = AgentClients(agent_token, config.agent_timeout_s, config.agent_action_timeout_s, verify)
    controller = Controller(
        ControllerStore(connect(config.url, config.database_pool_size)),
        clients,
        heartbeat_period_s=config.heartbeat_period_s,
        default_policy=config.policy,
        stale_after_s=config.stale_after_s,
        race_wait_s=config.agent_timeout_s,  # the longest a concurrent create's agent call takes
        coalesce_at_most=config.coalesce_at_most,
    )
    return controller, clients


class Periodic:
    """A thread that calls `work` every `period_s` until stopped; a failure is
    printed (with `what`) and the next period tries again (the database or an
    agent may be away for a moment)."""

    def __init__(self, name: str, period_s: float, work: Callable[[], object], what: str) -> None:
        self._period_s = period_s
        self._work = work
        self._what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self._work()
            except Exception as error:
                print(f"pinfold controller: {self._what} failed: {error}", file=sys.stderr)


def upkeep(controller: Controller, period_s: float) -> Periodic:
    """Every heartbeat period: mark hosts down (events), retry deletions
    whose agent did not answer, bring the scheduler's picture in step with
    the database (other replicas' changes)."""

    def work() -> None:
        controller.check_hosts()
        controller.retry_deletes()
        controller.refresh_vms()

    return Periodic("pinfold-upkeep", period_s, work, "upkeep")


def consolidation_settings(config: ControllerConfig) -> ConsolidationSettings:
    return ConsolidationSettings(
        enabled=config.consolidate,
        interval_s=config.consolidate_interval_s,
        at_once=config.consolidate_at_once,
        per_hour=config.consolidate_per_hour,
        cooldown_s=config.consolidate_cooldown_s,
    )


def settled() -> None:
    """What start-up made (modules, the picture of every host) lives as long
    as the process: it is left out of the cyclic collector's passes from now
    on (a full pass over 10,000 hosts' allocators took 40 ms, a pause in some
    request every few seconds), and the collector is on (the `controller`
    command turns it off for its start-up)."""
    gc.freeze()
    gc.enable()


def serve(config: ControllerConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    admin_token, agent_token = config.tokens()
    controller, clients = build_controller(config, agent_token, client_context(config.tls_ca))
    where = "SQLite in " + str(config.data_dir) if config.database_url is None else "database by URL"
    listening = f"{config.scheme}://{config.listen}:{config.port}"
    print(f"pinfold controller: {where}; listening on {listening}", flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))

    def report(text: str) -> None:
        print(f"pinfold controller: {text}", flush=True)

    consolidator = Consolidator(controller, consolidation_settings(config), report)
    # the consolidation's migrations run one after the other, in its own thread
    threads = [upkeep(controller, config.heartbeat_period_s)]
    if config.consolidate:
        threads.append(
            Periodic(
                "pinfold-consolidation", config.consolidate_interval_s, consolidator.step, "consolidation"
            )
        )
    for thread in threads:
        thread.start()
    try:
        app = create_app(controller, admin_token, agent_token, config.slackvm_open_networks, consolidator)
        settled()
        serving.run(app, config, config.listen, config.port, "pinfold controller")
    finally:
        for thread in threads:
            thread.stop()
        clients.close()
        controller.store.engine.dispose()
        print("pinfold controller: stopped", flush=True)
