"""The controller's HTTP API (FastAPI): JSON under /api/v1, SlackVM's global
scheduler routes (in SlackVM's own bytes, see `pinfold.slackvm`), /healthz and
Prometheus /metrics.

Two tokens and a credential per host: the admin token for people and their
tools (every route on VMs and hosts, reads too: the directory says what runs
where); the cluster's agent token, an enrolment token, which lets a new host
register once and get its own credential; and that host credential, which
alone lets the host send heartbeats and register again. SlackVM's routes take the admin token too,
or none from the networks an operator opened to SlackVM's token-less tools.
Open to all: /healthz, /metrics (counts only, for scrapers; the VMs'
addresses too with the admin token), the OpenAPI
document and the dashboard's files (its login form asks for the token).
Routers only translate HTTP to `Controller` calls; errors are JSON
`{"error", "code", "detail"}` with their code's status (`pinfold.model.errors`), a 4xx
for anything a client can get wrong; SlackVM's routes answer 200 in SlackVM's shapes
(a missing token is still a 401).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.concurrency import run_in_threadpool

from pinfold import bodies, slackvm
from pinfold.controller.agents import address_problem
from pinfold.controller.console_proxy import add_console_routes
from pinfold.controller.consolidation import (
    Consolidator,
    DrainRefusedError,
    drain_plan,
    drain_with_migrations,
)
from pinfold.controller.credentials import Enrolment, HostCredential, Proof, digest, new_credential
from pinfold.controller.models import HOST_ID_MAX
from pinfold.controller.refusals import refusal_json
from pinfold.controller.service import (
    ACTIONS,
    Controller,
    ControllerError,
    HostView,
    MoveChoice,
    NoHostError,
    Placed,
)
from pinfold.controller.store import EventRecord, GroupRecord, HostRecord, MigrationRecord, VMRecord
from pinfold.model import lifecycle
from pinfold.model.errors import error_body
from pinfold.model.vm import (
    BRIDGE_PATTERN,
    MAC_PATTERN,
    MAX_BULK,
    MAX_NAME_LENGTH,
    MAX_NIC_ADDRESSES,
    MAX_NICS,
    NAME_PATTERN,
    NETWORK_PATTERN,
    VMRequest,
)
from pinfold.placement import POLICIES
from pinfold.placement.consolidation import Plan
from pinfold.serving import ExtraHeaders
from pinfold.web import SINGLE, ApiError, bearer, install_error_handlers, json_answer, open_to, token_check

__all__ = ["create_app"]

HOST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: Upper bounds of what an agent may say about its host (docs/controller.md), far above
#: any real machine, so that no registration or heartbeat holds absurd numbers or lists:
#: CPUs per host (Linux's own NR_CPUS limit), memory (4 PiB), NUMA nodes, a CPU's
#: frequency (100 GHz, in kHz), user VMs per host, and vNode levels per host.
MAX_CPUS = 8192
MAX_MEMORY_MIB = 2**32
MAX_NUMA_NODES = 1024
MAX_FREQ_KHZ = 10**8
MAX_VMS_PER_HOST = 16384
MAX_LEVELS = 1024
#: a VM name (as the database holds it), a VM state, a level key ("2.0"), an id of a cache
NAME_MAX = 255
STATE_MAX = 32
LEVEL_MAX = 32
CACHE_ID_MAX = 2**31 - 1
#: the dashboard's files, served as they are (no CDN, no build step)
DASHBOARD = Path(__file__).parent / "dashboard"
#: the dashboard's pages and files: its own scripts and styles only (no inline ones: the page
#: has none, and its script sets styles through the DOM), no framing (clickjacking), no sniffing
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
T = TypeVar("T")


#: JSON numbers are taken as they are: `"1"` or `true` is no count (strict mode)
STRICT = ConfigDict(strict=True)
CpuId = Annotated[int, Field(ge=0, lt=MAX_CPUS)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Level = Annotated[str, Field(min_length=1, max_length=LEVEL_MAX)]
VMName = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
CPUs = Annotated[list[CpuId], Field(max_length=MAX_CPUS)]


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]


class CreateVM(bodies.CreateVM):
    # the shared body, the policy to place it by and the group it joins (no docstring: it would
    # enter the OpenAPI schema)
    policy: str | None = Field(default=None, description=f"one of {', '.join(POLICIES)}")
    group: Name | None = Field(default=None, description="a VM group's name (POST /api/v1/groups)")


class CreateGroup(BaseModel):
    # a VM group, as Nova's server groups (docs/controller.md, "VM groups")
    model_config = STRICT
    name: Name
    policy: Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


class BulkCreateVM(CreateVM):
    # a bulk create: the create's fields, and `count` VMs named by the pattern `name` ({n} from `start`),
    # or one VM per name of `names`; `mode` says what happens when some do not fit (docs/controller.md)
    name: str = Field(default="", max_length=MAX_NAME_LENGTH, pattern=r"^[A-Za-z0-9_.{}-]*$")
    count: int | None = Field(default=None, ge=1, le=MAX_BULK)
    start: int = Field(default=0, ge=0, le=10**9)
    names: list[Name] | None = Field(default=None, min_length=1, max_length=MAX_BULK)
    mode: Literal["best-effort", "all-or-nothing"] = "best-effort"

    @model_validator(mode="after")
    def _one_way_to_name(self) -> BulkCreateVM:
        """Either a pattern and a count or a list of distinct names, each a valid VM name."""
        if (self.count is None) == (self.names is None):
            raise ValueError("give either count (with a name pattern) or names, not both")
        if self.names is not None:
            if self.name or "start" in self.model_fields_set:
                raise ValueError("name and start: not with names (each VM's name is in names)")
            if len(set(self.names)) != len(self.names):
                raise ValueError(f"names: given twice: {', '.join(_twice(self.names))}")
            return self
        if self.name.count("{n}") != 1:  # other braces: refused with the names the pattern gives
            raise ValueError("name: a pattern with {n} once, the VM's number (e.g. ci-{n})")
        for name in (self.vm_names()[0], self.vm_names()[-1]):  # the longest numbers are at the end
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"name: the pattern gives {name!r}, not a valid VM name ({NAME_PATTERN})")
        return self

    def vm_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [self.name.replace("{n}", str(n)) for n in range(self.start, self.start + (self.count or 0))]

    def to_requests(self) -> list[VMRequest]:
        one = self.to_request()
        return [replace(one, name=name) for name in self.vm_names()]


def _twice(names: Sequence[str]) -> list[str]:
    return sorted(name for name, times in Counter(names).items() if times > 1)


def _create_kind(body: Any) -> str:
    """A body with `count` or `names` is a bulk create, any other a single one."""
    if isinstance(body, dict):
        return "bulk" if "count" in body or "names" in body else "single"
    return "bulk" if isinstance(body, BulkCreateVM) else "single"


#: POST /api/v1/vms's body: one VM, or many ("single": a tag left out of error messages, see web.py)
CreateBody = Annotated[
    Annotated[CreateVM, Tag(SINGLE)] | Annotated[BulkCreateVM, Tag("bulk")], Discriminator(_create_kind)
]


class CPUEntry(BaseModel):
    """One CPU of SlackVM's topology document; other keys are dropped."""

    model_config = STRICT
    cpu_id: CpuId
    numa_node: int = Field(ge=0, lt=MAX_NUMA_NODES)
    sib_smt: CPUs = Field(default_factory=list)
    sib_cpu: CPUs = Field(default_factory=list)
    cache_level: dict[Annotated[str, Field(max_length=2)], Annotated[int, Field(ge=0, le=CACHE_ID_MAX)]] = (
        Field(max_length=8)
    )
    max_freq: int | None = Field(default=None, ge=0, le=MAX_FREQ_KHZ)


