"""The agent's HTTP API (FastAPI): JSON under /api/v1, SlackVM's GET routes
(in SlackVM's own bytes, see `pinfold.slackvm`), /healthz and Prometheus /metrics.

Routers only translate HTTP to `Agent` calls. Every mutating route needs the
agent token: `Authorization: Bearer <token>`, or `?token=` on SlackVM's routes
(SlackVM's client sends no header); an operator may open SlackVM's routes to
listed networks instead (off by default). Errors are JSON `{"error", "code", "detail"}`
with their code's status (`pinfold.model.errors`), a 4xx for bad input (FastAPI's own
404 and 405 too); bad input never reaches the agent. SlackVM's routes answer 200 in
SlackVM's shapes whatever happens (a missing token is still a 401).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pinfold import slackvm
from pinfold.agent.addresses import nic_document
from pinfold.agent.cloud_agent import CloudAgent
from pinfold.agent.console_api import add_console_routes
from pinfold.agent.migration_api import add_migration_routes
from pinfold.agent.monitor import Monitor
from pinfold.agent.service import Agent, AgentError, VMRequest
from pinfold.agent.store import StoredVM
from pinfold.bodies import CreateVM, CreateVMBatch, DeleteVMBatch
from pinfold.model.errors import error_body
from pinfold.model.lifecycle import POWER_ACTIONS
from pinfold.model.refusal import refusal_json
from pinfold.model.vm import MAX_VCPUS, MAX_VM_MEMORY_MIB
from pinfold.placement import level_key
from pinfold.web import ApiError, install_error_handlers, json_answer, open_to, token_check

__all__ = ["Service", "create_app"]

ACTIONS: tuple[str, ...] = POWER_ACTIONS
T = TypeVar("T")
R = TypeVar("R")
#: what the API serves: a host's agent (libvirt, sim), or a cloud's (driver openstack)
Service = Agent | CloudAgent


class ResizeVM(BaseModel):
    """A cloud VM's resize: a `flavor` by name or id, or the sizes the smallest
    flavor of the VM's level must fit (one left out: the VM's own)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    flavor: str = Field(default="", max_length=255)
    vcpus: int = Field(default=0, ge=0, le=MAX_VCPUS)
    memory_mib: int = Field(default=0, ge=0, le=MAX_VM_MEMORY_MIB)

    @model_validator(mode="after")
    def _something(self) -> ResizeVM:
        if not (self.flavor or self.vcpus or self.memory_mib):
            raise ValueError("name a flavor, or vcpus and/or memory_mib")
        return self


def _view(vm: StoredVM, pins: list[int], network: dict[str, Any] | None = None) -> dict[str, Any]:
    """A VM as the API shows it; `network` its `nics` and `addresses` (`_network`)."""
    return {
        "name": vm.spec.name,
        "vcpus": vm.spec.vcpus,
        "memory_mib": vm.spec.memory_mib,
        "ratio": float(vm.spec.ratio),
        "owner": vm.owner,
        "state": vm.state,
        "pinning": pins,
        "domain": vm.domain,
        # the base image its disk is made on ("": none): a migration's target makes its disk on it
        "image": vm.image,
        **(network or {"nics": [], "addresses": []}),
    }


def _network(agent: Service, name: str) -> dict[str, Any]:
    """A VM's NICs with the addresses learnt for each, and its flat list of
    IPv4 addresses (as before NICs were shown); a VM gone meanwhile has none."""
    try:
        nics = agent.nic_addresses(name)
        flat = agent.addresses(name)
    except AgentError:
        nics, flat = [], []
    return {"nics": [nic_document(nic, found) for nic, found in nics], "addresses": flat}


def _made(agent: Service, requests: list[VMRequest]) -> list[StoredVM | AgentError]:
    """A batch's creates: a host's agent makes them together (`create_many`),
    a cloud's one by one."""
    if isinstance(agent, Agent):
        return agent.create_many(requests)
    return _one_by_one(agent.create, requests)


def _deleted(agent: Service, names: list[str]) -> list[AgentError | None]:
    """A batch's deletes: a host's agent does them together (`delete_many`),
    a cloud's one by one."""
    if isinstance(agent, Agent):
        return agent.delete_many(names)
    return _one_by_one(agent.delete, names)


def _one_by_one(operation: Callable[[T], R], items: list[T]) -> list[R | AgentError]:
    """`operation` on each item in turn: its result, or the error it raised."""
    outcomes: list[R | AgentError] = []
    for item in items:
        try:
            outcomes.append(operation(item))
        except AgentError as error:
            outcomes.append(error)
    return outcomes


def _deletion(name: str, outcome: AgentError | None) -> dict[str, Any]:
    """One delete of a batch: its name and 204, or its error's JSON and status."""
    if outcome is None:
        return {"name": name, "status": 204}
    return {"name": name, **error_body(outcome.code, outcome.detail), "status": int(outcome.code.status)}


