"""The controller's calls to agents, over their HTTP API with the agent token.

Failures come back as two kinds, because the scheduler treats them apart:
`AgentRefusedError` (the agent answered no: try the next host) and
`AgentUnreachableError` (no answer: the request may or may not have been
carried out, so the reservation stays until a heartbeat tells). An agent's
own JSON error is a definite answer whatever its status (on a 502 "hypervisor
failed" the agent has undone the create); a refused placement's carries the
placement's refusal as data (`refusal`), kept in `AgentRefusedError.refusal`.
`sent` says whether the request may have reached the agent at all.

The calls go through urllib3's connection pool (kept-alive connections, one
pool an agent, thread-safe): it costs half the CPU of httpx a call (0.33
against 0.66 ms, issue 16), and every create and delete makes one.

Lifecycle actions get their own, longer timeout: an agent's shutdown waits up
to its `shutdown_timeout_s` (30 s by default) for the guest before forcing it
off, so with the ordinary timeout the controller would give up (502) while the
agent is still carrying the shutdown out. A live migration's send blocks
until the guest's memory has crossed, so it gets `MIGRATION_TIMEOUT_S`.

The migration calls follow docs/controller.md's protocol (prepare on the
target, send from the source, commit or abort on the target); the agents
never call each other over HTTP.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    SSLError,
)
from urllib3.util import parse_url

from pinfold.model.defaults import ACTION_TIMEOUT_S, AGENT_TIMEOUT_S, MIGRATION_TIMEOUT_S
from pinfold.model.refusal import refusal_from_json
from pinfold.model.vm import NIC, VMRequest
from pinfold.placement import Refusal
from pinfold.tls import tls_failure

__all__ = [
    "ACTION_TIMEOUT_S",
    "MIGRATION_TIMEOUT_S",
    "AgentClient",
    "AgentError",
    "AgentRefusedError",
    "AgentUnreachableError",
    "address_problem",
]


T = TypeVar("T")

#: connections kept open to one agent: the calls made to it at once (a create's
#: batch, deletes, lifecycle actions, migrations) seldom exceed a few; more are
#: made when needed, and closed (urllib3 logs that) when the pool is full
POOL_SIZE = 32


class AgentError(Exception):
    pass


class AgentRefusedError(AgentError):
    """The agent's JSON error as it came; `refusal` its placement refusal as
    data (the numbers), None when it has none (another refusal, an older agent)."""

    def __init__(self, code: str, detail: str, status: int, refusal: Refusal | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        self.refusal = refusal


class AgentUnreachableError(AgentError):
    def __init__(self, detail: str, sent: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sent = sent


class AgentClient:
    """One agent; `timeout_s` bounds each call, `action_timeout_s` a lifecycle
    action (`act`); `verify` is what an HTTPS agent's certificate is checked
    against (pinfold.tls.client_context), False for no check. Thread-safe
    (urllib3's pool is)."""

    def __init__(
        self,
        address: str,
        token: str,
        timeout_s: float = AGENT_TIMEOUT_S,
        action_timeout_s: float = ACTION_TIMEOUT_S,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._action_timeout_s = max(action_timeout_s, timeout_s)
        self.address = address.rstrip("/")
        self._token = token
        self._verify = verify
        self._headers = {"Authorization": f"Bearer {token}"}
        self._json_headers = self._headers | {"Content-Type": "application/json"}
        self._prefix = urlsplit(self.address).path  # an agent served under a path
        # None, and why: an address stored by a registration from before the check
        problem = address_problem(self.address)
        self._pool = _pool(self.address, timeout_s, verify) if problem is None else None
        self._unusable = f"its address {address!r} is not usable: {problem}"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def create(self, request: VMRequest) -> dict[str, Any]:
        """Create `request` on the agent, in the body `pinfold.bodies.CreateVM` reads."""
        return self._call("POST", "/api/v1/vms", _create_body(request))

    def create_many(self, requests: Sequence[VMRequest]) -> list[dict[str, Any] | AgentRefusedError]:
        """Create each of `requests` on the agent in one call (its
        /api/v1/vm-batches route, one create after the other): each one's
        answer, or the agent's refusal of it. An agent without that route (an
        older one) is asked once per VM. `AgentUnreachableError`: no answer
        for the whole call (any of them may have been made)."""
        body = {"vms": [_create_body(r) for r in requests]}
        items = self._batch("/api/v1/vm-batches", body, len(requests), "creates")
        if items is None:
            return [_refused_or(partial(self.create, request)) for request in requests]
        return [_item(item) for item in items]

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"/api/v1/vms/{name}")
        except AgentRefusedError as error:
            if error.status == 404:
                return None
            raise

    def delete(self, name: str) -> bool:
        """True if deleted, False if the agent had no such VM."""
        try:
            self._call("DELETE", f"/api/v1/vms/{name}")
        except AgentRefusedError as error:
            if error.status == 404:
                return False
            raise
        return True

    def delete_many(self, names: Sequence[str]) -> list[bool | AgentRefusedError]:
        """`delete` for each of `names` in one call (the agent's
        /api/v1/vm-deletions route, one delete after the other): True for each
        deleted, False for one the agent had not, or its refusal. An agent
        without that route (an older one) is asked once per VM.
        `AgentUnreachableError`: no answer for the whole call (any of them
        may have been deleted)."""
        items = self._batch("/api/v1/vm-deletions", {"names": list(names)}, len(names), "deletes")
        if items is None:
            return [_refused_or(partial(self.delete, name)) for name in names]
        return [_deletion(item) for item in items]

    def _batch(self, path: str, body: dict[str, Any], count: int, what: str) -> list[Any] | None:
        """The items of a batch route's answer, one for each of the `count`
        VMs sent; None when the agent has no such route (an older one)."""
        try:
            answer = self._call("POST", path, body)
        except AgentRefusedError as error:
            if error.status not in (404, 405):
                raise
            return None
        items = answer.get("vms")
        if not isinstance(items, list) or len(items) != count:
            raise AgentUnreachableError(f"the agent's answer to a batch of {what} lists other VMs", sent=True)
        return items

    def act(self, name: str, action: str) -> dict[str, Any]:
        """start, shutdown, suspend or resume, with `action_timeout_s`."""
        return self._call("POST", f"/api/v1/vms/{name}/{action}", timeout_s=self._action_timeout_s)

    def prepare_migration(self, vm: dict[str, Any], source: str, seed: bytes | None = None) -> dict[str, Any]:
        """On the target: reserve `vm` (the source agent's view of it) as
        `incoming`, with its cloud-init `seed` (`seed`) when it has one; its
        answer has the target's `cpus` and the URIs the source's send needs."""
        body: dict[str, Any] = {"vm": vm, "source": source}
        if seed is not None:
            body["seed"] = base64.b64encode(seed).decode()
        return self._call("POST", "/api/v1/migrations", body)

    def seed(self, name: str) -> bytes | None:
        """On the source: VM `name`'s cloud-init seed, None when it has none
        (or the agent is older than the route: its VMs migrate as before)."""
        try:
            return self._bytes(f"/api/v1/vms/{name}/seed")
        except AgentRefusedError as error:
            if error.code in ("not found", "method not allowed"):
                return None
            raise

    def send_migration(self, name: str, target: str, prepared: dict[str, Any]) -> dict[str, Any]:
        """On the source: migrate `name` live to `target` as `prepared` (the
        target's answer to `prepare_migration`) says; blocks until done."""
        body = {
            "target": target,
            "cpus": prepared.get("cpus") or [],
            "libvirt_uri": prepared.get("libvirt_uri"),
            "migrate_uri": prepared.get("migrate_uri"),
        }
        return self._call("POST", f"/api/v1/vms/{name}/migrate", body, timeout_s=MIGRATION_TIMEOUT_S)

    def commit_migration(self, name: str) -> dict[str, Any]:
        """On the target: the VM arrived; it is running there from now on."""
        return self._call("POST", f"/api/v1/migrations/{name}/commit")

    def abort_migration(self, name: str) -> None:
        """On the target: drop what `prepare_migration` reserved (idempotent)."""
        self._call("DELETE", f"/api/v1/migrations/{name}")

    def console_url(self, name: str, mode: str) -> str:
        """The agent's console WebSocket of VM `name` (ws:// or wss:// as its API)."""
        scheme, rest = self.address.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/api/v1/vms/{name}/console?mode={mode}"

    def websocket_options(self) -> dict[str, Any]:
        """What a WebSocket client needs to reach this agent as the HTTP client
        does: the agent token, and the same check of an HTTPS agent's certificate."""
        options: dict[str, Any] = {"additional_headers": {"Authorization": f"Bearer {self._token}"}}
        if self.address.startswith("https://"):
            if isinstance(self._verify, ssl.SSLContext):
                options["ssl"] = self._verify
            else:
                context = ssl.create_default_context()
                if not self._verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                options["ssl"] = context
        return options

    def console_log(self, name: str, limit: int) -> bytes:
        """The tail of VM `name`'s console log (AgentRefusedError with the
        agent's status for a refusal)."""
        return self._bytes(f"/api/v1/vms/{name}/console/log", {"bytes": limit})

    def _bytes(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        """A GET answered with bytes; a refusal raised as AgentRefusedError with its status."""
        status, data = self._send("GET", f"{path}?{urlencode(params)}" if params else path)
        if status >= 400:
            raise _refusal(status, data) or AgentRefusedError("refused", _text(data), status)
        return data

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        status, data = self._send(method, path, body, timeout_s)
        if status >= 400:
            refusal = _refusal(status, data)
            if refusal is None and status >= 500:
                raise AgentUnreachableError(f"the agent failed: {status}", sent=True)
            raise refusal or AgentRefusedError("refused", _text(data), status)
        if status == 204 or not data:
            return {}
        try:
            result = json.loads(data)
        except ValueError as error:
            raise AgentUnreachableError(
                f"the agent's answer is not JSON: {_text(data)}", sent=True
            ) from error
        return result if isinstance(result, dict) else {"result": result}

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        """The agent's status and body; AgentUnreachableError when there is
        none (`sent`: False when no connection was made, TLS's included)."""
        if self._pool is None:
            raise AgentUnreachableError(f"cannot reach the agent: {self._unusable}", sent=False)
        timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s) if timeout_s is not None else None
        encoded = None if body is None else _json(body)
        try:
            response = self._pool.urlopen(
                method, self._prefix + path, body=encoded,
                headers=self._headers if body is None else self._json_headers,
                retries=False, redirect=False, timeout=timeout or self._pool.timeout,
            )  # fmt: skip
        except (ConnectTimeoutError, SSLError) as error:  # refused, unresolved, timed out, TLS's handshake
            detail = tls_failure(error) or str(error)
            raise AgentUnreachableError(f"cannot reach the agent: {detail}", sent=False) from error
        except HTTPError as error:
            raise AgentUnreachableError(f"no answer from the agent: {error}", sent=True) from error
        return response.status, response.data


def address_problem(address: str) -> str | None:
    """Why the agent client cannot call `address` (no host, a port out of
    range or 0, a character no host name holds), or None. A registration giving
    such an address is refused (`api.Registration`); one stored before that
    check is "not usable" at each call."""
    try:
        parsed = parse_url(address.rstrip("/"))
    except LocationValueError as error:
        return str(error)
    if not parsed.host:
        return "No host specified."
    return "Port 0 is no port to call." if parsed.port == 0 else None


def _pool(address: str, timeout_s: float, verify: ssl.SSLContext | bool) -> urllib3.HTTPConnectionPool:
    """Kept-alive connections to the agent at `address` (http or https)."""
    options: dict[str, Any] = {
        "maxsize": POOL_SIZE, "timeout": urllib3.Timeout(connect=timeout_s, read=timeout_s), "retries": False,
    }  # fmt: skip
    if not address.startswith("https://"):
        return urllib3.connection_from_url(address, **options)
    if isinstance(verify, ssl.SSLContext):
        options["ssl_context"] = verify
    elif verify:
        options["ssl_context"] = ssl.create_default_context()
    else:
        options["cert_reqs"] = "CERT_NONE"
        options["assert_hostname"] = False
    pool = urllib3.connection_from_url(address, **options)
    pool.ConnectionCls = _HandshakeIsConnecting
    return pool


class _HandshakeIsConnecting(HTTPSConnection):
    """An HTTPS connection whose TLS handshake counts as connecting: one that
    times out or is reset raises what a refused connection raises (urllib3
    reports them as a read timeout or an aborted request, which would say the
    call may have reached the agent)."""

    def connect(self) -> None:
        try:
            super().connect()
        except (ssl.SSLError, ConnectTimeoutError):  # urllib3's own reading of them stands
            raise
        except TimeoutError as error:
            raise ConnectTimeoutError(self, f"the TLS handshake with {self.host} timed out") from error
        except OSError as error:
            raise NewConnectionError(self, f"the TLS handshake with {self.host} failed: {error}") from error


def _json(body: dict[str, Any]) -> bytes:
    """A request's JSON body, compact, as httpx sent it before."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _text(data: bytes) -> str:
    """The start of an answer that is not the agent's JSON error, for a message."""
    return data[:200].decode(errors="replace")


def _refusal(status: int, data: bytes) -> AgentRefusedError | None:
    """The agent's own JSON error (a definite answer, even with a 5xx: the
    agent undid the request), or None for anything else (a proxy, a crash)."""
    try:
        document = json.loads(data)
    except ValueError:
        return None
    if not isinstance(document, dict) or "error" not in document:
        return None
    refusal = refusal_from_json(document.get("refusal"))
    return AgentRefusedError(str(document["error"]), str(document.get("detail", "")), status, refusal)


def _create_body(request: VMRequest) -> dict[str, Any]:
    """A create's body as `pinfold.bodies.CreateVM` reads it (an empty image
    is left out, a diskless VM; SSH keys and user data only when there are
    some, so a create without them sends what it did)."""
    body: dict[str, Any] = {
        "name": request.name,
        "vcpus": request.vcpus,
        "memory_mib": request.memory_mib,
        "ratio": request.ratio,
        "owner": request.owner,
    }
    if request.image:
        body["image"] = request.image
    if request.nics:  # none: the agent's default network (and an agent from before NICs takes the body)
        body["nics"] = [_nic_body(nic) for nic in request.nics]
    if request.ssh_keys:
        body["ssh_keys"] = list(request.ssh_keys)
    if request.user_data:
        body["user_data"] = request.user_data
    return body


def _refused_or(call: Callable[[], T]) -> T | AgentRefusedError:
    try:
        return call()
    except AgentRefusedError as error:
        return error


def _deletion(item: Any) -> bool | AgentRefusedError:
    """One VM's answer in a batch of deletes: True (deleted), False (the
    agent had no such VM, as a lone delete's 404), or the agent's refusal."""
    refused = _item(item)
    if not isinstance(refused, AgentRefusedError):
        return True
    return False if refused.status == 404 else refused


def _item(item: Any) -> dict[str, Any] | AgentRefusedError:
    """One VM's answer in a batch: its view, or the agent's refusal of it
    (its JSON error, with the status the single create would have had)."""
    if not isinstance(item, dict):
        return AgentRefusedError("refused", f"an answer that is no JSON object: {str(item)[:200]}", 502)
    if "error" not in item:
        return item
    status = item.get("status")
    return AgentRefusedError(
        str(item["error"]), str(item.get("detail", "")), status if isinstance(status, int) else 400,
        refusal_from_json(item.get("refusal")),
    )  # fmt: skip


def _nic_body(nic: NIC) -> dict[str, str]:
    """A NIC as `pinfold.bodies.CreateNIC` reads it (what was not given is left out)."""
    fields = {"network": nic.network, "bridge": nic.bridge, "mac": nic.mac}
    return {key: value for key, value in fields.items() if value}