class CPUSet(BaseModel):
    model_config = STRICT
    numa_distances: dict[Annotated[str, Field(max_length=8)], list[Annotated[int, Field(ge=0, le=255)]]] = (
        Field(max_length=MAX_NUMA_NODES)
    )
    cpu_list: list[CPUEntry] = Field(min_length=1, max_length=MAX_CPUS)
    host_count: int = Field(ge=1, le=MAX_CPUS)
    #: SlackVM's CPU distance table: recomputed on reading, so never kept (O(CPUs²))
    distances: dict[str, Any] | None = Field(default=None, exclude=True)


class MemSet(BaseModel):
    model_config = STRICT
    total: int = Field(ge=1, le=MAX_MEMORY_MIB)
    allowed: int | None = Field(default=None, ge=1, le=MAX_MEMORY_MIB)


class TopologyBody(BaseModel):
    """SlackVM's topology document as an agent sends it, every number bounded;
    the document stored is what this model read (unknown keys dropped)."""

    model_config = STRICT
    cpuset: CPUSet
    memset: MemSet
    #: a cloud agent's placeholder (`--driver openstack`): the controller places no VM there
    cloud: Literal["openstack"] | None = None


class Registration(BaseModel):
    model_config = STRICT
    host_id: str = Field(min_length=1, max_length=HOST_ID_MAX, pattern=HOST_ID_PATTERN)
    address: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    #: the document, or `topology_digest`: its key (`slackvm_json.digest`), for a document
    #: the controller holds already (any host of the same model registered it)
    topology: TopologyBody | None = None
    topology_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    critical_size: int = Field(ge=0, le=MAX_CPUS)
    reserved_memory_mib: int = Field(ge=0, le=MAX_MEMORY_MIB)
    #: how often this agent sends heartbeats: the host is down after three missed
    heartbeat_period_s: float | None = Field(default=None, gt=0, le=86400)
    #: the agent's own API token, which the controller calls it with (an older
    #: agent sends none: it is then called with the enrolment token, as before)
    agent_token: str | None = Field(default=None, min_length=16, max_length=512)

    @field_validator("address")
    @classmethod
    def _callable(cls, address: str) -> str:
        """Refused here, not at each call of the controller's to the agent."""
        problem = address_problem(address)
        if problem is not None:
            raise ValueError(f"the controller cannot call this address: {problem}")
        return address

    @model_validator(mode="after")
    def _one_topology(self) -> Registration:
        if (self.topology is None) == (self.topology_digest is None):
            raise ValueError("give the topology or its topology_digest, not both or neither")
        return self


Body = TypeVar("Body", bound=BaseModel)


