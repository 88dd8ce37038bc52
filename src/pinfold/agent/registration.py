"""The agent's side of the controller: register, then heartbeat every period.

The agent finds the controller from its settings (`controller_url`). Its
first registration, with the cluster's enrolment token, enrols the host: the
answer holds the host's own credential, kept in DATA_DIR/host.token (0600),
which every heartbeat and later registration presents instead. The
registration also carries the agent's own API token, which the controller
calls it with. The agent keeps trying while the controller is unreachable,
and registers again when a heartbeat is refused: with its credential, or,
when the controller does not know that credential (it lost its database),
by enrolling again. A revoked credential (`pinfold host remove`) is not
replaced by itself: the operator deletes host.token to have the host enrol anew.
Either side may restart at any time; the other carries on by itself.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from pinfold.agent.addresses import AddressBook
from pinfold.agent.bounded import HEARTBEAT_MAX_BYTES, Bound, sized
from pinfold.agent.cloud_agent import CloudAgent
from pinfold.agent.monitor import Monitor
from pinfold.agent.service import Agent
from pinfold.placement import level_key
from pinfold.tls import tls_failure
from pinfold.tokens import MIN_TOKEN_LENGTH, TokenError, write_token
from pinfold.topology import slackvm_json

__all__ = ["CLOUD_TOPOLOGY", "BeatBounds", "Registrar", "cloud_registration_document",
           "heartbeat_document", "registration_document"]  # fmt: skip

#: a cloud agent's topology (`cloud_registration_document`): a placeholder of one CPU, marked
#: `cloud`, which the controller never places on (its `fits` and its scheduler leave it out)
CLOUD_TOPOLOGY: dict[str, Any] = {
    "cpuset": {
        "numa_distances": {"0": [10]},
        "cpu_list": [{"cpu_id": 0, "numa_node": 0, "sib_smt": [0], "sib_cpu": [0], "cache_level": {}}],
        "host_count": 1,
    },
    "memset": {"total": 1},
    "cloud": "openstack",
}

logger = logging.getLogger(__name__)
#: a beat comes up to this share of the period early, at random (`_jittered`)
BEAT_JITTER = 0.1


class Registrar:
    """`registration()` and `heartbeat()` build the two documents (read from
    the agent in one snapshot); they are called on this thread, each round.
    `enrolment_token` enrols the host; `credential_file` keeps the credential
    the controller gives it then. `verify`: what an HTTPS controller's
    certificate is checked against."""

    def __init__(
        self,
        controller_url: str,
        enrolment_token: str,
        host_id: str,
        registration: Callable[[], dict[str, Any]],
        heartbeat: Callable[[], dict[str, Any]],
        period_s: float,
        credential_file: Path,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.host_id = host_id
        self._registration = registration
        self._heartbeat = heartbeat
        self._period_s = period_s
        self._enrolment_token = enrolment_token
        self._credential_file = credential_file
        self._credential: str | None = None
        #: a credential the controller issued that could not be written yet (a full
        #: or read-only disk): kept in memory and written again every round, since the
        #: controller already holds it and would refuse a second enrolment
        self._unsaved: str | None = None
        #: the controller revoked this host: ask again only once a period, not every second
        self._revoked = False
        #: registrations refused in a row (`_refusal`): asked again ever less often
        self._refusals = 0
        self._client = httpx.Client(
            base_url=controller_url.rstrip("/"),
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
            if not self.registered and not self._register():
                return
            response = self._client.post(
                f"/api/v1/hosts/{self.host_id}/heartbeat", json=self._heartbeat(), headers=self._as_host()
            )
            if response.status_code in (401, 403, 404):
                self.registered = False  # the controller forgot or refuses us: register next round
                self.last_error = _refused("heartbeat", response)
                return
            response.raise_for_status()
            self.last_error = self._save_credential()
        except httpx.HTTPError as error:
            self.last_error = f"controller unreachable or refusing: {tls_failure(error) or error}"
        except ValueError as error:  # an answer that is not the JSON it should be
            self.last_error = f"the controller's answer could not be read: {error}"

    def _register(self) -> bool:
        """Register with the host's credential if it has one, else (or when
        the controller does not know it: 401) enrol; True once registered."""
        # the controller judges this host down after three of these periods
        document = {**self._registration(), "heartbeat_period_s": self._period_s}
        # read each time: an operator deletes the file to have the host enrol again
        credential = _stored(self._credential_file) or self._unsaved
        if credential is not None:
            response = self._post(document, credential)
            if response.status_code == 200:
                self._credential = credential
                self._refusals = 0
                self.registered = True
                return True
            self._revoked = response.status_code == 403
            if response.status_code != 401:  # revoked (403), or the controller failing
                return self._not_registered("registration", response)
        response = self._post(document, self._enrolment_token)
        if response.status_code != 200:
            return self._not_registered("enrolment", response)
        issued = response.json().get("credential")
        # a controller from before host credentials issues none: it takes the enrolment token
        self._credential = issued if isinstance(issued, str) else None
        self._unsaved = self._credential
        self._revoked = False
        self._refusals = 0
        self.registered = True
        self.last_error = self._save_credential()
        return True

    def _not_registered(self, what: str, response: httpx.Response) -> bool:
        """Note why the controller did not register this host (False)."""
        self.last_error = _refused(what, response)
        self._refusals = self._refusals + 1 if _refusal(response) else 0
        return False

    def _post(self, document: dict[str, Any], token: str) -> httpx.Response:
        """The registration, naming the topology by its digest first: a
        controller that holds the document (a host of the same model registered
        before) reads no 157 KB. One that does not (409 `unknown topology`), or
        that predates digests (422), gets the whole document."""
        headers = _bearer(token)
        by_digest = {key: value for key, value in document.items() if key != "topology"}
        by_digest["topology_digest"] = slackvm_json.digest(document["topology"])
        response = self._client.post("/api/v1/hosts", json=by_digest, headers=headers)
        if _code(response) in ("unknown topology", "invalid request"):
            response = self._client.post("/api/v1/hosts", json=document, headers=headers)
        return response

    def _save_credential(self) -> str | None:
        """Write an issued credential not yet on disk; the error, if that fails."""
        if self._unsaved is None:
            return None
        try:
            write_token(self._credential_file, self._unsaved)
        except (OSError, TokenError) as error:
            return (
                f"the host credential could not be saved in {self._credential_file} (kept in memory): {error}"
            )
        self._unsaved = None
        return None

    def _as_host(self) -> dict[str, str]:
        return _bearer(self._credential or self._enrolment_token)

    def _run(self) -> None:
        while not self._stop.is_set():
            was_registered = self.registered
            try:
                self.beat()
            except Exception as error:  # the thread outlives any one round: the host must not go silent
                logger.exception("a registration round failed")
                self.last_error = f"a registration round failed: {error}"
            self._stop.wait(self._next_round_s(was_registered))

    def _next_round_s(self, was_registered: bool) -> float:
        """The wait before the next round: a second while registering (a
        period, jittered, once revoked; after n refusals in a row, 2**n
        seconds up to a period, jittered: an address or a token the
        controller refuses stays refused until an operator acts, and each
        round sent the registration, the whole topology document after a
        422); after a registration, a phase drawn anywhere in the period
        (`_phase`); then a period, jittered (`_jittered`)."""
        if not self.registered:
            if self._revoked:
                return _jittered(self._period_s)
            if self._refusals:
                return _jittered(min(self._period_s, 2.0**self._refusals))
            return min(self._period_s, 1.0)
        return _phase(self._period_s) if not was_registered else _jittered(self._period_s)


def _phase(period_s: float) -> float:
    """The first wait after a registration, drawn anywhere in the period:
    agents started together (a rack powered on, a fleet upgraded, a
    benchmark's 20 sim agents) register within a second or two, and a small
    jitter alone left their beats in one burst at the controller for many
    periods (20 beats within 0.5-0.9 s, 3 ms of the controller's CPU each:
    the creates meanwhile were the slowest of a run, issue 16)."""
    return period_s * random.random()


def _jittered(period_s: float) -> float:
    """A wait of up to `BEAT_JITTER` of the period shorter than it, drawn
    each round, so that agents do not fall back in step. Never longer than
    the period: the controller judges a host down after three of them."""
    return period_s * (1.0 - BEAT_JITTER * random.random())


def _refusal(response: httpx.Response) -> bool:
    """An answer that asking again at once will not change: a 4xx, but a
    timeout (408) or too many requests (429)."""
    return 400 <= response.status_code < 500 and response.status_code not in (408, 429)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _stored(path: Path) -> str | None:
    """The host credential kept in `path`, or None when there is none (not
    enrolled yet, or the operator deleted it to enrol again)."""
    try:
        credential = path.read_text(encoding="utf-8").strip()
    except OSError:  # absent, or unreadable (the registrar says so when it cannot write it)
        return None
    return credential if len(credential) >= MIN_TOKEN_LENGTH else None


def _code(response: httpx.Response) -> str | None:
    """A refusal's error code, or None (a success, or an answer not in the
    controller's JSON error shape)."""
    if response.status_code < 400:
        return None
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def _refused(what: str, response: httpx.Response) -> str:
    """The controller's refusal, in one line, with its own explanation."""
    try:
        error = response.json()
        said = f"{error['error']}: {error['detail']}"
    except (ValueError, KeyError, TypeError):
        said = response.text[:200]
    return f"the controller refused this host's {what} ({response.status_code} {said})"


def registration_document(agent: Agent, host_id: str, address: str, token: str) -> dict[str, Any]:
    """Who this host is and what it can hold: the controller replays the VMs
    it places here through the same allocator, so it needs the same inputs;
    and the agent's own API `token`, which the controller calls it with."""
    topology = slackvm_json.to_dict(agent.topology, distances=False)
    return {  # the topology and the settings never change: read without the agent's lock
        "host_id": host_id,
        "address": address,
        "agent_token": token,
        "topology": topology,
        "critical_size": agent.settings.critical_size,
        "reserved_memory_mib": agent.settings.reserved_memory_mib,
    }


def cloud_registration_document(host_id: str, address: str, token: str) -> dict[str, Any]:
    """A cloud agent's registration (`--driver openstack`): pinfold pins nothing on a
    cloud, so there is no topology to replay VMs through; the placeholder `CLOUD_TOPOLOGY`
    says so, and the heartbeats carry the cloud's CPUs per level (`status`)."""
    return {
        "host_id": host_id, "address": address, "agent_token": token, "topology": CLOUD_TOPOLOGY,
        "critical_size": 0, "reserved_memory_mib": 0,
    }  # fmt: skip


class BeatBounds:
    """The bounds of one agent's beats beyond its NICs' (the address book
    keeps those): the pins and the monitor's per-VM usage, each cut to whole
    VMs within what the rest of the beat leaves (`bounded`). One per daemon,
    so that each says once that it cut."""

    def __init__(self, max_bytes: int = HEARTBEAT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.pins = Bound("pins", "in the VMs' deploy order")
        self.usage = Bound("per-VM usage", "in the monitor's order")


def heartbeat_document(
    agent: Agent | CloudAgent,
    monitor: Monitor | None,
    addresses: AddressBook | None = None,
    bounds: BeatBounds | None = None,
) -> dict[str, Any]:
    """The host's SlackVM status, its VMs' states, the last monitor sample
    (usage and GPUs) and, with an `addresses` book, the VMs' NICs with their
    addresses (only the VMs that have NICs; the book asks the hypervisor
    only for the VMs that need it). Within `bounds.max_bytes` of JSON: the
    VMs' states and the host's figures go whole, then the NICs, the per-VM
    usage and the pins each get what is left, whole VMs each (`bounded`):
    the pins last, since each VM's are its vNode's CPUs (the same list for
    every VM of a level), which the beat's `vnodes` carry whole anyway."""
    bounds = bounds or BeatBounds()
    sample = monitor.latest if monitor is not None else None
    now = agent.snapshot()  # the status, the VMs, their pins and the vNodes of one moment
    usage = sample.to_dict() if sample is not None else None
    per_vm: dict[str, Any] = usage.pop("vms", {}) if usage is not None else {}
    beat: dict[str, Any] = {
        "status": now.status,
        "vms": {name: vm.state for name, vm in now.vms.items()},
        "pins": {},
        "vnodes": {level_key(ratio): cpus for ratio, cpus in now.vnodes.items()},
        "usage": usage,
    }
    left = bounds.max_bytes - len(json.dumps(beat))
    if addresses is not None:
        beat["nics"] = addresses.nics(now.vms, left)
        left -= len(json.dumps(beat["nics"]))
    if usage is not None:
        usage["vms"] = bounds.usage.carry(sized(per_vm), left)
        left -= len(json.dumps(usage["vms"]))
    beat["pins"] = bounds.pins.carry(sized(now.pins, same=tuple), left)
    return beat