def _answer(made: StoredVM | AgentError, view: Callable[[StoredVM], dict[str, Any]]) -> dict[str, Any]:
    """One create of a batch: the VM's view, or its error's JSON and status."""
    if isinstance(made, StoredVM):
        return view(made)
    answer = {**error_body(made.code, made.detail), "status": int(made.code.status)}
    return answer if made.refusal is None else {**answer, "refusal": refusal_json(made.refusal)}


def create_app(
    agent: Service,
    token: str,
    monitor: Monitor | None = None,
    slackvm_open_networks: Sequence[str] = (),
) -> FastAPI:
    """`slackvm_open_networks` (CIDRs, empty by default): clients from these
    networks may use SlackVM's mutating routes without a token, so that
    SlackVM's own client and global scheduler, which send none, work as they are.
    A `CloudAgent` gets the resize routes and each VM's `server`, and no console."""
    app = FastAPI(title="pinfold agent", version="0.1.0")

    auth = Depends(token_check(token, what="agent token"))
    slackvm_auth = Depends(open_to(slackvm_open_networks, token_check(token, what="agent token", query=True)))

    def call(operation: Callable[[], T]) -> T:
        """The agent takes its lock itself, and lets it go while it waits (a
        graceful shutdown): holding it here would stop every other route."""
        try:
            return operation()
        except AgentError as error:  # a placement's refusal goes out as data too (its numbers)
            extra = None if error.refusal is None else {"refusal": refusal_json(error.refusal)}
            raise ApiError(error.code, error.detail, extra) from error

    def network(name: str) -> dict[str, Any]:
        found = _network(agent, name)
        return found | agent.server_view(name) if isinstance(agent, CloudAgent) else found

    def view(vm: StoredVM) -> dict[str, Any]:
        return _view(vm, agent.pinning(vm.spec.name), network(vm.spec.name))

    install_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/vms")
    def list_vms() -> list[dict[str, Any]]:
        now = agent.snapshot()  # the VMs and their pins read together
        return [_view(vm, now.pins[name], network(name)) for name, vm in now.vms.items()]

    # response_model=None on the busiest routes: validating a dict answer hops to a worker thread and back
    @app.post("/api/v1/vms", status_code=201, dependencies=[auth], response_model=None)
    def create_vm(body: CreateVM) -> JSONResponse:
        return json_answer(view(call(lambda: agent.create(body.to_request()))), 201)

    @app.post("/api/v1/vm-batches", dependencies=[auth], response_model=None)
    def create_vms(body: CreateVMBatch) -> JSONResponse:
        """Each VM created in turn, as `create_vm` would (all stored before
        their domains are made, and acknowledged once all are marked made:
        `Agent.create_many`); each one's view, or its error as the single
        create would answer it, with that answer's `status`."""
        made = _made(agent, [vm.to_request() for vm in body.vms])
        return json_answer({"vms": [_answer(one, view) for one in made]})

    @app.post("/api/v1/vm-deletions", dependencies=[auth], response_model=None)
    def delete_vms(body: DeleteVMBatch) -> dict[str, list[dict[str, Any]]]:
        """Each VM deleted in turn, as `delete_vm` would (all marked before
        their domains are removed, and forgotten together: `Agent.delete_many`);
        each one's `status` (204), or its error as the single delete would
        answer it, with that answer's `status`."""
        return {
            "vms": [
                _deletion(name, outcome)
                for name, outcome in zip(body.names, _deleted(agent, body.names), strict=True)
            ]
        }

    @app.get("/api/v1/vms/{name}")
    def get_vm(name: str) -> dict[str, Any]:
        now = agent.snapshot()
        vm = now.vms.get(name)
        if vm is None:  # pool members are not in `vms`: they are the agent's own
            raise ApiError("unknown vm", name)
        return _view(vm, now.pins[name], network(name))

    @app.delete("/api/v1/vms/{name}", status_code=204, dependencies=[auth], response_model=None)
    def delete_vm(name: str) -> None:
        call(lambda: agent.delete(name))

    if isinstance(agent, CloudAgent):
        add_resize_routes(app, agent, auth, call, view)
    else:  # a cloud's servers move by Nova's own means, not pinfold's
        add_migration_routes(app, agent, auth, call, view)

    @app.post("/api/v1/vms/{name}/{action}", dependencies=[auth])
    def act(name: str, action: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise ApiError("invalid request", f"action must be one of {', '.join(ACTIONS)}")
        operation: Callable[[str], StoredVM] = getattr(agent, action)
        return view(call(lambda: operation(name)))

    if isinstance(agent, Agent):
        add_console_routes(app, agent, token)

    @app.get("/api/v1/host")
    def host() -> dict[str, Any]:
        now = agent.snapshot()
        return {
            "cpus": {"usable": list(now.usable_cpus), "host_count": now.host_count},
            "memory_mib": {"usable": now.memory_usable_mib, "allocated": now.memory_allocated_mib},
            "vnodes": {level_key(r): cpus for r, cpus in now.vnodes.items()},
            "status": now.status,
            "pools": now.pools,
            "unknown_domains": now.unknown_domains,
            # VMs the hypervisor would not re-pin: no cold create is accepted until they are
            "stale_pins": now.stale_pins,
            # the hypervisor's networks; `owned`: the agent made it (own_network), `default`: VMs' default
            "networks": agent.networks(),
            "usage": monitor.latest.to_dict() if monitor is not None and monitor.latest is not None else None,
            # how old `usage` is and why sampling fails, if it does: never stale data as fresh
            "monitor": monitor.health() if monitor is not None else None,
            # a cloud agent's capacity per level, and where it comes from (Placement or the quota)
            **({"cloud": agent.cloud_view()} if isinstance(agent, CloudAgent) else {}),
        }

    # -- SlackVM's local scheduler routes, in SlackVM's bytes (pinfold.slackvm) --------

    def slackvm_deploy_vm(asked: slackvm.Deploy) -> str | None:
        request = VMRequest(asked.name, asked.vcpus, asked.memory_mib, asked.ratio, image=asked.image)
        try:
            agent.create(request)
        except AgentError as error:
            return slackvm.reason_for(error.code)
        return None

    def slackvm_remove_vm(name: str) -> str | None:
        try:
            agent.delete(name)
        except AgentError as error:
            return slackvm.DOES_NOT_EXIST if error.code == "unknown vm" else slackvm.reason_for(error.code)
        return None

    def slackvm_score(asked: slackvm.Progress) -> float:
        return agent.progress(asked.vcpus, asked.memory_mib, asked.ratio)

    @app.get("/", include_in_schema=False)
    def slackvm_home() -> Response:
        return slackvm.as_text(slackvm.HOME)

    slackvm.add_deploy_and_remove(app, slackvm_auth, slackvm_deploy_vm, slackvm_remove_vm)

    @app.get("/progress")
    def slackvm_progress(request: Request) -> Response:
        """SlackVM's `/progress?cpu&mem&oc`: the progress score a VM would have here."""
        return slackvm.answer_progress(request, slackvm_score)

    @app.get("/status")
    def slackvm_status() -> Response:
        return slackvm.as_json(agent.status())

    @app.get("/listvm")
    def slackvm_listvm() -> Response:
        """The VMs' names, in the order they were created (the store's order)."""
        return slackvm.as_json([vm.spec.name for vm in agent.user_vms()])

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        registry = CollectorRegistry()
        now = agent.snapshot()
        Gauge("pinfold_vms", "VMs on this host", registry=registry).set(now.vm_count)
        Gauge("pinfold_free_cpus", "CPUs in no vNode", registry=registry).set(now.free_cpus)
        free = Gauge("pinfold_free_memory_mib", "MiB of the pool not allocated", registry=registry)
        free.set(now.memory_free_mib)
        size = Gauge("pinfold_vnode_cpus", "CPUs in each vNode", ["level"], registry=registry)
        for ratio, cpus in now.vnodes.items():
            size.labels(level_key(ratio)).set(len(cpus))
        latest = monitor.latest if monitor is not None else None
        if latest is not None:
            Gauge("pinfold_host_cpu_busy", "Busy share of the host CPUs", registry=registry).set(
                latest.host_cpu
            )
            used = Gauge("pinfold_vnode_used_cores", "Cores each vNode uses", ["level"], registry=registry)
            for level, values in latest.vnodes.items():
                used.labels(level).set(values["used_cores"])
            gpu = Gauge("pinfold_gpus", "GPUs seen (no GPU: 0, not 0% busy)", registry=registry)
            gpu.set(len(latest.gpus.gpus))
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    return app


def add_resize_routes(
    app: FastAPI,
    agent: CloudAgent,
    auth: Any,
    call: Callable[[Callable[[], StoredVM]], StoredVM],
    view: Callable[[StoredVM], dict[str, Any]],
) -> None:
    """`POST /api/v1/vms/{name}/resize` (Nova's resize; the server waits in
    VERIFY_RESIZE), then `.../confirm_resize` or `.../revert_resize`."""

    @app.post("/api/v1/vms/{name}/resize", dependencies=[auth])
    def resize(name: str, body: ResizeVM) -> dict[str, Any]:
        return view(call(lambda: agent.resize(name, body.vcpus, body.memory_mib, body.flavor)))

    @app.post("/api/v1/vms/{name}/confirm_resize", dependencies=[auth])
    def confirm_resize(name: str) -> dict[str, Any]:
        return view(call(lambda: agent.confirm_resize(name)))

    @app.post("/api/v1/vms/{name}/revert_resize", dependencies=[auth])
    def revert_resize(name: str) -> dict[str, Any]:
        return view(call(lambda: agent.revert_resize(name)))