def parsed_body(model: type[Body], raw: bytes) -> Body:
    """A JSON body read by pydantic's own parser in one pass
    (`model_validate_json`): FastAPI's way, `json.loads` then the model, took
    most of a registration's CPU on the 157 KB document of a large server.
    Refused as FastAPI refuses a body (422)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None


async def registration_body(request: Request) -> Registration:
    """A registration's body (`parsed_body`), after the proof is checked."""
    return parsed_body(Registration, await request.body())


#: after the proof in `register`'s parameters: FastAPI resolves them in order
REGISTRATION = Depends(registration_body)


class VNodeUsage(BaseModel):
    """A vNode's use in a heartbeat's monitor sample (the history plots `used_cores`)."""

    model_config = ConfigDict(extra="allow", strict=True)
    used_cores: float = Field(default=0.0, ge=0, le=MAX_CPUS, allow_inf_nan=False)


class Usage(BaseModel):
    """A heartbeat's monitor sample: the parts the controller reads are checked
    (each CPU's busy share, for the CPU map; each vNode's cores, for the
    history); the rest is kept as the agent sent it, for the dashboard."""

    model_config = ConfigDict(extra="allow", strict=True)
    cpu: dict[Level, Share] = Field(default_factory=dict, max_length=MAX_CPUS)
    vnodes: dict[Level, VNodeUsage] = Field(default_factory=dict, max_length=MAX_LEVELS)


#: an IPv6 address's longest text, without a zone (the agent drops link-local ones)
ADDRESS_MAX = 45


def _ip_address(text: str) -> str:
    """An IPv4 or IPv6 address, as `ipaddress` writes it."""
    return str(ipaddress.ip_address(text))


Address = Annotated[str, Field(max_length=ADDRESS_MAX), AfterValidator(_ip_address)]


class ReportedNIC(BaseModel):
    """A VM's NIC as its agent has it: the MAC it chose and the addresses it learnt."""

    model_config = STRICT
    network: str | None = Field(default=None, max_length=63, pattern=NETWORK_PATTERN)
    bridge: str | None = Field(default=None, max_length=15, pattern=BRIDGE_PATTERN)
    mac: str = Field(max_length=17, pattern=MAC_PATTERN)
    addresses: list[Address] = Field(default_factory=list, max_length=MAX_NIC_ADDRESSES)


class Heartbeat(BaseModel):
    """Checked whole before anything of it is stored: a malformed one is a 422."""

    model_config = STRICT
    #: SlackVM's status document (shown as it is): its top level only is bounded here
    status: dict[Level, Any] | None = Field(default=None, max_length=16)
    vms: dict[VMName, Annotated[str, Field(max_length=STATE_MAX)]] = Field(
        default_factory=dict, max_length=MAX_VMS_PER_HOST
    )
    pins: dict[VMName, CPUs] = Field(default_factory=dict, max_length=MAX_VMS_PER_HOST)
    vnodes: dict[Level, CPUs] = Field(default_factory=dict, max_length=MAX_LEVELS)
    usage: Usage | None = None
    #: the VMs' NICs with their addresses (None: an older agent, which sends none)
    nics: dict[VMName, Annotated[list[ReportedNIC], Field(max_length=MAX_NICS)]] | None = Field(
        default=None, max_length=MAX_VMS_PER_HOST
    )


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with each `$ref` replaced by what it names: a
    schema put in an OpenAPI document by hand cannot point into its own
    `$defs` (refs there resolve from the document's root). None of the
    models given here is recursive."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                named = definitions[node["$ref"].rsplit("/", 1)[-1]]
                return resolve({**named, **{k: v for k, v in node.items() if k != "$ref"}})
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


#: the heartbeat route reads its body itself (`parsed_body`): its schema, for the OpenAPI document
HEARTBEAT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inlined_schema(Heartbeat)}},
    }
}


class MigrateVM(BaseModel):
    """`to`: the host to move to; null (or no body): the scheduler picks one."""

    model_config = ConfigDict(strict=True, extra="forbid")
    to: str | None = Field(default=None, min_length=1, max_length=HOST_ID_MAX, pattern=HOST_ID_PATTERN)


class DrainHost(BaseModel):
    """`migrate`: also move every VM off the host, live (else only no new VMs land there)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    migrate: bool = False


#: how far back GET /api/v1/migrations looks by default (those in flight are always listed)
RECENT_MIGRATIONS_S = 3600.0


def migration_view(record: MigrationRecord, now: float) -> dict[str, Any]:
    """A migration, with `elapsed_s`: its `seconds` when it ended, the time so far while in flight."""
    elapsed = record.seconds if record.seconds is not None else max(0.0, now - record.started)
    return {**record.to_dict(), "elapsed_s": elapsed}


def choice_view(choice: MoveChoice) -> dict[str, Any]:
    return {
        "vm": choice.vm,
        "source": choice.source,
        "target": choice.target,
        "ranking": list(choice.ranking),
        "explanation": choice.explanation,
        "hosts": dict(choice.hosts),
    }


def plan_view(plan: Plan) -> dict[str, Any]:
    """A consolidation or drain plan: its moves in order, each host's verdict, and the text."""
    return {
        "migrations": [
            {"vm": m.vm, "source": m.source, "target": m.target, "cpus_added": m.cpus_added}
            for m in plan.migrations
        ],
        "verdicts": [
            {"host": v.host, "verdict": v.verdict.value, "vms": v.vms, "load": v.load, "detail": v.detail}
            for v in plan.verdicts
        ],
        "emptied": list(plan.emptied),
        "explanation": plan.explain(),
    }


