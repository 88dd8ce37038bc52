"""The controller's core: the directory of hosts and VMs and the global scheduler.

A create, in order: idempotency by name (the same request again gets the same
VM back, also when both are sent at once: the later waits for the earlier to
end, then looks again, see `_await_creator`);
rank the `up`, not draining hosts with the placement core's policy
(`Scheduler`, a picture of the cluster); for each host in rank order, reserve
room in the database under the host's lock (`ControllerStore.reserve_many`
with one VM, checked by `feasibility.HostCheck.admit`: exact, so two requests
or two controllers cannot both take the last room), then ask
the host's agent; on a refusal, drop the reservation and try the next host.

The database is the only shared state, so a controller may die at any point:
a reservation whose agent call never finished is settled later, by the next
heartbeat of its host (the agent lists the VMs it has) or by the same request
sent again (`create` finishes a stale reservation instead of refusing it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

from pinfold.controller.agents import AgentClient, AgentError, AgentRefusedError, AgentUnreachableError
from pinfold.controller.coalescing import Coalescer
from pinfold.controller.credentials import Proof, digest, matches
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.history import History
from pinfold.controller.models import VMState
from pinfold.controller.refusals import summary
from pinfold.controller.scheduler import Scheduler
from pinfold.controller.settle import Action as SettleAction
from pinfold.controller.settle import Move, Stored, move_step, plan, vm_state
from pinfold.controller.store import (
    Admission,
    ControllerStore,
    DuplicateVMError,
    GroupExistsError,
    GroupInUseError,
    GroupRecord,
    Holding,
    HostAuthError,
    HostInUseError,
    HostLiveness,
    HostRecord,
    MigrationRecord,
    NewEvent,
    OnHost,
    RefusedError,
    ReportedNIC,
    SettledVM,
    StoreError,
    UnknownGroupError,
    UnknownHostError,
    UnknownVMError,
    VMRecord,
)
from pinfold.model.defaults import COALESCE_AT_MOST, DEFAULT_POLICY, HEARTBEAT_PERIOD_S, STALE_AFTER_S
from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import POWER_ACTIONS, Action, Refused, takes_actions, transition
from pinfold.model.vm import VMRequest, first_boot_problem, image_path_problem, same_first_boot
from pinfold.placement import (
    POLICIES,
    Decision,
    GroupPolicy,
    GroupRule,
    HostAllocator,
    Refusal,
    RefusalCode,
    invalid_reason,
)
from pinfold.placement.consolidation import Budget, Plan

S = TypeVar("S")
T = TypeVar("T")

__all__ = ["Bulk", "Controller", "ControllerError", "HostView", "MoveChoice", "NoHostError", "Placed"]

#: heartbeats a host may miss before it is `down`
MISSED_HEARTBEATS = 3
ACTIONS: tuple[str, ...] = POWER_ACTIONS
#: how often a create polls the database for the same create on another replica
RACE_POLL_S = 0.05
#: how many times a create looks for its name again after another request took and dropped it
CREATE_ATTEMPTS = 3
#: a ranked host removed before its reservation took its lock (the VM's name is not checked there)
_GONE = "host unavailable: unknown host"
#: how many agent calls a bulk create makes at once (AgentClient is thread-safe)
BULK_WORKERS = 16
#: an agent's refusal of one of these codes is its allocator's: kept as a `Refusal`
_REFUSAL_CODES = frozenset(code.value for code in RefusalCode)


class ControllerError(PinfoldError):
    """A request the controller refuses or cannot carry out; `code` is an `ErrorCode`."""


class NoHostError(ControllerError):
    """No host took the VM; `hosts` says why, host by host, in words;
    `refusals` the same as data for the hosts whose refusal has a placement
    code (an agent's refusal of another code, or an unreachable agent, is only
    in `hosts`); `summary` counts them (`refusals.summary`)."""

    def __init__(
        self, explanation: str, hosts: Mapping[str, str], refusals: Mapping[str, Refusal] | None = None
    ) -> None:
        super().__init__("no host", explanation)
        self.hosts = dict(hosts)
        self.refusals: Mapping[str, Refusal] = MappingProxyType(dict(refusals or {}))
        self.summary = summary(self.refusals, len(self.hosts))


@dataclass(frozen=True)
class Placed:
    """A create's answer: the VM, whether this call made it (False: the same
    request was seen before), and the CPUs its agent pinned it to (empty when
    this call did not reach the agent)."""

    record: VMRecord
    created: bool
    pinning: tuple[int, ...] = ()
    #: its host as read before its agent was asked, without its last heartbeat (None: not asked)
    host: HostRecord | None = None


@dataclass(frozen=True)
class Bulk:
    """A bulk create's answer: each VM's outcome in the order asked (its
    `Placed`, the error that refused it, or None: reserved, then dropped
    unasked, all or nothing); `undone`: all or nothing, and some did not
    fit, so none of those placed was kept."""

    outcomes: list[Placed | ControllerError | None]
    undone: bool
    #: seconds each step took, in order: "check" (requests and names looked up), "reserve" (ranked
    #: and reserved), "agents" (the hosts' shares made and marked running), "alone" (the VMs
    #: created one by one after), "undo" (all or nothing)
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MoveChoice:
    """Where a migration of `vm` would go, without moving it: the hosts in
    the scheduler's order (`target` the first, None for none), and why the
    others cannot take it (`explanation`: the create's one line; `hosts`:
    each refusing host's reason)."""

    vm: str
    source: str
    target: str | None
    ranking: tuple[str, ...]
    explanation: str
    hosts: Mapping[str, str]


@dataclass(frozen=True)
class HostView:
    record: HostRecord
    state: str  # up, down or draining

    @property
    def schedulable(self) -> bool:
        return self.state == "up"


@dataclass
class Controller:
    """`agent_for(host)` gives the client to reach a host's agent; `clock` is
    the wall clock (heartbeat times are compared with it)."""

    store: ControllerStore
    agent_for: Callable[[HostRecord], AgentClient]
    heartbeat_period_s: float = HEARTBEAT_PERIOD_S
    default_policy: str = DEFAULT_POLICY
    #: a reservation untouched this long has lost its creator (a controller died)
    stale_after_s: float = STALE_AFTER_S
    #: how long the list of schedulable hosts is reused (0: read it for every request)
    liveness_ttl_s: float = 1.0
    #: how long a create waits for the same create, sent at the same time, to hear from its agent
    race_wait_s: float = 30.0
    #: how many creates may wait so at once (each holds one of the server's workers)
    max_race_waiters: int = 8
    #: creates that arrive while others are being placed are placed together, this many at most
    #: (one pass, as a bulk create's: `_create_together`), and deletes likewise (`_delete_together`);
    #: 1: each alone
    coalesce_at_most: int = COALESCE_AT_MOST
    clock: Callable[[], float] = time.time
    scheduler: Scheduler = field(default_factory=Scheduler)
    history: History = field(default_factory=History)

    def __post_init__(self) -> None:
        if self.default_policy not in POLICIES:
            raise ValueError(f"unknown policy {self.default_policy!r}: one of {', '.join(POLICIES)}")
        self._picture = threading.Lock()
        self._fits = Feasibility(topologies=self.scheduler.topologies)
        self._schedulable: tuple[float, list[str]] = (float("-inf"), [])
        # the creates under way in this process, by name (a create of a name
        # sent twice at once may run twice), and the creates waiting for them
        self._creating = threading.Condition()
        self._creators: dict[str, int] = {}
        self._waiters = 0
        # SQLite is one controller's; on PostgreSQL a reservation's creator may be another replica
        self._replicas = self.store.engine.dialect.name != "sqlite"
        # the VMs this process is migrating: a heartbeat leaves them to it
        self._moving: set[str] = set()
        self._moving_lock = threading.Lock()
        self.coalescer: Coalescer[tuple[str, str | None], VMRequest, Placed] = Coalescer(
            self._create_together, lambda request: request.name, most=self.coalesce_at_most
        )
        self.deleter: Coalescer[None, str, VMRecord | None] = Coalescer(
            self._delete_together, lambda name: name, most=self.coalesce_at_most
        )
        self.refresh()

    # -- hosts -------------------------------------------------------------------

    def register(
        self,
        host_id: str,
        address: str,
        topology: Mapping[str, Any],
        critical_size: int,
        reserved_memory_mib: int,
        heartbeat_period_s: float | None = None,
        *,
        proof: Proof | None = None,
        agent_token: str | None = None,
    ) -> HostView:
        """Add or update a host. `heartbeat_period_s`, the period its agent
        says it beats at, stretches the time after which it is down (see `silence_s`).
        `proof` (the API's: the enrolment token or the host's credential) is
        checked by the store; `agent_token` is what the controller calls the agent with."""
        view, _ = self.registration(
            host_id, address, topology, critical_size, reserved_memory_mib, heartbeat_period_s,
            proof=proof, agent_token=agent_token,
        )  # fmt: skip
        return view

    def registration(
        self,
        host_id: str,
        address: str,
        topology: Mapping[str, Any],
        critical_size: int,
        reserved_memory_mib: int,
        heartbeat_period_s: float | None = None,
        *,
        proof: Proof | None = None,
        agent_token: str | None = None,
    ) -> tuple[HostView, list[VMRecord]]:
        """`register`, and the host's VMs (the API's answer lists them): read
        in the registration's transaction, and not at all for a new host."""
        problem = self._unusable(topology, critical_size, reserved_memory_mib)
        if problem is not None:
            raise ControllerError("invalid request", problem)
        try:
            record, vms = self.store.register_host_with_vms(
                host_id,
                address,
                topology,
                critical_size,
                reserved_memory_mib,
                self.clock(),
                heartbeat_period_s,
                proof=proof,
                agent_token=agent_token,
                event=NewEvent("host registered", host_id, {"address": address}),
            )
        except HostAuthError as error:
            raise ControllerError(error.code, error.detail) from error
        except StoreError as error:
            raise ControllerError("invalid request", str(error)) from error
        self._schedulable = (float("-inf"), [])
        with self._picture:
            in_place = self.scheduler.add(record, vms)
        if not in_place:
            self.refresh()
        return self._view(record, self.clock()), vms

    def topology(self, digest: str) -> Mapping[str, Any]:
        """The topology document a registration names by its digest (an agent of
        a host model registered before sends the key, not the 157 KB document):
        ControllerError "unknown topology" when none is stored under it."""
        document = self.store.topology(digest)
        if document is None:
            raise ControllerError(
                "unknown topology", f"no topology is stored under {digest}: send the document"
            )
        return document

    def _unusable(
        self, topology: Mapping[str, Any], critical_size: int, reserved_memory_mib: int
    ) -> str | None:
        """Why a registration cannot describe a host the placement core can
        use, or None. The parsed topology is kept by digest (`Feasibility`):
        parsing a large server's document took half of a registration."""
        try:
            parsed = self._fits.parsed(self.store.digest(topology), topology)
            HostAllocator(parsed, critical_size, reserved_memory_mib, report_pins=False)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            return f"topology: {type(error).__name__}: {error}"
        return None

    def heartbeat(self, host_id: str, payload: Mapping[str, Any]) -> bool:
        """Store a heartbeat and settle this host's VMs with what its agent
        reports; False when the host is unknown (the agent registers again).
        The API has checked its shape (`api.Heartbeat`)."""
        now = self.clock()
        nics = payload.get("nics")  # kept per VM (vms.reported_nics), not in the host's row every beat
        if not self.store.heartbeat(host_id, {k: v for k, v in payload.items() if k != "nics"}, now):
            return False
        settled = self.store.settled_on(host_id, nics=isinstance(nics, Mapping))
        reported = payload.get("vms")
        if isinstance(reported, Mapping):
            self._settle(host_id, settled, {str(k): str(v) for k, v in reported.items()}, now)
        if isinstance(nics, Mapping):
            self.store.set_reported_nics(host_id, _changed_nics(settled, nics))
        self.history.record(host_id, now, payload)  # a view only: last, after what the heartbeat settles
        return True

    def authenticate(self, host_id: str, credential: str) -> None:
        """Check that `credential` is host `host_id`'s own, as a heartbeat
        must be: ControllerError "credential revoked" (the host was removed),
        or "unauthorized" (also for a host the controller does not know: its
        agent then registers again, and enrols when its credential is unknown)."""
        presented = digest(credential)
        if self.store.revoked(presented):
            raise ControllerError("credential revoked", _REVOKED.format(host_id=host_id))
        try:
            stored = self.store.credential(host_id)
        except UnknownHostError:
            stored = None
        if not matches(stored, presented):
            raise ControllerError("unauthorized", f"host {host_id}'s own credential is required")

    def remove_host(self, host_id: str, force: bool = False) -> list[VMRecord]:
        """Remove a host from the directory and revoke its credential; with
        `force`, also while it has VMs (forgotten, their agent not asked).
        The VMs forgotten."""
        try:
            forgotten = self.store.remove_host(host_id, force, self.clock())
        except UnknownHostError as error:
            raise ControllerError("unknown host", host_id) from error
        except HostInUseError as error:
            names = ", ".join(error.names)
            raise ControllerError(
                "host in use",
                f"{host_id} still has {len(error.names)} VMs ({names}): delete them first, or remove "
                "it with --force (?force=true): the controller forgets them, their agent is not asked",
            ) from error
        self._schedulable = (float("-inf"), [])
        self.refresh()
        return forgotten

    def hosts(self) -> list[HostView]:
        now = self.clock()
        return [self._view(record, now) for record in self.store.hosts()]

    def host(self, host_id: str, heartbeat: bool = True) -> HostView:
        """The host and its state; not `heartbeat`: its last heartbeat left
        out of the record (`ControllerStore.host`)."""
        record = self.store.host(host_id, heartbeat)
        if record is None:
            raise ControllerError("unknown host", host_id)
        return self._view(record, self.clock())

    def drain(self, host_id: str, draining: bool = True) -> HostView:
        try:
            record = self.store.set_draining(host_id, draining)
        except UnknownHostError as error:
            raise ControllerError("unknown host", host_id) from error
        self.store.add_event("host drain" if draining else "host undrain", host_id, {}, self.clock())
        self._schedulable = (float("-inf"), [])
        return self._view(record, self.clock())

    def check_hosts(self) -> list[str]:
        """Report the hosts that went silent, a "host down" event each; the
        ids of those now down. Called every period. Whether a host was
        reported is stored with it (the store clears it, with a "host up",
        on its next heartbeat or registration): a restart repeats nothing."""
        now = self.clock()
        down = []
        for host in self.store.liveness():
            if self._state(host, now) == "down":
                down.append(host.id)
                if not host.down:
                    self.store.mark_down(host.id, now - self.silence_s(host.heartbeat_period_s), now)
        return down

    def silence_s(self, agent_period_s: float | None) -> float:
        """How long a host may stay silent before it is down: three periods,
        of its agent's own period if it said, else of the controller's, and
        never less than three of the controller's (its checks run that often,
        and an operator may set it longer to be patient). Judging an agent that
        beats every 10 s by a 2 s period would have it flap down and up."""
        return MISSED_HEARTBEATS * max(self.heartbeat_period_s, agent_period_s or 0.0)

    def view(self, record: HostRecord) -> HostView:
        """A host record read earlier (a create's `Placed.host`), with its state now."""
        return self._view(record, self.clock())

    def _view(self, record: HostRecord, now: float) -> HostView:
        return HostView(record, self._state(record, now))

    def _state(self, host: HostRecord | HostLiveness, now: float) -> str:
        if now - host.last_heartbeat > self.silence_s(host.heartbeat_period_s):
            return "down"
        return "draining" if host.draining else "up"

    def schedulable_hosts(self) -> list[str]:
        """The hosts up and not draining, read at most every `liveness_ttl_s`
        (a host drained or gone down that recently still refuses: the
        reservation checks draining under the host's lock, the agent answers)."""
        now = self.clock()
        cached_at, hosts = self._schedulable
        if now - cached_at >= self.liveness_ttl_s or now < cached_at:
            hosts = [h.id for h in self.store.liveness() if self._state(h, now) == "up"]
            self._schedulable = (now, hosts)
        return hosts

    # -- VMs ---------------------------------------------------------------------

    def create(self, request: VMRequest, policy: str | None = None, group: str | None = None) -> Placed:
        """Place and create one VM; `group`: the VM joins that group (its rule
        rules hosts out or ranks them, `placement.groups`). A new name is
        placed with the creates of the same policy and group that arrive
        meanwhile (`coalescer`); a name in the directory is a repeated create."""
        policy = self._checked(request, policy)
        self._group_rule(group)  # an unknown group refuses this create alone
        if self.coalesce_at_most > 1:
            return self.coalescer.submit((policy, group), request)
        return self._create_alone(request, policy, group)

    def _create_alone(self, request: VMRequest, policy: str, group: str | None) -> Placed:
        """`create`, for this VM alone: ranked, reserved, made on its agent.
        The directory is asked for the name first only when the picture holds
        it (a repeated create); a name the picture lacks (new, or another
        replica's) is found by the reservation, which checks it under the
        host's lock anyway (`_NameTaken`): one read fewer a create (issue 16)."""
        rule = self._group_rule(group)
        with self._picture:
            pictured = self.scheduler.holds(request.name)
        existing = self.store.vm(request.name) if pictured else None
        for _ in range(CREATE_ATTEMPTS):
            if existing is not None:
                self._same_group(existing, group)
                record = self._again(existing, request)
                if record is not None:
                    return Placed(record, created=False)
                # gone once its creator was done (it found no host): place it here
            try:
                with self._creating_vm(request.name):
                    return self._place(request, policy, rule)
            except _NameTaken as taken:  # reserved by another request between our look and ours
                existing = taken.existing
        raise ControllerError(
            "duplicate name", f"{request.name}: taken and dropped by other requests at once"
        )

    def _create_together(
        self, key: tuple[str, str | None], requests: list[VMRequest]
    ) -> list[Placed | ControllerError]:
        """Creates of one policy and group that arrived together, placed in
        one pass (`_bulk_pass`: each ranked with the ones before it in the
        picture, each host's share reserved, made and marked running at once),
        each one's outcome in order. One alone, or one whose name was taken
        meanwhile or that the pass could not place, goes the way of
        `_create_alone`."""
        policy, group = key
        alone = partial(self._create_alone, policy=policy, group=group)
        if len(requests) == 1:
            return [_outcome(partial(alone, requests[0]))]
        taken = self.store.taken([request.name for request in requests])
        fresh = [request for request in requests if request.name not in taken]
        outcomes: dict[str, Placed | ControllerError | None] = {}
        later = self._bulk_pass(fresh, policy, outcomes, False, self._group_rule(group))
        for request in [*later, *(request for request in requests if request.name in taken)]:
            outcomes[request.name] = _outcome(partial(alone, request))
        return [_placed_or_error(outcomes[request.name]) for request in requests]

    def _checked(self, request: VMRequest, policy: str | None) -> str:
        """The policy to place `request` by; "invalid request" for a policy,
        size, image or first-boot data no host could take."""
        policy = policy or self.default_policy
        if policy not in POLICIES:
            raise ControllerError("invalid request", f"policy: one of {', '.join(POLICIES)}")
        problem = invalid_reason(request.spec) or (
            image_path_problem(request.image) if request.image else None
        )
        problem = problem or first_boot_problem(request.ssh_keys, request.user_data)
        if problem is not None:
            raise ControllerError("invalid request", problem)
        return policy

    def create_many(
        self,
        requests: Sequence[VMRequest],
        policy: str | None = None,
        all_or_nothing: bool = False,
        group: str | None = None,
    ) -> Bulk:
        """A bulk create: each request's outcome, in order (its VM, or why it
        was refused). One pass places them all, each ranked with the picture
        holding the ones before it, each host's share reserved in one
        transaction (rows committed before any agent is asked: `_bulk_reserve`);
        then each host's agent creates its share in one call, hosts in
        parallel (`BULK_WORKERS` at once: `_bulk_on_host`). A name
        already in the directory is a repeated create (`create`'s rules). A
        VM that met another request's or an agent's refusal is created alone
        after the pass, as `create` would. `all_or_nothing`: if any is
        refused, none stays (reservations dropped, VMs made deleted: `undone`).
        `group`: every VM joins it; each one's rule counts those before it."""
        policy = policy or self.default_policy
        phases: dict[str, float] = {}
        started = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal started
            now = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now - started
            started = now

        for request in requests:
            self._checked(request, policy)
        rule = self._group_rule(group)
        outcomes: dict[str, Placed | ControllerError | None] = {}
        fresh = []
        taken = self.store.taken([request.name for request in requests])
        for request in requests:
            if request.name not in taken:
                fresh.append(request)
            else:
                outcomes[request.name] = _outcome(partial(self.create, request, policy, group))
        phase("check")
        later = self._bulk_pass(fresh, policy, outcomes, all_or_nothing, rule, phase)
        for request in later:  # alone, once this request's marks on its names are gone
            outcomes[request.name] = _outcome(partial(self.create, request, policy, group))
        phase("alone")
        result = [outcomes[request.name] for request in requests]
        undone = all_or_nothing and any(isinstance(outcome, ControllerError) for outcome in result)
        if undone:
            self._undo(result)
            phase("undo")
        return Bulk(result, undone, phases)

    def _bulk_pass(
        self,
        requests: Sequence[VMRequest],
        policy: str,
        outcomes: dict[str, Placed | ControllerError | None],
        all_or_nothing: bool,
        group: GroupRule | None = None,
        phase: Callable[[str], None] = lambda name: None,
    ) -> list[VMRequest]:
        """Place `requests` in one pass (`_bulk_reserve`), then create the
        reserved ones on their agents, one call per host, hosts in parallel;
        their outcomes go in `outcomes`. The requests left to create alone.
        In `all_or_nothing`, a refusal drops the reservations made, once all
        were tried (the answer says each VM that did not fit), and no agent
        is asked. `phase(name)` is called at the end of each step, for `Bulk.phases`."""
        later: list[VMRequest] = []
        with contextlib.ExitStack() as marks:
            for request in requests:
                marks.enter_context(self._creating_vm(request.name))
            batches = self._bulk_reserve(requests, policy, outcomes, later, group)
            phase("reserve")
            if all_or_nothing and any(request.name in outcomes for request in requests):
                for _, held in batches:
                    for attempt in held:
                        self._forget(attempt.request.name)
                        outcomes[attempt.request.name] = None
                return later
            made = _on_each_host(lambda batch: self._bulk_on_host(*batch), batches)
            phase("agents")
        for (_, attempts), placed in zip(batches, made, strict=True):
            for attempt, outcome in zip(attempts, placed, strict=True):
                if outcome is None:
                    later.append(attempt.request)
                else:
                    outcomes[attempt.request.name] = outcome
        return later

    def _bulk_reserve(
        self,
        requests: Sequence[VMRequest],
        policy: str,
        outcomes: dict[str, Placed | ControllerError | None],
        later: list[VMRequest],
        group: GroupRule | None = None,
    ) -> list[tuple[HostRecord, list[_Attempt]]]:
        """Rank each request in turn with the picture, which then holds it on
        its first-ranked host (so the next is ranked with it there, as one-by-one
        creates would be), and reserve each host's share in one transaction
        (`_reserve_batches`). A request no host takes in the picture has the
        pending ones reserved first, then is ranked as `create` ranks (the
        picture brought in step); its refusal goes in `outcomes`. Requests
        whose name was taken meanwhile, or whose host refused at reservation
        (the picture was behind), go in `later`. `group`: each request's rule
        counts the requests placed before it."""
        pending: dict[str, list[_Attempt]] = {}
        batches: list[tuple[HostRecord, list[_Attempt]]] = []
        for request in requests:
            try:
                attempt = self._attempt(request, policy, group, catch_up=False)
                if not attempt.ranking:
                    batches += self._reserve_batches(pending, later)
                    pending = {}
                    attempt = self._attempt(request, policy, group)
                if not attempt.ranking:
                    outcomes[request.name] = self._no_host(attempt)
                    continue
            except _NameTaken:
                later.append(request)
                continue
            host_id = attempt.ranking[0]
            with self._picture:
                in_step = self.scheduler.placed(host_id, request.spec)
            if in_step:
                pending.setdefault(host_id, []).append(attempt)
                group = group.with_member(request.name) if group is not None else None
            else:
                later.append(request)
        return batches + self._reserve_batches(pending, later)

    def _reserve_batches(
        self, pending: Mapping[str, list[_Attempt]], later: list[VMRequest]
    ) -> list[tuple[HostRecord, list[_Attempt]]]:
        """Reserve each host's share of a bulk create (`ControllerStore.reserve_many`:
        one transaction, the host replayed once), rows committed before any
        agent is asked. Each host with the VMs it holds now; a VM refused
        leaves the picture and goes in `later` (created alone, as `create`
        would: the next host of its ranking), and its host's picture is read
        again once all are reserved."""
        batches, stale = [], []
        for host_id, attempts in pending.items():
            reserved = self._reserve_batch(host_id, attempts)
            kept = [attempt for attempt, ok in zip(attempts, reserved, strict=True) if ok]
            if len(kept) < len(attempts):
                stale.append(host_id)
                with self._picture:
                    for attempt, ok in zip(attempts, reserved, strict=True):
                        if not ok:
                            self.scheduler.removed(attempt.request.name)
                later.extend(
                    attempt.request for attempt, ok in zip(attempts, reserved, strict=True) if not ok
                )
            host = self.store.host(host_id, heartbeat=False) if kept else None
            if host is not None:
                batches.append((host, kept))
        for host_id in stale:
            self._refresh_host(host_id)
        return batches

    def _reserve_batch(self, host_id: str, attempts: Sequence[_Attempt]) -> list[bool]:
        """Whether each VM of a host's share was reserved (False: refused,
        its name taken, or the whole batch failed: each is tried alone)."""
        group = attempts[0].group.name if attempts and attempts[0].group is not None else None
        try:
            records = self.store.reserve_many(
                [attempt.request for attempt in attempts], host_id, self._fits.on_host, self.clock(), group
            )
        except (UnknownHostError, DuplicateVMError, StoreError):
            return [False] * len(attempts)
        return [isinstance(record, VMRecord) for record in records]

    def _bulk_on_host(
        self, host: HostRecord, attempts: Sequence[_Attempt]
    ) -> list[Placed | ControllerError | None]:
        """A host's reserved VMs of a bulk create on its agent, in one call
        (`AgentClient.create_many`), then marked running in one transaction:
        each one's `Placed`, its error, or None (the agent refused it: the
        reservation dropped, it is tried alone)."""
        results: Sequence[dict[str, Any] | AgentError]
        try:
            results = self.agent_for(host).create_many([attempt.request for attempt in attempts])
        except AgentUnreachableError as error:  # no answer at all: the same for each of them
            results = [error] * len(attempts)
        answers = [
            _outcome(partial(self._agent_answer, host, attempt, partial(_given, result)))
            for attempt, result in zip(attempts, results, strict=True)
        ]
        made = [(a, answer) for a, answer in zip(attempts, answers, strict=True) if isinstance(answer, dict)]
        running = self._running(host, made)
        return [
            running[attempt.request.name] if isinstance(answer, dict) else answer
            for attempt, answer in zip(attempts, answers, strict=True)
        ]

    def _undo(self, outcomes: Sequence[Placed | ControllerError | None]) -> None:
        """All or nothing: delete the VMs this request made (not those that
        were there before it: a repeated create's)."""
        for outcome in outcomes:
            if isinstance(outcome, Placed) and outcome.created:
                with contextlib.suppress(ControllerError):
                    self.delete(outcome.record.name)

    def _place(self, request: VMRequest, policy: str, group: GroupRule | None = None) -> Placed:
        attempt = self._attempt(request, policy, group)
        for host in self._reserved(attempt):
            placed = self._on_agent(host, request, attempt)
            if placed is not None:
                return placed
        # no reservation reached the name's check under a host's lock: none ranked, or each
        # ranked host gone before its lock was taken
        unchecked = all(attempt.refused.get(host_id) == _GONE for host_id in attempt.ranking)
        raise self._no_host(attempt, look_up=unchecked)

    def _attempt(
        self,
        request: VMRequest,
        policy: str,
        group: GroupRule | None = None,
        exclude: str | None = None,
        catch_up: bool = True,
    ) -> _Attempt:
        """Rank the hosts for `request` with the picture (which holds every
        reservation this controller made, a bulk create's earlier VMs too);
        when none has room, bring the picture in step and rank again, unless
        not `catch_up` (a bulk create's picture holds VMs not reserved yet).
        `exclude`: a host left out (a migration's source)."""
        eligible = self.schedulable_hosts()
        if exclude is not None:
            eligible = [host for host in eligible if host != exclude]
        with self._picture:
            decision = self.scheduler.choose(request.spec, policy, eligible, group)
        if catch_up and not decision.ranking():  # the picture may be behind another replica's deletes
            # every difference: a second create of a name whose first is under way takes it over
            # (or finds its row) as before, not "no host" for the first one's hold in the picture
            self.refresh_vms(leave_under_way=False)
            with self._picture:
                decision = self.scheduler.choose(request.spec, policy, eligible, group)
        return _Attempt(request, decision, decision.ranking(), group)

    def _reserved(self, attempt: _Attempt) -> Iterator[HostRecord]:
        """The hosts of the ranking, in order, each once it holds a reservation
        for the VM (the caller asks its agent, and takes the next on a refusal),
        as the reservation read it under the host's lock: not read before it
        too (a statement and a connection a create, issue 16)."""
        for host_id in attempt.ranking:
            read: list[HostRecord] = []

            def on_host(
                host: HostRecord, held: Sequence[Holding], read: list[HostRecord] = read
            ) -> Admission:
                read.append(host)
                return self._fits.on_host(host, held)

            if self._reserve_on(host_id, attempt, on_host=on_host):
                yield read[-1]

    def _no_host(self, attempt: _Attempt, look_up: bool = False) -> NoHostError:
        """Why no host took the VM, every other host's reason with it (only
        now, one pass over all hosts); `_NameTaken` when the name was taken
        by another request since our look. `look_up`: the name is looked up
        whatever the picture says (a create that did not look before, and
        whose reservations did not either: a VM the picture lacks, on no host
        or another replica's, is then a repeat, not a refusal)."""
        request, decision, ranking = attempt.request, attempt.decision, attempt.ranking
        refusals = decision.refusals()
        if look_up or any(refusal.code is RefusalCode.DUPLICATE_NAME for refusal in refusals.values()):
            # the picture holds the name: another request reserved it since our look
            taken = self.store.vm(request.name)
            if taken is not None:
                raise _NameTaken(taken)
        reasons = {name: refusal.describe() for name, refusal in refusals.items()}
        with self._picture:  # a cloud agent's host is in no picture: say why it took nothing
            clouds = dict(self.scheduler.clouds)
        reasons = {
            name: f"{RefusalCode.HOST_UNAVAILABLE.value}: {why}" for name, why in clouds.items()
        } | reasons
        refusals = {
            name: Refusal(RefusalCode.HOST_UNAVAILABLE, detail=why) for name, why in clouds.items()
        } | refusals
        explanation = decision.explain()
        if ranking:
            why = "; ".join(sorted(set(attempt.refused.values()))[:3])
            explanation += f"; tried {len(ranking)}, all refused: {why}"
        return NoHostError(explanation, {**reasons, **attempt.refused}, {**refusals, **attempt.as_data})

    def _reserve_on(
        self,
        host_id: str,
        attempt: _Attempt,
        take: Callable[[], object] | None = None,
        on_host: OnHost | None = None,
    ) -> bool:
        """Reserve room on host `host_id` (a row, committed, before any agent
        is asked) and note it in the picture; False when the host refused (its
        reason kept in `attempt`). `take`: a migration's reservation in place
        of the create's (`ControllerStore.reserve_migration`; the picture
        learns of the move when it is done). `on_host`: the create's check
        under the host's lock, `Feasibility.on_host` unless given."""
        request, refused, as_data = attempt.request, attempt.refused, attempt.as_data
        try:
            if take is None:
                group = attempt.group.name if attempt.group is not None else None
                (outcome,) = self.store.reserve_many(
                    [request], host_id, on_host or self._fits.on_host, self.clock(), group
                )
                if isinstance(outcome, StoreError):
                    raise outcome
            else:
                take()
        except UnknownGroupError as error:  # deleted since the create read it
            raise ControllerError("unknown group", error.name) from error
        except RefusedError as error:
            refused[host_id] = error.reason
            if error.refusal is not None:
                as_data[host_id] = error.refusal
            self._refresh_host(host_id)
            return False
        except UnknownHostError:
            refused[host_id] = _GONE
            as_data[host_id] = Refusal(RefusalCode.HOST_UNAVAILABLE, detail="unknown host")
            return False
        except DuplicateVMError as error:  # the same name, reserved meanwhile: the same request?
            raise _NameTaken(error.existing) from error
        if take is not None:
            return True
        with self._picture:
            in_step = self.scheduler.placed(host_id, request.spec)
        if not in_step:
            self._refresh_host(host_id)
        return True

    def _on_agent(self, host: HostRecord, request: VMRequest, attempt: _Attempt) -> Placed | None:
        """Create the reserved VM on `host`'s agent; None when it refused (the
        reservation dropped, its reason kept in `attempt`)."""
        answer = self._agent_answer(host, attempt, partial(self.agent_for(host).create, request))
        if answer is None:
            return None
        placed = self._running(host, [(attempt, answer)])[request.name]
        if isinstance(placed, ControllerError):
            raise placed
        return placed

    def _agent_answer(
        self, host: HostRecord, attempt: _Attempt, call: Callable[[], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """The agent's answer to `call`, its create of the reserved VM; None
        when it refused (the reservation dropped, its reason kept in `attempt`)."""
        request, refused, as_data = attempt.request, attempt.refused, attempt.as_data
        try:
            return call()
        except AgentRefusedError as error:
            self._forget(request.name)
            if error.code == "invalid request":  # the request's fault (its image), not the host's
                raise ControllerError("invalid request", f"{host.id} refused it: {error.detail}") from error
            refused[host.id] = f"agent refused: {error}"
            if error.code in _REFUSAL_CODES:  # the agent's allocator said no, with its code
                refusal = error.refusal or Refusal(RefusalCode(error.code))  # its numbers, if it sent them
                as_data[host.id] = replace(refusal, detail=error.detail)  # and its words
            return None
        except AgentUnreachableError as error:
            if not error.sent:
                refused[host.id] = f"agent unreachable: {error.detail}"
                self._forget(request.name)
                return None
            # It may have been created: keep the room, let the heartbeat (or a retry) tell.
            raise ControllerError("agent failed", f"{host.id}: {error.detail}") from error

    def _running(
        self, host: HostRecord, made: Sequence[tuple[_Attempt, dict[str, Any]]]
    ) -> dict[str, Placed | ControllerError]:
        """Record the VMs `host`'s agent made as running, with a "vm created"
        event each, in one transaction; each one's `Placed` by name, or the
        error of one deleted by another request meanwhile."""
        if not made:
            return {}
        names = [attempt.request.name for attempt, _ in made]
        events = {name: NewEvent("vm created", name, {"host": host.id}) for name in names}
        records = self.store.set_vm_states(names, VMState.RUNNING, self.clock(), events)
        result: dict[str, Placed | ControllerError] = {}
        for (attempt, answer), record in zip(made, records, strict=True):
            name = attempt.request.name
            if record is None:
                result[name] = ControllerError("invalid", f"{name} was deleted while being created")
            else:
                pins = answer.get("pinning")
                result[name] = Placed(
                    record, True, tuple(int(c) for c in pins) if isinstance(pins, list) else (), host
                )
        return result

    def _again(self, existing: VMRecord, request: VMRequest) -> VMRecord | None:
        """Idempotency: the same request gets its VM, even when both were
        sent at once (the later one waits for the earlier one, then compares
        again: the name may be another request's by then); another one with
        the same name is refused. None: the VM is gone once the earlier one
        was done (it found no host), the caller places it. A stale
        reservation (its controller died) is finished here."""
        _same_or_refuse(existing, request)
        if existing.state is VMState.RESERVED and not self._stale(existing):
            waited = self._await_creator(existing)
            if waited is None:
                return None
            _same_or_refuse(waited, request)
            existing = waited
        if existing.state is not VMState.RESERVED or not self._stale(existing) or existing.host_id is None:
            return existing
        # touched first, so that no heartbeat forgets it while its agent creates it
        claimed = self.store.claim(existing.name, existing.updated_at, self.clock())
        if claimed is None:  # another request or a heartbeat acted on it first: look again
            again = self.store.vm(existing.name)
            return again if again is None else self._again(again, request)
        existing = claimed
        host = self.store.host(existing.host_id, heartbeat=False) if existing.host_id is not None else None
        if host is None:
            return existing
        client = self.agent_for(host)
        try:
            if client.get(existing.name) is None:
                client.create(_with_first_boot(existing.request, request))
        except AgentRefusedError as error:
            # "duplicate name": the dead controller's own create was still under
            # way on the agent when we looked, and it has the VM now. Forgetting
            # it then would place it a second time on another host.
            if error.code != "duplicate name" or not self._agent_has(client, existing.name):
                self._forget(existing.name)
                detail = f"{host.id} refused the reserved VM: {error}"
                raise ControllerError("agent failed", detail) from error
        except AgentUnreachableError as error:
            raise ControllerError("agent failed", f"{host.id}: {error.detail}") from error
        try:
            return self.store.set_vm_state(existing.name, VMState.RUNNING, self.clock())
        except UnknownVMError as error:  # deleted by another request meanwhile
            raise ControllerError("invalid", f"{existing.name} was deleted while being created") from error

    @staticmethod
    def _agent_has(client: AgentClient, name: str) -> bool:
        try:
            return client.get(name) is not None
        except AgentUnreachableError as error:  # keep the reservation: the next retry looks again
            raise ControllerError("agent failed", error.detail) from error

    def _stale(self, record: VMRecord) -> bool:
        return self.clock() - record.updated_at > self.stale_after_s

    @contextmanager
    def _creating_vm(self, name: str) -> Iterator[None]:
        """Mark a create of `name` under way in this process, from before its
        first reservation to its end (its last host tried), and wake the
        creates waiting for it at the end."""
        with self._creating:
            self._creators[name] = self._creators.get(name, 0) + 1
        try:
            yield
        finally:
            with self._creating:
                if self._creators[name] > 1:
                    self._creators[name] -= 1
                else:
                    del self._creators[name]
                self._creating.notify_all()

    def _await_creator(self, reserved: VMRecord) -> VMRecord | None:
        """The VM, read again once the create that reserved it is over, or
        after `race_wait_s` (then still `reserved`); None if it is gone.

        A creator in this process wakes its waiters when it ends. Else, on
        PostgreSQL, the creator may be another replica: the database is polled
        until the VM is no longer reserved, or its reservation is stale. On
        SQLite no other controller can be creating it (its controller died):
        the VM is returned as it stands, at once. Past `max_race_waiters`
        waiting creates, the VM is returned as it stands too."""
        name = reserved.name
        deadline = time.monotonic() + self.race_wait_s
        with self._creating:
            if self._waiters >= self.max_race_waiters:
                return reserved
            self._waiters += 1
        try:
            while True:
                with self._creating:
                    here = name in self._creators
                    if here:
                        remaining = max(0.0, deadline - time.monotonic())
                        self._creating.wait_for(lambda: name not in self._creators, timeout=remaining)
                record = self.store.vm(name)
                if record is None or record.state is not VMState.RESERVED or self._stale(record):
                    return record
                if time.monotonic() >= deadline or not (here or self._replicas):
                    return record
                if not here:  # here: another create in this process reserved it since; wait for it
                    time.sleep(RACE_POLL_S)
        finally:
            with self._creating:
                self._waiters -= 1

    # -- VM groups ---------------------------------------------------------------

    def create_group(self, name: str, policy: str) -> tuple[GroupRecord, bool]:
        """Add a VM group (True) or give the one there of that name and policy
        (False); "group exists" for another policy."""
        if policy not in GroupPolicy._value2member_map_:
            valid = ", ".join(p.value for p in GroupPolicy)
            raise ControllerError("invalid request", f"policy: one of {valid}")
        try:
            return self.store.create_group(name, GroupPolicy(policy), self.clock())
        except GroupExistsError as error:
            raise ControllerError("group exists", str(error)) from error

    def groups(self) -> list[GroupRecord]:
        return self.store.groups()

    def group(self, name: str) -> GroupRecord:
        record = self.store.group(name)
        if record is None:
            raise ControllerError("unknown group", name)
        return record

    def delete_group(self, name: str) -> GroupRecord:
        """Delete a VM group; refused while it has VMs (delete them first)."""
        try:
            return self.store.delete_group(name)
        except UnknownGroupError as error:
            raise ControllerError("unknown group", name) from error
        except GroupInUseError as error:
            names = ", ".join(error.names[:10]) + (", ..." if len(error.names) > 10 else "")
            detail = f"{name} still has {len(error.names)} VMs ({names}): delete them first"
            raise ControllerError("group in use", detail) from error

    def group_of(self, vm: str) -> str | None:
        """The name of the group VM `vm` is in (None: none, or no such VM)."""
        return self.store.group_of(vm)

    def _group_rule(self, name: str | None) -> GroupRule | None:
        """The rule of the group a create names, with its members now."""
        return None if name is None else self.group(name).rule

    def _same_group(self, existing: VMRecord, group: str | None) -> None:
        """A repeated create must name the group its VM is in (idempotency)."""
        now_in = self.group_of(existing.name)
        if now_in != group:
            where = f"group {now_in}" if now_in else "no group"
            raise ControllerError("duplicate name", f"{existing.name} exists in {where}")

    def vm(self, name: str) -> VMRecord:
        record = self.store.vm(name)
        if record is None:
            raise ControllerError("unknown vm", name)
        return record

    def agent_of(self, name: str) -> AgentClient:
        """The client of the agent VM `name` is on (for its console);
        "unknown vm" for none, "invalid" for a VM on no host (yet)."""
        record = self.vm(name)
        host = self.store.host(record.host_id, heartbeat=False) if record.host_id else None
        if host is None:
            raise ControllerError("invalid", f"{name} is {record.state.value}: it is on no host")
        return self.agent_for(host)

    def vms(self, host_id: str | None = None) -> list[VMRecord]:
        return self.store.vms(host_id)

    def delete(self, name: str) -> VMRecord | None:
        """Delete a VM; None when it is gone, else its record (`deleting`: the
        agent did not answer, the deletion is retried every period). Deletes
        that arrive while others are under way are done together (`deleter`)."""
        if self.coalesce_at_most > 1:
            return self.deleter.submit(None, name)
        return self._delete_alone(name)

    def _delete_alone(self, name: str) -> VMRecord | None:
        """`delete`, for this VM alone."""
        record = self._deletable(self.vm(name))
        if record.state is not VMState.DELETING:
            record = self._set_state(name, VMState.DELETING)
        return self._finish_delete(record)

    def _deletable(self, record: VMRecord) -> VMRecord:
        """`record`, if the lifecycle lets it be deleted now; "invalid" if not."""
        try:
            transition(record.state, Action.DELETE)
        except Refused as refused:  # migrating: deleted once it landed, or once back on its source
            raise ControllerError("invalid", refused.describe(record.name)) from refused
        return record

    def _delete_together(self, _: None, names: list[str]) -> list[VMRecord | ControllerError | None]:
        """Deletes that arrived together, each one's outcome in order: read in
        one statement, marked `deleting` in one transaction, deleted on their
        agents (hosts in parallel), and those their agents deleted forgotten in
        one transaction; a write and a commit for all instead of two for each.
        One alone goes the way of `_delete_alone`."""
        if len(names) == 1:
            return [_outcome(partial(self._delete_alone, names[0]))]
        stored = self.store.vms_named(names)
        outcomes: dict[str, VMRecord | ControllerError | None] = {}
        records: list[VMRecord] = []
        for name in names:
            record = stored.get(name)
            outcome = (
                _outcome(partial(self._deletable, record)) if record else ControllerError("unknown vm", name)
            )
            if isinstance(outcome, ControllerError):
                outcomes[name] = outcome
            else:
                records.append(outcome)
        marking = [record.name for record in records if record.state is not VMState.DELETING]
        marked = dict(
            zip(marking, self.store.set_vm_states(marking, VMState.DELETING, self.clock(), {}), strict=True)
        )
        deleting = [marked.get(record.name, record) for record in records]
        for record, now in zip(records, deleting, strict=True):
            if now is None:  # deleted by another request between the read and the mark
                outcomes[record.name] = ControllerError(
                    "unknown vm", f"{record.name} (deleted by another request meanwhile)"
                )
        by_host: dict[str | None, list[VMRecord]] = {}
        for record in deleting:
            if record is not None:
                by_host.setdefault(record.host_id, []).append(record)
        shares = list(by_host.values())
        done = _on_each_host(self._unmake_on_host, shares)
        gone: list[VMRecord] = []
        for share, results in zip(shares, done, strict=True):
            for record, result in zip(share, results, strict=True):
                if result is None:
                    gone.append(record)
                outcomes[record.name] = result
        self._forget_all(gone)
        return [outcomes[name] for name in names]

    def _unmake_on_host(self, records: list[VMRecord]) -> list[VMRecord | ControllerError | None]:
        """Delete one host's share of `_delete_together` on its agent, in one
        call: None for each the agent deleted (or had not; or a VM on no
        host), the error of one it refused, and for all of them their records
        when the agent did not answer (retried every period, as
        `_finish_delete` leaves one)."""
        host_id = records[0].host_id
        host = self.store.host(host_id, heartbeat=False) if host_id else None
        if host is None:
            return [None] * len(records)
        try:
            answers = self.agent_for(host).delete_many([record.name for record in records])
        except AgentUnreachableError:
            return list(records)
        except AgentRefusedError as error:  # the whole call refused: each of them
            return [ControllerError("agent failed", f"{host.id}: {error}")] * len(records)
        return [
            ControllerError("agent failed", f"{host.id}: {answer}")
            if isinstance(answer, AgentRefusedError)
            else None
            for answer in answers
        ]

    def _forget_all(self, records: Sequence[VMRecord]) -> None:
        """`_forget` for VMs their agents deleted, in one transaction ("vm
        deleted" each), and their places in the picture."""
        if not records:
            return
        events = [NewEvent("vm deleted", record.name, {"host": record.host_id}) for record in records]
        self.store.delete_vms([record.name for record in records], events, self.clock())
        with self._picture:
            for record in records:
                self.scheduler.removed(record.name)

    def _finish_delete(self, record: VMRecord) -> VMRecord | None:
        host = self.store.host(record.host_id, heartbeat=False) if record.host_id else None
        if host is not None:
            try:
                self.agent_for(host).delete(record.name)
            except AgentUnreachableError:
                return record
            except AgentRefusedError as error:
                raise ControllerError("agent failed", f"{host.id}: {error}") from error
        self._forget(record.name, NewEvent("vm deleted", record.name, {"host": record.host_id}))
        return None

    def act(self, name: str, action: str) -> VMRecord:
        if action not in ACTIONS:
            raise ControllerError("invalid request", f"action: one of {', '.join(ACTIONS)}")
        record = self.vm(name)
        host = self.store.host(record.host_id, heartbeat=False) if record.host_id else None
        if host is None or not takes_actions(record.state):  # the table: only a delete
            because = f": {record.detail}" if record.detail else ""
            raise ControllerError("invalid", f"{name} is {record.state.value}{because}")
        try:
            answer = self.agent_for(host).act(name, action)
        except AgentRefusedError as error:
            if error.status == 404:  # the agent has no such VM: deleted meanwhile, or not yet seen missing
                self.vm(name)
                raise ControllerError("invalid", f"{name} is missing: {host.id} does not have it") from error
            raise ControllerError("invalid" if error.status == 409 else "agent failed", str(error)) from error
        except AgentUnreachableError as error:
            raise ControllerError("agent failed", f"{host.id}: {error.detail}") from error
        return self._set_state(name, vm_state(answer.get("state"), record.state))

    def _set_state(self, name: str, state: VMState) -> VMRecord:
        """Record a VM's new state for a request about it; a VM another
        request deleted meanwhile is "unknown vm" (404), as it would be to a
        request sent a moment later, not an error of the controller's."""
        try:
            return self.store.set_vm_state(name, state, self.clock())
        except UnknownVMError as error:
            raise ControllerError("unknown vm", f"{name} (deleted by another request meanwhile)") from error

    def retry_deletes(self) -> None:
        """Finish deletions whose agent did not answer before (every period)."""
        for record in self.store.vms():
            if record.state is VMState.DELETING:
                try:
                    self._finish_delete(record)
                except ControllerError:
                    continue

    # -- live migration ------------------------------------------------------------

    def move_choice(self, name: str, to: str | None = None) -> MoveChoice:
        """Where `migrate(name, to)` would move the VM, and why not elsewhere
        (a dry run: nothing reserved). `to`: only that host is considered."""
        record = self._movable(name, to)
        attempt = self._move_attempt(record, to)
        error = self._no_host(attempt)
        return MoveChoice(
            name, record.host_id or "", attempt.ranking[0] if attempt.ranking else None,
            tuple(attempt.ranking), error.detail, error.hosts,
        )  # fmt: skip

    def migrate(self, name: str, to: str | None = None) -> MigrationRecord:
        """Move running VM `name` live to `to`, or to the host the scheduler
        ranks first for it among the others (a refusal: the next one). The
        room is reserved on the target as a create's is (`_reserve_on`, under
        the target's lock), then the agents prepare, send and commit (the
        protocol in docs/controller.md); the migration as it ended. On any
        failure the target's room is released and the VM stays running on its
        source, the migration recorded as failed: "no host" when no host took
        it, "agent failed" when an agent failed it."""
        record = self._movable(name, to)
        attempt = self._move_attempt(record, to)
        source = self.store.host(record.host_id or "", heartbeat=False)
        if source is None:
            raise ControllerError("invalid", f"{name}'s host is gone")
        for host in self._move_targets(attempt, name):
            done = self._carry_out(name, source, host, attempt, explicit=to is not None)
            if done is not None:
                return done
        raise self._no_host(attempt)

    def _movable(self, name: str, to: str | None) -> VMRecord:
        """The VM, if it may move (to `to`): "invalid" for a VM not running
        or already there, "unknown host" for an unknown `to`."""
        record = self.vm(name)
        if record.state is not VMState.RUNNING or record.host_id is None:
            raise ControllerError("invalid", f"{name} is {record.state.value}: only a running VM moves live")
        if to is not None and self.store.host(to, heartbeat=False) is None:
            raise ControllerError("unknown host", to)
        if to == record.host_id:
            raise ControllerError("invalid", f"{name} is on {to} already")
        return record

    def _move_attempt(self, record: VMRecord, to: str | None) -> _Attempt:
        """The create's ranking for the VM's size among the hosts but its
        own (its name is on its source in the picture, so the ranking asks
        under another); with `to`, that host alone, whatever the picture says
        (the reservation decides)."""
        request = replace(record.request, name=f"{record.name} (moving)")
        rule = self._group_rule(self.group_of(record.name))
        if rule is not None:  # the others decide; its own place rules nothing out
            rule = GroupRule(rule.name, rule.policy, rule.members - {record.name})
        attempt = self._attempt(request, self.default_policy, rule, exclude=record.host_id)
        if to is not None:
            attempt.ranking = [to]
        return attempt

    def _move_targets(self, attempt: _Attempt, name: str) -> Iterator[HostRecord]:
        """The ranked hosts, each once it holds the room for `name` (marked `migrating`)."""
        for host_id in attempt.ranking:
            host = self.store.host(host_id, heartbeat=False)
            take = partial(self.store.reserve_migration, name, host_id, self._fits.on_host, self.clock())
            try:
                if host is not None and self._reserve_on(host.id, attempt, take):
                    yield host
            except StoreError as error:  # not running any more, or moved meanwhile
                raise ControllerError("invalid", str(error)) from error

    def _carry_out(
        self, name: str, source: HostRecord, target: HostRecord, attempt: _Attempt, explicit: bool
    ) -> MigrationRecord | None:
        """Steps 1-3 of the protocol for a reserved migration; None when the
        target's agent refused to prepare it (released: the next host is tried)."""
        migration = self.store.migration_of(name)
        if migration is None:  # ended by another replica meanwhile
            raise ControllerError("invalid", f"{name}'s migration ended meanwhile")
        with self._moving_lock:
            self._moving.add(name)
        try:
            src, dst = self.agent_for(source), self.agent_for(target)
            try:
                prepared = dst.prepare_migration(_on(src, name, source.id), source.id, src.seed(name))
            except AgentError as error:
                self._move_failed(migration, f"{target.id} did not prepare it: {error}")
                if explicit or not isinstance(error, AgentRefusedError) or error.code not in _REFUSAL_CODES:
                    raise ControllerError("agent failed", f"{target.id}: {error}") from error
                attempt.refused[target.id] = f"agent refused: {error}"
                return None
            sent = self._send(migration, src, dst, prepared)
            return self._land(migration, dst, _job(sent))
        finally:
            with self._moving_lock:
                self._moving.discard(name)

    def _send(
        self, migration: MigrationRecord, src: AgentClient, dst: AgentClient, prepared: dict[str, Any]
    ) -> dict[str, Any]:
        """Step 2, the source's live send; on its definite failure the target
        aborts and the VM stays where it runs. An answer lost after it was
        sent leaves the VM `migrating`: the heartbeats tell where it is."""
        name = migration.vm
        try:
            return src.send_migration(name, migration.target, prepared)
        except AgentRefusedError as error:
            _abort(dst, name)
            self._move_failed(migration, f"{migration.source} did not send it: {error}")
            raise ControllerError(_send_refusal(error), str(error)) from error
        except AgentUnreachableError as error:
            if error.sent:
                detail = (
                    f"{migration.source}: {error.detail}; {name} stays migrating until the heartbeats tell"
                )
                raise ControllerError("agent failed", detail) from error
            _abort(dst, name)
            self._move_failed(migration, f"{migration.source}: {error.detail}")
            raise ControllerError("agent failed", f"{migration.source}: {error.detail}") from error

    def _land(self, migration: MigrationRecord, dst: AgentClient, detail: str = "") -> MigrationRecord:
        """Step 3: commit on the target, then the record moves there (`detail`:
        the migration's words, the source's job time). A commit refused
        because it was committed already (another replica) counts."""
        name = migration.vm
        try:
            dst.commit_migration(name)
        except AgentRefusedError as error:
            landed = _landed(dst, name) if error.status == 409 else False
            if not landed:
                detail = f"{migration.target} did not commit it: {error}"
                failure = ControllerError if landed is None else _NotLandedError
                raise failure("agent failed", detail) from error
        except AgentUnreachableError as error:
            detail = f"{migration.target}: {error.detail}; {name} stays migrating until the heartbeats tell"
            raise ControllerError("agent failed", detail) from error
        ended = self.store.end_migration(migration.id, self.clock(), moved=True, detail=detail)
        self._moved(migration)
        if ended is None:  # ended by another replica or a heartbeat meanwhile
            ended = next((m for m in self.store.migrations() if m.id == migration.id), migration)
        return ended

    def _move_failed(self, migration: MigrationRecord, detail: str, state: VMState = VMState.RUNNING) -> None:
        """The VM stays on its source (in `state`), the target's room released."""
        self.store.end_migration(migration.id, self.clock(), moved=False, detail=detail, state=state)
        self._refresh_host(migration.target)

    def _moved(self, migration: MigrationRecord) -> None:
        """Bring the picture in step with a VM that moved."""
        with self._picture:
            self.scheduler.removed(migration.vm)
        self._refresh_host(migration.source)
        self._refresh_host(migration.target)

    def migrations(self, since: float = 0.0, limit: int = 100) -> list[MigrationRecord]:
        return self.store.migrations(since, limit)

    def plan_moves(self, budget: Budget, now: float, **options: Any) -> Plan:
        """`Scheduler.plan` on the picture brought in step with the database
        first (`options`: its keywords): a drain's and the consolidation's plan."""
        self.refresh_vms()
        with self._picture:
            return self.scheduler.plan(budget, now, **options)

    def _settle_move(self, record: SettledVM | VMRecord, reported: str | None, now: float) -> None:
        """A `migrating` record whose controller is gone: its source's report
        says where it is (`settle.move_step`)."""
        with self._moving_lock:
            if record.name in self._moving:
                return
        step = move_step(reported, now - record.updated_at, self.stale_after_s)
        migration = self.store.migration_of(record.name) if step is not None else None
        if migration is None:
            return
        target = self.store.host(migration.target, heartbeat=False)
        dst = self.agent_for(target) if target is not None else None
        if step is Move.BACK:
            source = self.store.host(migration.source, heartbeat=False)
            now_there = _source_state(self.agent_for(source), record.name) if source is not None else None
            if now_there is None or now_there == VMState.MIGRATING.value:
                return  # gone since the report was taken, sending, or no answer: a later heartbeat says
            if dst is not None and _abort(dst, record.name):
                return  # the guest runs on the target all the same: its commit is a heartbeat away
            back = vm_state(now_there, VMState.RUNNING)
            self._move_failed(migration, "its controller stopped; the source still has it", back)
            return
        if dst is None:
            self._move_failed(migration, "neither host has it (its target was removed)", VMState.MISSING)
            return
        try:
            self._land(migration, dst, "landed by a heartbeat: its controller stopped after the send")
        except _NotLandedError:  # the target answered that it does not have it either
            self._move_failed(migration, "neither host has it", VMState.MISSING)
        except ControllerError:
            return  # the target does not answer: the next heartbeat tries again

    # -- keeping the picture and the agents in step --------------------------------

    def refresh(self) -> None:
        """Rebuild the picture from the database (at start, and when a host's
        registration changed)."""
        hosts, vms = self.store.shapes(), self.store.vms()
        with self._picture:
            self.scheduler.rebuild(hosts, vms)

    def refresh_vms(self, leave_under_way: bool = True) -> None:
        """Bring the picture's VMs in step with the database, host by host where
        they differ (other replicas' creates and deletes): every period, and
        before answering "no host". `leave_under_way`: the names of creates
        under way in this controller are no difference (`Scheduler.stale_hosts`)."""
        names_on = self.store.names_on_hosts()
        with self._creating:  # after the names: one ended in between at worst has its host read
            under_way = frozenset(self._creators) if leave_under_way else frozenset()
        with self._picture:
            stale = self.scheduler.stale_hosts(names_on, under_way)
        if stale is None:
            self.refresh()
            return
        for host_id in stale:  # each host's records read once it is known to differ
            if not self._refresh_host(host_id):
                return  # the whole picture was rebuilt

    def _refresh_host(self, host_id: str) -> bool:
        """One host's VMs in the picture read again; False when the whole
        picture had to be rebuilt instead."""
        vms = self.store.vms(host_id)
        with self._picture:
            done = self.scheduler.refresh_host(host_id, vms)
        if not done:
            self.refresh()
        return done

    def _forget(self, name: str, event: NewEvent | None = None, unchanged_since: float | None = None) -> bool:
        """Delete a VM's row and its place in the picture; False when there
        was no row (or it changed since `unchanged_since`: kept, and kept in
        the picture too; one gone meanwhile leaves it at the next refresh)."""
        gone = self.store.delete_vm(name, event, self.clock(), unchanged_since) is not None
        if gone or unchanged_since is None:
            with self._picture:
                self.scheduler.removed(name)
        return gone

    def _settle(
        self, host_id: str, records: Sequence[SettledVM | VMRecord], reported: Mapping[str, str], now: float
    ) -> None:
        """What the agent has is what is: carry out `settle.plan` (its table
        says which VM follows the agent, is forgotten or is `missing`) on the
        host's VMs as `records` has them."""
        for record in records:
            if record.state is VMState.MIGRATING:
                self._settle_move(record, reported.get(record.name), now)
        stored = [Stored(record.name, record.state, record.updated_at) for record in records]
        read_at = {record.name: record.updated_at for record in records}
        for step in plan(stored, reported, now, self.heartbeat_period_s, self.stale_after_s):
            if step.action is SettleAction.FORGET:
                # unless changed since `records` were read (a retry took a stale reservation over)
                if not self._forget(step.name, unchanged_since=read_at[step.name]):
                    continue
                self.store.add_event("vm dropped", step.name, {"host": host_id, "was": step.was.value}, now)
            elif step.state is not None:
                self._settle_state(step.name, step.state, now, step.detail)

    def _settle_state(self, name: str, state: VMState, now: float, detail: str = "") -> None:
        """A heartbeat's change of one VM's state; a VM deleted since the
        heartbeat read its host's VMs has nothing left to settle."""
        with contextlib.suppress(UnknownVMError):
            self.store.set_vm_state(name, state, now, detail)


_REVOKED = (
    "host {host_id}'s credential was revoked (pinfold host remove): to enrol the host again, "
    "delete its agent's DATA_DIR/host.token"
)


@dataclass
class _Attempt:
    """One VM's placement under way: its ranking, and the hosts that refused
    it so far and why (in words; as data for those with a placement code)."""

    request: VMRequest
    decision: Decision
    ranking: Sequence[str]
    group: GroupRule | None = None
    refused: dict[str, str] = field(default_factory=dict)
    as_data: dict[str, Refusal] = field(default_factory=dict)


class _NotLandedError(ControllerError):
    """The target answered that a migration's VM has not arrived there."""


class _NameTaken(Exception):  # noqa: N818 (not an error: a create's reason to look again)
    """A create's reservation met another request's VM of that name."""

    def __init__(self, existing: VMRecord) -> None:
        super().__init__(existing.name)
        self.existing = existing


def _on(source: AgentClient, name: str, host_id: str) -> dict[str, Any]:
    """VM `name` as its source agent has it (the target's prepare takes it as it is)."""
    body = source.get(name)
    if body is None:
        raise AgentRefusedError("unknown vm", f"{host_id} does not have {name}", 404)
    return body


def _job(sent: dict[str, Any]) -> str:
    """The source's account of a live send, in words: the hypervisor's job
    time and the guest's downtime when it knows them."""
    parts = []
    if isinstance(sent.get("seconds"), int | float):
        parts.append(f"job {sent['seconds']:.2f} s")
    if isinstance(sent.get("downtime_ms"), int | float):
        parts.append(f"downtime {sent['downtime_ms']:g} ms")
    return ", ".join(parts)


def _send_refusal(error: AgentRefusedError) -> ErrorCode:
    """The controller's code for a source's refused send: `invalid` for a VM
    not running there, `migration timed out` (504) for one the source
    cancelled at its `migration_timeout_s`, else `agent failed`."""
    if error.status == 409:
        return ErrorCode.INVALID
    if error.code == ErrorCode.MIGRATION_TIMED_OUT:
        return ErrorCode.MIGRATION_TIMED_OUT
    return ErrorCode.AGENT_FAILED


def _abort(target: AgentClient, name: str) -> bool:
    """Step 4, best effort: a target that does not answer drops its pending
    `incoming` mark when it restarts (its reconcile). True when the target
    refuses the abort (409) because the guest runs there (libvirt: it is
    across, the source's copy on its way out), its room kept."""
    try:
        target.abort_migration(name)
    except AgentRefusedError as error:
        return error.status == 409
    except AgentError:
        return False
    return False


def _source_state(source: AgentClient, name: str) -> str | None:
    """The state the source's agent gives VM `name` now (None: it has no
    such VM, or no answer). A heartbeat is built before it is sent, so one
    that arrives after the guest went across can still name it: going back
    on it would leave the only running copy on a host the row does not name."""
    try:
        body = source.get(name)
    except AgentError:
        return None
    return None if body is None else str(body.get("state"))


def _landed(target: AgentClient, name: str) -> bool | None:
    """Whether the target has `name` as its own (committed); None when it
    cannot tell (no answer)."""
    try:
        body = target.get(name)
    except AgentError:
        return None
    return body is not None and body.get("state") not in ("incoming", None)


def _on_each_host(work: Callable[[S], T], shares: Sequence[S]) -> list[T]:
    """`work` on each host's share, hosts in parallel; in this thread when
    there is one (no pool's threads for creates or deletes done together on
    one host)."""
    if len(shares) <= 1:
        return [work(share) for share in shares]
    with ThreadPoolExecutor(min(BULK_WORKERS, len(shares))) as pool:
        return list(pool.map(work, shares))


def _outcome(operation: Callable[[], T]) -> T | ControllerError:
    """What `operation` gave, or the controller error it raised (a bulk
    create answers for each of its VMs)."""
    try:
        return operation()
    except ControllerError as error:
        return error


def _placed_or_error(outcome: Placed | ControllerError | None) -> Placed | ControllerError:
    """A best-effort pass's outcome (None is only all or nothing's)."""
    if outcome is None:
        raise AssertionError("a best-effort pass left a VM without an outcome")
    return outcome


def _given(result: dict[str, Any] | AgentError) -> dict[str, Any]:
    """An agent's answer to one create of a batch, its error raised."""
    if isinstance(result, AgentError):
        raise result
    return result


def _with_first_boot(reserved: VMRequest, request: VMRequest) -> VMRequest:
    """The reserved VM with `request`'s SSH keys and user data: the directory
    keeps neither (they go to the agent's cloud-init seed), so a retry that
    finishes a reservation hands on what it carries (`_again` has checked
    them against the reservation's digest first)."""
    return replace(reserved, ssh_keys=request.ssh_keys, user_data=request.user_data)


def _same_or_refuse(existing: VMRecord, request: VMRequest) -> None:
    """Refuse a request under a name whose VM is not the one it asks for:
    another size, owner, image or NICs, or other SSH keys or user data (told
    by the digest kept of them: the VM booted with the first ones, and a
    caller given it back would take the keys it sent for the ones it has)."""
    e, r = existing, request
    same = (e.vcpus, e.memory_mib, e.ratio, e.owner, e.image, e.nics) == (
        r.vcpus, r.memory_mib, float(r.ratio), r.owner, r.image, r.nics,
    )  # fmt: skip
    if not same:
        raise ControllerError("duplicate name", f"{existing.name} exists with another size, owner or NICs")
    if not same_first_boot(e.first_boot_digest, r.ssh_keys, r.user_data):
        raise ControllerError(
            "duplicate name",
            f"{existing.name} exists, created with other SSH keys or user data (they are given to a VM "
            "at its first boot only: delete it and create it again to change them)",
        )


def _changed_nics(
    records: Sequence[SettledVM | VMRecord], reported: Mapping[str, Any]
) -> dict[str, tuple[ReportedNIC, ...]]:
    """The host's VMs whose reported NICs differ from what is stored (only
    those are written: most heartbeats change none)."""
    changed = {}
    for record in records:
        if record.name in reported:
            nics = tuple(ReportedNIC.of(nic) for nic in reported[record.name])
            if nics != record.reported_nics:
                changed[record.name] = nics
    return changed
