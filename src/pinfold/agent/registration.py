"""The agent's side of the controller: register, then heartbeat every period.

The agent finds the controller from its settings (`controller_url`) and
authenticates with the cluster's agent token (its own API token, which the
controller also uses to call it). It keeps trying while the controller is
unreachable, and registers again when a heartbeat is answered 404: the
controller restarted without the host in its directory. Either side may
restart at any time; the other carries on by itself.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpx

from pinfold.agent.monitor import Monitor
from pinfold.agent.service import Agent
from pinfold.placement import level_key
from pinfold.tls import tls_failure
from pinfold.topology import slackvm_json

__all__ = ["Registrar", "heartbeat_document", "registration_document"]


class Registrar:
    """`registration()` and `heartbeat()` build the two documents (read from
    the agent under its lock); they are called on this thread, each round.
    `verify`: what an HTTPS controller's certificate is checked against."""

    def __init__(
        self,
        controller_url: str,
        token: str,
        host_id: str,
        registration: Callable[[], dict[str, Any]],
        heartbeat: Callable[[], dict[str, Any]],
        period_s: float,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.host_id = host_id
        self._registration = registration
        self._heartbeat = heartbeat
        self._period_s = period_s
        self._client = httpx.Client(
            base_url=controller_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=max(2.0, period_s),
            transport=transport,
            verify=verify,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registered = False
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pinfold-registrar", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._client.close()

    def beat(self) -> None:
        """One round: register if needed, then send a heartbeat."""
        try:
            if not self.registered:
                # the controller judges this host down after three of these periods
                self._post("/api/v1/hosts", {**self._registration(), "heartbeat_period_s": self._period_s})
                self.registered = True
            response = self._client.post(f"/api/v1/hosts/{self.host_id}/heartbeat", json=self._heartbeat())
            if response.status_code == 404:
                self.registered = False  # the controller forgot us: register next round
                self.last_error = "the controller does not know this host: registering again"
                return
            response.raise_for_status()
            self.last_error = None
        except httpx.HTTPError as error:
            self.last_error = f"controller unreachable or refusing: {tls_failure(error) or error}"

    def _post(self, path: str, body: dict[str, Any]) -> None:
        self._client.post(path, json=body).raise_for_status()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self._period_s if self.registered else min(self._period_s, 1.0))


def registration_document(agent: Agent, host_id: str, address: str) -> dict[str, Any]:
    """Who this host is and what it can hold: the controller replays the VMs
    it places here through the same allocator, so it needs the same inputs."""
    topology = slackvm_json.to_dict(agent.topology, distances=False)
    with agent.lock:
        return {
            "host_id": host_id,
            "address": address,
            "topology": topology,
            "critical_size": agent.settings.critical_size,
            "reserved_memory_mib": agent.settings.reserved_memory_mib,
        }


def heartbeat_document(agent: Agent, monitor: Monitor | None) -> dict[str, Any]:
    """The host's SlackVM status, its VMs' states and the last monitor sample
    (usage and GPUs)."""
    sample = monitor.latest if monitor is not None else None
    with agent.lock:
        vms = agent.user_vms()
        return {
            "status": agent.allocator.status(),
            "vms": {vm.spec.name: vm.state for vm in vms},
            "pins": {vm.spec.name: sorted(agent.allocator.pinning(vm.spec.name)) for vm in vms},
            "vnodes": {level_key(ratio): cpus for ratio, cpus in agent.vnode_layout().items()},
            "usage": sample.to_dict() if sample is not None else None,
        }