def vm_view(record: VMRecord, host: HostView | None = None, group: str | None = None) -> dict[str, Any]:
    """The VM as the directory has it, with its host's state, the pinning
    its agent last reported (the CPUs of its vNode) and its group (None: none)."""
    pins = ((host.record.heartbeat or {}).get("pins") or {}) if host is not None else {}
    return {
        "name": record.name,
        "host": record.host_id,
        "host_state": host.state if host is not None else None,
        "pinning": pins.get(record.name, []),
        "vcpus": record.vcpus,
        "memory_mib": record.memory_mib,
        "ratio": record.ratio,
        "owner": record.owner,
        "image": record.image,
        "state": record.state.value,
        "detail": record.detail,
        "target": record.target_host_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "group": group,
        **network_view(record),
    }


def network_view(record: VMRecord) -> dict[str, Any]:
    """A VM's `nics` as its agent last reported them (the MACs it chose, the
    addresses it learnt), else as its create asked for them (no address yet);
    and `addresses`, its IPv4 addresses over every NIC (as the agent's flat list)."""
    if record.reported_nics is None:
        asked: list[dict[str, Any]] = [
            {"network": n.network or None, "bridge": n.bridge or None, "mac": n.mac or None, "addresses": []}
            for n in record.nics
        ]
        return {"nics": asked, "addresses": []}
    nics = [nic.to_dict() for nic in record.reported_nics]
    flat = [a for nic in record.reported_nics for a in nic.addresses if ":" not in a]
    return {"nics": nics, "addresses": list(dict.fromkeys(flat))}


#: a bulk create's VM: made by it, there before it (the same create again), refused, or
#: placed then dropped (all or nothing: another did not fit)
BULK_RESULTS = ("created", "existing", "refused", "dropped")


def bulk_entry(
    name: str,
    outcome: Placed | ControllerError | None,
    hosts: Mapping[str, HostView],
    group: str | None = None,
) -> dict[str, Any]:
    """One VM of a bulk create's answer: its view (with the pinning its agent
    gave) and `result`, or its refusal as a single create's error body has it."""
    if outcome is None:
        return {"name": name, "result": "dropped"}
    if isinstance(outcome, ControllerError):
        return {
            "name": name,
            "result": "refused",
            **error_body(outcome.code, outcome.detail),
            **refusal_extra(outcome),
        }
    view = vm_view(outcome.record, hosts.get(outcome.record.host_id or ""), group)
    if outcome.pinning:
        view["pinning"] = list(outcome.pinning)
    return {**view, "result": "created" if outcome.created else "existing"}


def refusal_extra(error: ControllerError) -> dict[str, Any]:
    """A "no host" error's hosts, refusals (as data) and summary; nothing for another error."""
    if not isinstance(error, NoHostError):
        return {}
    refusals = {host: refusal_json(refusal) for host, refusal in sorted(error.refusals.items())}
    return {"hosts": error.hosts, "refusals": refusals, "summary": error.summary}


def group_view(group: GroupRecord) -> dict[str, Any]:
    return {
        "name": group.name,
        "policy": group.policy.value,
        "created_at": group.created_at,
        "members": list(group.members),
    }


def host_view(view: HostView, vms: Sequence[VMRecord] = ()) -> dict[str, Any]:
    record = view.record
    beat = record.heartbeat or {}
    reported = beat.get("vms") or {}
    return {
        "id": record.id,
        "address": record.address,
        "state": view.state,
        "draining": record.draining,
        "registered_at": record.registered_at,
        "last_heartbeat": record.last_heartbeat,
        "heartbeat_period_s": record.heartbeat_period_s,
        "cpus": _cpus(record),
        "cloud": record.topology.get("cloud"),
        "critical_size": record.critical_size,
        "reserved_memory_mib": record.reserved_memory_mib,
        "status": beat.get("status"),
        "usage": beat.get("usage"),
        "vms": [vm.name for vm in vms],
        "unmanaged_vms": sorted(set(reported) - {vm.name for vm in vms}),
    }


def _cpus(record: HostRecord) -> int:
    """A host's CPUs: its topology's; a cloud's, those of its levels as its last heartbeat said."""
    if not record.topology.get("cloud"):
        return len(record.topology.get("cpuset", {}).get("cpu_list", []))
    subset = (((record.heartbeat or {}).get("status") or {}).get("cpu") or {}).get("subset") or {}
    return sum(int(level.get("pcap", 0)) for level in subset.values() if isinstance(level, dict))


def cpu_map(view: HostView) -> dict[str, Any]:
    """One entry per usable CPU, laid out by socket, L3 and core (the group
    ids are the smallest CPU id of each group), with the level whose vNode
    holds it and its last measured use."""
    beat = view.record.heartbeat or {}
    owner = {cpu: level for level, cpus in (beat.get("vnodes") or {}).items() for cpu in cpus}
    busy = ((beat.get("usage") or {}).get("cpu")) or {}
    cpus = []
    for entry in view.record.topology.get("cpuset", {}).get("cpu_list", []):
        cpu = int(entry["cpu_id"])
        caches = entry.get("cache_level") or {}
        cpus.append(
            {
                "cpu": cpu,
                "socket": min([cpu, *map(int, entry.get("sib_cpu") or ())]),
                "l3": int(caches[max(caches, key=int)]) if caches else 0,
                "core": min([cpu, *map(int, entry.get("sib_smt") or ())]),
                "level": owner.get(cpu),
                "busy": float(busy.get(str(cpu), 0.0)),
            }
        )
    return {"host": view.record.id, "state": view.state, "cpus": sorted(cpus, key=lambda c: c["cpu"])}


def event_view(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": event.time,
        "kind": event.kind,
        "subject": event.subject,
        "detail": event.detail,
    }


def create_app(
    controller: Controller,
    admin_token: str,
    agent_token: str,
    slackvm_open_networks: Sequence[str] = (),
    consolidator: Consolidator | None = None,
) -> FastAPI:
    """`consolidator`: the consolidation policy whose plan GET
    /api/v1/consolidation/plan shows (default: one with the default settings)."""
    app = FastAPI(title="pinfold controller", version="0.1.0")
    policy = consolidator or Consolidator(controller)
    install_error_handlers(app)
    admin = Depends(token_check(admin_token, what="admin token"))
    slackvm_auth = Depends(
        open_to(slackvm_open_networks, token_check(admin_token, what="admin token", query=True))
    )
    registry = CollectorRegistry()
    latency = Histogram(
        "pinfold_create_seconds", "Time to create a VM through the controller", registry=registry
    )
    bulk_latency = Histogram(
        "pinfold_bulk_create_seconds", "Time to answer a bulk create, by step (check, reserve, agents, "
        "alone, undo; total: the whole)", ["phase"], registry=registry,
        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120),
    )  # fmt: skip

    def call(operation: Callable[[], T]) -> T:
        try:
            return operation()
        except NoHostError as error:
            raise ApiError(error.code, error.detail, refusal_extra(error)) from error
        except ControllerError as error:
            raise ApiError(error.code, error.detail) from error

    async def registration_proof(request: Request) -> tuple[Proof, str | None]:
        """What a registration proves itself with, checked before its body:
        the enrolment token (with the credential the host gets if it is new)
        or some host's credential (the store checks that it is this host's).
        A coroutine: the enrolment token is checked on the event loop (a sync
        dependency hopped to a worker thread and back); a credential is looked
        up in a worker thread, as the database is."""
        presented = bearer(request)
        if presented and hmac.compare_digest(presented.encode(), agent_token.encode()):
            credential, fresh = new_credential()
            return Enrolment(fresh), credential
        return await run_in_threadpool(host_proof, presented)

    def host_proof(presented: str) -> tuple[Proof, str | None]:
        """A registration's proof that is not the enrolment token: a host's credential."""
        presented_digest = digest(presented)
        if presented and controller.store.revoked(presented_digest):
            raise ApiError("credential revoked", "this host was removed (pinfold host remove)")
        if not presented or controller.store.holder(presented_digest) is None:
            raise ApiError("unauthorized", "the enrolment token or a host's own credential is required")
        return HostCredential(presented_digest), None

    enrolling = Depends(registration_proof)  # a default value: the closure is not in the module's names

    def host_views() -> dict[str, HostView]:
        return {view.record.id: view for view in controller.hosts()}

    def one_host(host_id: str | None, heartbeat: bool = True) -> HostView | None:
        """One VM's host, read alone: every host's record (each with its last
        heartbeat's JSON) was most of a create's time with 20 hosts. Not
        `heartbeat`: without its last heartbeat (the VM's pinning is known)."""
        if host_id is None:
            return None
        try:
            return controller.host(host_id, heartbeat)
        except ControllerError:
            return None  # removed since the VM was read

    def timed_create(request: VMRequest, policy: str | None, group: str | None = None) -> Placed:
        started = time.perf_counter()
        placed = call(lambda: controller.create(request, policy, group))
        latency.observe(time.perf_counter() - started)
        return placed

    def create_many(body: BulkCreateVM, response: Response) -> dict[str, Any]:
        """A bulk create's answer: 201 when all were placed (200: all were there
        already), 207 when some were refused (best-effort), each VM's outcome in
        `vms`; all-or-nothing with some refused: the error, none kept."""
        started = time.perf_counter()
        bulk = call(
            lambda: controller.create_many(
                body.to_requests(), body.policy, body.mode == "all-or-nothing", body.group
            )
        )
        phases = {**bulk.phases, "total": time.perf_counter() - started}
        for name, seconds in phases.items():
            bulk_latency.labels(name).observe(seconds)
        # each step's time, as the Server-Timing header says it (milliseconds): for benchmarks and browsers
        response.headers["Server-Timing"] = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in phases.items())
        views = host_views()
        entries = [
            bulk_entry(name, outcome, views, body.group)
            for name, outcome in zip(body.vm_names(), bulk.outcomes, strict=True)
        ]
        refused = [entry for entry in entries if entry["result"] == "refused"]
        counts = {result: sum(1 for e in entries if e["result"] == result) for result in BULK_RESULTS}
        answer = {"mode": body.mode, "requested": len(entries), **counts}
        if bulk.undone:
            first = refused[0]
            names = ", ".join(entry["name"] for entry in refused[:5]) + (", ..." if len(refused) > 5 else "")
            detail = f"{len(refused)} of {len(entries)} VMs refused, so none was kept ({body.mode}): {names}"
            raise ApiError(first["error"], detail, {**answer, "created": 0, "vms": refused})
        response.status_code = 207 if refused else 201 if counts["created"] else 200
        return {**answer, "vms": entries}

    def create(body: CreateVM) -> JSONResponse:
        placed = timed_create(body.to_request(), body.policy, body.group)
        # the agent's answer has the pinning: the heartbeat's JSON (pins of every VM) is not needed
        host = controller.view(placed.host) if placed.host is not None and placed.pinning else None
        view = vm_view(placed.record, host or one_host(placed.record.host_id, not placed.pinning), body.group)
        if placed.pinning:
            view["pinning"] = list(placed.pinning)
        return json_answer(view, 201 if placed.created else 200)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -- hosts -------------------------------------------------------------------

    @app.post("/api/v1/hosts", response_model=None)
    def register(
        proven: tuple[Proof, str | None] = enrolling, body: Registration = REGISTRATION
    ) -> JSONResponse:
        """Enrol a new host (the answer holds its `credential`, given once) or
        register an enrolled one again (with its credential)."""
        proof, credential = proven
        topology = body.topology
        view, vms = call(
            lambda: controller.registration(
                body.host_id,
                body.address,
                topology.model_dump(exclude_unset=True)
                if topology is not None
                else controller.topology(str(body.topology_digest)),
                body.critical_size,
                body.reserved_memory_mib,
                body.heartbeat_period_s,
                proof=proof,
                agent_token=body.agent_token,
            )
        )
        answer = host_view(view, vms)
        if credential is not None:
            answer["credential"] = credential
        return json_answer(answer)  # json.dumps alone: 10,000 hosts register in a burst

    # response_model=None on the busiest routes: validating a dict answer hops to a worker thread and back
    @app.post("/api/v1/hosts/{host_id}/heartbeat", response_model=None, openapi_extra=HEARTBEAT_BODY)
    async def heartbeat(host_id: str, request: Request) -> dict[str, str]:
        """Every host's agent sends one each period (10,000 hosts: 1,000 a
        second): one hop to a worker thread for the whole beat. The credential
        check as a dependency of its own took a second hop (and FastAPI's
        `json.loads` then the model read the body twice over)."""
        return await run_in_threadpool(beat, host_id, bearer(request), await request.body())

    def beat(host_id: str, presented: str, raw: bytes) -> dict[str, str]:
        """A heartbeat's work: the host's own credential first (as a dependency
        checked it: a stranger learns nothing of the body's rules), then the body."""
        call(lambda: controller.authenticate(host_id, presented))
        body = parsed_body(Heartbeat, raw)
        if not controller.heartbeat(host_id, body.model_dump()):
            raise ApiError("unknown host", f"{host_id}: register first")
        return {"status": "ok"}

    @app.get("/api/v1/hosts", dependencies=[admin])
    def list_hosts() -> list[dict[str, Any]]:
        vms = controller.vms()
        return [
            host_view(view, [vm for vm in vms if vm.host_id == view.record.id]) for view in controller.hosts()
        ]

    @app.get("/api/v1/hosts/{host_id}", dependencies=[admin])
    def get_host(host_id: str) -> dict[str, Any]:
        view = call(lambda: controller.host(host_id))
        return host_view(view, controller.vms(host_id))

    @app.get("/api/v1/hosts/{host_id}/cpus", dependencies=[admin])
    def host_cpus(host_id: str) -> dict[str, Any]:
        return cpu_map(call(lambda: controller.host(host_id)))

    @app.get("/api/v1/hosts/{host_id}/history", dependencies=[admin])
    def host_history(host_id: str, since: Annotated[float, Query(ge=0, le=1e12)] = 0.0) -> dict[str, Any]:
        """The host's samples of the last hour, with the controller's `now`:
        the plot's time axis ends there, whatever the browser's clock says."""
        call(lambda: controller.host(host_id))
        now = controller.clock()
        samples = controller.history.of(host_id, now, since)
        return {"now": now, "span_s": controller.history.span_s, "samples": [s.to_dict() for s in samples]}

    @app.get("/api/v1/whoami", dependencies=[admin])
    def whoami() -> dict[str, str]:
        """A token check for the dashboard's login form."""
        return {"role": "admin"}

    @app.delete("/api/v1/hosts/{host_id}", dependencies=[admin])
    def remove_host(host_id: str, force: bool = False) -> dict[str, Any]:
        """Remove a host and revoke its credential (refused while it has VMs,
        unless `force`: then they are forgotten, their agent not asked)."""
        forgotten = call(lambda: controller.remove_host(host_id, force))
        return {"removed": host_id, "forgotten_vms": [vm.name for vm in forgotten]}

    @app.post("/api/v1/hosts/{host_id}/drain", dependencies=[admin])
    def drain_host(host_id: str, body: DrainHost | None = None, explain: bool = False) -> dict[str, Any]:
        """No new VMs on the host; with `{"migrate": true}` every VM moves off
        it too, one by one (refused with the plan's explanation, nothing moved,
        when the other hosts cannot take them all); `?explain=true`: the plan only."""
        if explain:
            return {"host": host_id, **plan_view(call(lambda: drain_plan(controller, host_id)))}
        if body is None or not body.migrate:
            return host_action(host_id, "drain")
        done: list[MigrationRecord] = []
        now = controller.clock
        try:
            drain_with_migrations(controller, host_id, done.append)
        except DrainRefusedError as error:
            raise ApiError(error.code, error.detail, {"plan": plan_view(error.plan)}) from error
        except NoHostError as error:
            raise ApiError(
                error.code, error.detail, {**refusal_extra(error), "migrations": _views(done, now())}
            ) from error
        except ControllerError as error:
            raise ApiError(error.code, error.detail, {"migrations": _views(done, now())}) from error
        view = host_view(controller.host(host_id), controller.vms(host_id))
        return {**view, "migrations": _views(done, now())}

    @app.post("/api/v1/hosts/{host_id}/{action}", dependencies=[admin])
    def host_action(host_id: str, action: str) -> dict[str, Any]:
        if action not in ("drain", "undrain"):
            raise ApiError("invalid request", "action: drain or undrain")
        view = call(lambda: controller.drain(host_id, action == "drain"))
        return host_view(view, controller.vms(host_id))

    # -- VMs -----------------------------------------------------------------------

    @app.post("/api/v1/vms", status_code=201, dependencies=[admin], response_model=None)
    def create_vm(body: CreateBody, response: Response) -> dict[str, Any] | JSONResponse:
        """One VM, or many: with `count` and a `name` pattern, or `names` (docs/controller.md)."""
        if isinstance(body, BulkCreateVM):
            return create_many(body, response)
        return create(body)

    @app.get("/api/v1/vms", dependencies=[admin])
    def list_vms(host: Annotated[str | None, Query(max_length=HOST_ID_MAX)] = None) -> list[dict[str, Any]]:
        views = host_views()
        groups = {member: group.name for group in controller.groups() for member in group.members}
        return [vm_view(vm, views.get(vm.host_id or ""), groups.get(vm.name)) for vm in controller.vms(host)]

    @app.get("/api/v1/vms/{name}", dependencies=[admin], response_model=None)
    def get_vm(name: str) -> dict[str, Any]:
        record = call(lambda: controller.vm(name))
        return vm_view(record, one_host(record.host_id), controller.group_of(name))

    @app.delete("/api/v1/vms/{name}", dependencies=[admin], response_model=None)
    def delete_vm(name: str, response: Response) -> dict[str, Any] | None:
        left = call(lambda: controller.delete(name))
        if left is None:
            response.status_code = 204
            return None
        response.status_code = 202  # the agent did not answer: retried every period
        return vm_view(left, group=controller.group_of(name))

    @app.post("/api/v1/vms/{name}/migrate", dependencies=[admin])
    def migrate_vm(name: str, body: MigrateVM | None = None, explain: bool = False) -> dict[str, Any]:
        """Move a running VM live to `to`, or where the scheduler says; `?explain=true`:
        where it would go and why not elsewhere, nothing moved."""
        to = body.to if body is not None else None
        if explain:
            return choice_view(call(lambda: controller.move_choice(name, to)))
        migration = call(lambda: controller.migrate(name, to))
        record = call(lambda: controller.vm(name))
        return {
            "migration": migration_view(migration, controller.clock()),
            "vm": vm_view(record, one_host(record.host_id), controller.group_of(name)),
        }

    @app.get("/api/v1/migrations", dependencies=[admin])
    def list_migrations(
        since: Annotated[float | None, Query(ge=0, le=1e12)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The migrations in flight, and those started since `since` (default: the last hour)."""
        now = controller.clock()
        records = controller.migrations(now - RECENT_MIGRATIONS_S if since is None else since, limit)
        return {"now": now, "migrations": _views(records, now)}

    @app.get("/api/v1/consolidation/plan", dependencies=[admin])
    def consolidation_plan() -> dict[str, Any]:
        """What the consolidation policy would do now (a dry run, whether or not it is on)."""
        settings = policy.settings
        plan = call(policy.plan)
        return {
            "enabled": settings.enabled, "interval_s": settings.interval_s, "at_once": settings.at_once,
            "per_hour": settings.per_hour, "cooldown_s": settings.cooldown_s, **plan_view(plan),
        }  # fmt: skip

    @app.post("/api/v1/vms/{name}/{action}", dependencies=[admin])
    def vm_action(name: str, action: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise ApiError("invalid request", f"action: one of {', '.join(ACTIONS)}")
        record = call(lambda: controller.act(name, action))
        return vm_view(record, one_host(record.host_id), controller.group_of(name))

    add_console_routes(app, controller, admin_token)

    # -- VM groups -------------------------------------------------------------------

    @app.post("/api/v1/groups", status_code=201, dependencies=[admin])
    def create_group(body: CreateGroup, response: Response) -> dict[str, Any]:
        """A VM group (201); the same name and policy again gives it (200)."""
        group, made = call(lambda: controller.create_group(body.name, body.policy))
        response.status_code = 201 if made else 200
        return group_view(group)

    @app.get("/api/v1/groups", dependencies=[admin])
    def list_groups() -> list[dict[str, Any]]:
        return [group_view(group) for group in controller.groups()]

    @app.get("/api/v1/groups/{name}", dependencies=[admin])
    def get_group(name: str) -> dict[str, Any]:
        return group_view(call(lambda: controller.group(name)))

    @app.delete("/api/v1/groups/{name}", status_code=204, dependencies=[admin])
    def delete_group(name: str) -> None:
        """Refused (409 `group in use`) while the group has VMs."""
        call(lambda: controller.delete_group(name))

    @app.get("/api/v1/lifecycle", dependencies=[admin])
    def lifecycle_table() -> dict[str, list[str]]:
        """Every state's legal actions (the dashboard's buttons): the model's table."""
        return lifecycle.table()

    @app.get("/api/v1/events", dependencies=[admin])
    def events(
        after: Annotated[int, Query(ge=0, le=2**62)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        return [event_view(event) for event in controller.store.events(after, limit)]

    @app.get("/api/v1/status", dependencies=[admin])
    def status() -> dict[str, Any]:
        views = controller.hosts()
        vms = controller.vms()
        by_state: dict[str, int] = {}
        for vm in vms:
            by_state[vm.state.value] = by_state.get(vm.state.value, 0) + 1
        return {
            "hosts": {s: sum(1 for v in views if v.state == s) for s in ("up", "down", "draining")},
            "vms": {"total": len(vms), "by_state": by_state},
            "policy": controller.default_policy,
        }

    # -- SlackVM's global scheduler routes, in SlackVM's bytes (pinfold.slackvm) -------

    def slackvm_deploy_vm(asked: slackvm.Deploy) -> str | None:
        """A name already in the directory is refused, as SlackVM does (its
        local scheduler fails on a reused name), even for the same request."""
        request = VMRequest(asked.name, asked.vcpus, asked.memory_mib, asked.ratio, image=asked.image)
        try:
            placed = timed_create(request, None)
        except ApiError as error:
            return slackvm.NO_NODE if error.code == "no host" else slackvm.reason_for(error.code)
        return None if placed.created else "duplicate name"

    def slackvm_remove_vm(name: str) -> str | None:
        """Gone: success. Its agent did not answer: `deletion pending` (the VM
        is `deleting`, the controller retries every period, as for DELETE)."""
        try:
            left = call(lambda: controller.delete(name))
        except ApiError as error:
            return slackvm.UNREGISTERED if error.code == "unknown vm" else slackvm.reason_for(error.code)
        return None if left is None else "deletion pending"

    slackvm.add_deploy_and_remove(app, slackvm_auth, slackvm_deploy_vm, slackvm_remove_vm)

    @app.get("/status", dependencies=[slackvm_auth])
    def slackvm_status() -> Response:
        """Each host's address -> its SlackVM status, as its last heartbeat carried it."""
        hosts = controller.hosts()
        return slackvm.as_json(
            {view.record.address: (view.record.heartbeat or {}).get("status") for view in hosts}
        )

    @app.get("/metrics")
    def metrics(request: Request) -> PlainTextResponse:
        """Counts for anyone; with the admin token, also the VMs' addresses
        (`pinfold_vm_address_info`): names and addresses are not for anonymous scrapers."""
        gauges = CollectorRegistry()
        hosts = Gauge("pinfold_hosts", "Hosts by state", ["state"], registry=gauges)
        views = controller.hosts()
        for state in ("up", "down", "draining"):
            hosts.labels(state).set(sum(1 for v in views if v.state == state))
        vms = Gauge("pinfold_controller_vms", "VMs by state", ["state"], registry=gauges)
        info = Gauge(
            "pinfold_vm_address_info", "A VM's address, one series per NIC address (at most "
            f"{MAX_NICS} NICs x {MAX_NIC_ADDRESSES} addresses a VM)", ["vm", "host", "mac", "address"],
            registry=gauges,
        )  # fmt: skip
        given = bearer(request)
        as_admin = bool(given) and hmac.compare_digest(given.encode(), admin_token.encode())
        for vm in controller.vms():
            vms.labels(vm.state.value).inc()
            for nic in (vm.reported_nics or ()) if as_admin else ():
                for address in nic.addresses:
                    info.labels(vm.name, vm.host_id or "", nic.mac, address).set(1)
        text = generate_latest(gauges) + generate_latest(registry)
        return PlainTextResponse(text.decode(), media_type="text/plain; version=0.0.4")

    app.mount("/dashboard", StaticFiles(directory=DASHBOARD), name="dashboard")
    app.add_middleware(ExtraHeaders, headers=DASHBOARD_HEADERS, applies=_dashboard_path)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html")

    return app


def _views(records: Sequence[MigrationRecord], now: float) -> list[dict[str, Any]]:
    return [migration_view(record, now) for record in records]


def _dashboard_path(path: str) -> bool:
    return path == "/" or path.startswith("/dashboard/")
