"""The controller's durable state: hosts, VMs and events, in its database.

Callers get frozen records, never live ORM objects, so nothing they hold can
change behind them or reach the database outside a transaction. Every method
is one transaction, committed before it returns (nothing acknowledged is lost).

`reserve` is what keeps two controllers (or two requests in one) from both
taking the last room on a host: it holds the host's lock from reading what is
on the host to inserting the new VM. On PostgreSQL that lock is the host's
row (`SELECT ... FOR UPDATE`), so reservations on different hosts proceed in
parallel; on SQLite it is the database's write lock, taken at BEGIN.

A host's `down` flag moves with its events: `mark_down` sets it and records
"host down", the next heartbeat or registration clears it and records "host
up", each in one transaction. So a restarted controller, or another replica,
neither repeats a "host down" nor misses the "host up" after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from sqlalchemy import (
    Engine,
    Row,
    Select,
    bindparam,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pinfold.controller.credentials import Enrolment, HostCredential, Proof, matches
from pinfold.controller.database import WRITE, one_statement, sessions
from pinfold.controller.group_commit import GroupCommit
from pinfold.controller.models import (
    HOST_ID_MAX,
    VM,
    Event,
    GroupMember,
    Host,
    Migration,
    RevokedCredential,
    TopologyDocument,
    VMGroup,
    VMSequence,
    VMState,
    digest_of,
)
from pinfold.model.errors import PinfoldError
from pinfold.model.lifecycle import CONTROLLER_STATES
from pinfold.model.vm import NIC, VMRequest, first_boot_digest
from pinfold.placement import GroupPolicy, GroupRule, Refusal, VMSpec, host_refusal

__all__ = [
    "Admission",
    "ControllerStore",
    "DuplicateVMError",
    "EventRecord",
    "Fits",
    "GroupExistsError",
    "GroupInUseError",
    "GroupRecord",
    "HeldVM",
    "Holding",
    "HostAuthError",
    "HostInUseError",
    "HostLiveness",
    "HostRecord",
    "HostShape",
    "MigrationRecord",
    "NewEvent",
    "OnHost",
    "RefusedError",
    "ReportedNIC",
    "SettledVM",
    "StoreError",
    "UnknownGroupError",
    "UnknownHostError",
    "UnknownVMError",
    "VMRecord",
]


#: the tables that hot paths write and read with plain statements (no ORM objects)
_VMS, _HOSTS = VM.metadata.tables["vms"], Host.metadata.tables["hosts"]
_MEMBERS, _SEQUENCE = GroupMember.metadata.tables["group_members"], VMSequence.metadata.tables["vm_sequence"]
_EVENTS = Event.metadata.tables["events"]

# The statements of a create's and a delete's path, built once with bound
# parameters: building a statement and its cache key at each call cost as
# much as running it (SQLAlchemy memoizes the key on the statement object).
_HOST_COLUMNS = tuple(c for c in _HOSTS.c if c.name not in ("heartbeat", "credential_digest"))
_HOST_ROW: Select[Any] = select(*_HOST_COLUMNS, _HOSTS.c.heartbeat).where(_HOSTS.c.id == bindparam("host_id"))
#: a host's row with None for its heartbeat: what a create needs, without decoding that JSON
_HOST_ROW_LIGHT: Select[Any] = select(*_HOST_COLUMNS, null().label("heartbeat")).where(
    _HOSTS.c.id == bindparam("host_id")
)
_HOST_ROW_LOCKED = _HOST_ROW_LIGHT.with_for_update()
#: the VMs whose room a host holds (on it, or moving to it), their `HeldVM` columns, in order
_HELD_ON = (
    select(_VMS.c.name, _VMS.c.vcpus, _VMS.c.memory_mib, _VMS.c.ratio)
    .where(or_(_VMS.c.host_id == bindparam("host_id"), _VMS.c.target_host_id == bindparam("host_id")))
    .order_by(_VMS.c.seq)
)
#: a host's VMs as a heartbeat settles them (`SettledVM`), without and with their reported NICs
_SETTLED_ON = (
    select(_VMS.c.name, _VMS.c.state, _VMS.c.updated_at)
    .where(_VMS.c.host_id == bindparam("host_id"))
    .order_by(_VMS.c.seq)
)
_SETTLED_NICS_ON = _SETTLED_ON.add_columns(_VMS.c.reported_nics)
_CREDENTIAL = select(_HOSTS.c.credential_digest).where(_HOSTS.c.id == bindparam("host_id"))
_HOLDER = select(_HOSTS.c.id).where(_HOSTS.c.credential_digest == bindparam("digest"))
_REVOKED = select(RevokedCredential.digest).where(RevokedCredential.digest == bindparam("digest"))
#: every host's `HostLiveness` columns (read from the index `ix_hosts_liveness` alone)
_LIVENESS = select(
    _HOSTS.c.id, _HOSTS.c.draining, _HOSTS.c.last_heartbeat, _HOSTS.c.down, _HOSTS.c.heartbeat_period_s
).order_by(_HOSTS.c.id)
#: what a registration checks under the host's lock
_HOST_ADMISSION = (
    select(_HOSTS.c.credential_digest, _HOSTS.c.down)
    .where(_HOSTS.c.id == bindparam("host_id"))
    .with_for_update()
)
#: a host's columns set from the parameters' names (not `host_id`, the row's key), the row after
_REGISTER_AGAIN = update(_HOSTS).where(_HOSTS.c.id == bindparam("host_id")).returning(*_HOSTS.c)
_INSERT_HOST = insert(_HOSTS)
_VM_ROW = select(_VMS).where(_VMS.c.name == bindparam("name"))
#: every placed VM's host and name: what the picture is compared with every period
_VM_HOSTS = select(_VMS.c.host_id, _VMS.c.name).where(_VMS.c.host_id.is_not(None))
_VM_ROWS = select(_VMS).where(_VMS.c.name.in_(bindparam("names", expanding=True)))
_VM_ROW_LOCKED = _VM_ROW.with_for_update()
_SET_STATES = (
    update(_VMS)
    .where(_VMS.c.name.in_(bindparam("names", expanding=True)))
    .values(state=bindparam("new_state"), detail=bindparam("new_detail"), updated_at=bindparam("now"))
    .returning(*_VMS.c)
)
_DELETE_VM = delete(_VMS).where(_VMS.c.name == bindparam("name"))
_DELETE_VMS = delete(_VMS).where(_VMS.c.name.in_(bindparam("names", expanding=True)))
_DRAW_SEQ = insert(_SEQUENCE).returning(_SEQUENCE.c.id)
_DROP_SEQ = delete(_SEQUENCE).where(_SEQUENCE.c.id == bindparam("seq"))
#: PostgreSQL: numbers from the counter table's own sequence (what an insert
#: into it draws), as many as asked, in one statement and without a row.
_NEXTVALS = (
    select(func.nextval(func.pg_get_serial_sequence(literal("vm_sequence"), literal("id"))).label("seq"))
    .select_from(func.generate_series(1, bindparam("count")))
    .order_by("seq")
)
_INSERT_VM, _INSERT_MEMBER, _INSERT_EVENT = insert(_VMS), insert(_MEMBERS), insert(_EVENTS)


class StoreError(Exception):
    """A request the store cannot carry out; nothing was changed."""


class UnknownHostError(StoreError):
    def __init__(self, host_id: str) -> None:
        super().__init__(f"unknown host {host_id!r}")
        self.host_id = host_id


class HostAuthError(StoreError, PinfoldError):
    """A registration whose proof does not hold for its host: `code` is the
    API's error code ("unauthorized", "host enrolled"), `detail` says why."""


class HostInUseError(StoreError):
    """A host to remove still has VMs (`names`), and removal was not forced."""

    def __init__(self, host_id: str, names: Sequence[str]) -> None:
        super().__init__(f"host {host_id!r} has {len(names)} VMs")
        self.host_id = host_id
        self.names = list(names)


class UnknownVMError(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown vm {name!r}")
        self.name = name


class RefusedError(StoreError):
    """The host has no room for the VM: `reason` is the feasibility check's
    text, `refusal` the same as data (None when the check gave only text)."""

    def __init__(self, host_id: str, reason: str, refusal: Refusal | None = None) -> None:
        super().__init__(f"host {host_id!r} refused: {reason}")
        self.host_id = host_id
        self.reason = reason
        self.refusal = refusal


class UnknownGroupError(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown group {name!r}")
        self.name = name


class GroupExistsError(StoreError):
    """A group of that name exists with another policy (`existing`)."""

    def __init__(self, existing: GroupRecord) -> None:
        super().__init__(f"group {existing.name!r} exists with policy {existing.policy.value}")
        self.existing = existing


class GroupInUseError(StoreError):
    """A group to delete still has members (`names`)."""

    def __init__(self, name: str, names: Sequence[str]) -> None:
        super().__init__(f"group {name!r} has {len(names)} VMs")
        self.name = name
        self.names = list(names)


class DuplicateVMError(StoreError):
    """A VM of that name exists already. Reservations are idempotent by name:
    the caller compares `existing` with its request and decides."""

    def __init__(self, existing: VMRecord) -> None:
        super().__init__(f"vm {existing.name!r} exists already")
        self.existing = existing


@dataclass(frozen=True, slots=True)
class HostRecord:
    id: str
    address: str
    #: SlackVM topology document (`pinfold.topology.slackvm_json.to_dict`)
    topology: Mapping[str, Any]
    critical_size: int
    reserved_memory_mib: int
    draining: bool
    registered_at: float
    last_heartbeat: float
    #: the last heartbeat's payload (usage, vNode status, GPUs), None before the first
    heartbeat: Mapping[str, Any] | None
    #: the topology's key: hosts of one model share it (and one parsed Topology)
    topology_digest: str = ""
    #: reported down ("host down" recorded) and not heard from since
    down: bool = False
    #: the period its agent said it sends heartbeats at (None: it did not say)
    heartbeat_period_s: float | None = None
    #: the agent's own API token, which the controller calls it with (None: an older agent)
    agent_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class HostShape:
    """What the scheduler's picture needs of a host (`ControllerStore.shapes`):
    its size, without its heartbeat's JSON or its credentials."""

    id: str
    topology: Mapping[str, Any]
    topology_digest: str
    critical_size: int
    reserved_memory_mib: int


class HostLiveness(NamedTuple):
    """A host as scheduling reads it each second (a tuple: 10,000 of them are
    made at once, and a frozen dataclass cost 2 us each)."""

    id: str
    draining: bool
    last_heartbeat: float
    down: bool = False
    heartbeat_period_s: float | None = None


@dataclass(frozen=True, slots=True)
class ReportedNIC:
    """A VM's NIC as its agent reported it: where it is, its MAC, its addresses."""

    network: str | None
    bridge: str | None
    mac: str
    addresses: tuple[str, ...] = ()

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> ReportedNIC:
        return cls(
            document.get("network"), document.get("bridge"), str(document.get("mac") or ""),
            tuple(document.get("addresses") or ()),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "bridge": self.bridge,
            "mac": self.mac,
            "addresses": list(self.addresses),
        }


@dataclass(frozen=True, slots=True)
class VMRecord:
    name: str
    #: reservation order; a host's VMs replay through the allocator in it
    seq: int
    host_id: str | None
    vcpus: int
    memory_mib: int
    ratio: float
    owner: str
    image: str
    state: VMState
    detail: str
    created_at: float
    updated_at: float
    #: the NICs its create asked for (the agent chooses the MACs not given)
    nics: tuple[NIC, ...] = ()
    #: the NICs its agent last reported, with their addresses (None: not yet)
    reported_nics: tuple[ReportedNIC, ...] | None = None
    #: while `migrating`: the host it moves to (its room is held there too)
    target_host_id: str | None = None
    #: the salted digest of its create's SSH keys and user data (`model.vm.first_boot_digest`;
    #: None: reserved before they were kept, migration 0009)
    first_boot_digest: str | None = None

    @property
    def spec(self) -> VMSpec:
        return VMSpec(self.name, self.vcpus, self.memory_mib, self.ratio)

    @property
    def request(self) -> VMRequest:
        """The request this VM was reserved for (what its agent is asked to create)."""
        return VMRequest(
            self.name, self.vcpus, self.memory_mib, self.ratio, self.owner, self.image, nics=self.nics
        )


@dataclass(frozen=True, slots=True)
class GroupRecord:
    name: str
    policy: GroupPolicy
    created_at: float
    #: its VMs, in reservation order
    members: tuple[str, ...] = ()

    @property
    def rule(self) -> GroupRule:
        """The group as the placement core applies it."""
        return GroupRule(self.name, self.policy, frozenset(self.members))


@dataclass(frozen=True, slots=True)
class MigrationRecord:
    """One live migration: `finished`, `seconds` and `outcome` ("done" or
    "failed") are None while it is in flight."""

    id: int
    vm: str
    source: str
    target: str
    started: float
    finished: float | None
    seconds: float | None
    outcome: str | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "vm": self.vm, "source": self.source, "target": self.target,
            "started": self.started, "finished": self.finished, "seconds": self.seconds,
            "outcome": self.outcome, "detail": self.detail,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to record along with another change."""

    kind: str
    subject: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    time: float
    kind: str
    subject: str
    detail: Mapping[str, Any]


class Holding(Protocol):
    """A VM holding room on a host, as an admission replays it: its name and size."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> VMSpec: ...


class HeldVM(NamedTuple):
    """What a reservation reads of each VM a host holds: its name and size,
    nothing else (building whole `VMRecord`s of a host's VMs under its lock
    was a third of a create's time with 100 VMs on the host). A tuple: made
    from each row and compared with the replay a controller kept
    (`Feasibility.on_host`) at C speed, where a frozen dataclass was a fifth
    of a create with 100 VMs on the host (issue 16)."""

    name: str
    vcpus: int
    memory_mib: int
    ratio: float

    @property
    def spec(self) -> VMSpec:
        return VMSpec(self.name, self.vcpus, self.memory_mib, self.ratio)

    @classmethod
    def of(cls, spec: VMSpec) -> HeldVM:
        """A VM admitted into a kept replay, as a row of it would read."""
        return cls(spec.name, spec.vcpus, spec.memory_mib, spec.ratio)


class SettledVM(NamedTuple):
    """What a heartbeat reads of each VM of its host: its name, state and
    last change, and the NICs its agent last reported when the beat has NICs
    to compare (None otherwise, or when none were reported). A whole
    `VMRecord` of each, every JSON column decoded, was half of a beat's time
    with 50 VMs on the host (issue 16)."""

    name: str
    state: VMState
    updated_at: float
    reported_nics: tuple[ReportedNIC, ...] | None = None


#: `fits(host, vms on it in seq order, new vm)`: None when it fits, else why
#: not: the text, or the text with the refusal as data.
Fits = Callable[[HostRecord, Sequence[Holding], VMRequest], str | tuple[str, Refusal] | None]


class Admission(Protocol):
    """One host under its lock, with its VMs: admits new VMs one after the other."""

    def admit(self, new: VMRequest) -> str | tuple[str, Refusal] | None:
        """None when `new` fits (it then counts for the next), else why not (as `Fits`)."""


#: `on_host(host, vms on it in seq order)`: the `Admission` for a batch on that host
OnHost = Callable[[HostRecord, Sequence[Holding]], Admission]


@dataclass(frozen=True)
class _Each:
    """A `Fits` as an `OnHost` for one VM: `reserve`'s single check."""

    fits: Fits

    def __call__(self, host: HostRecord, existing: Sequence[Holding]) -> Admission:
        return _Admit(self.fits, host, existing)


@dataclass(frozen=True)
class _Admit:
    fits: Fits
    host: HostRecord
    existing: Sequence[Holding]

    def admit(self, new: VMRequest) -> str | tuple[str, Refusal] | None:
        return self.fits(self.host, self.existing, new)


class ControllerStore:
    """Hosts, VMs and events on one engine (see `database.connect`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessions(engine)
        self._documents: dict[str, Mapping[str, Any]] = {}
        # a failed group's writers may have cached documents it stored: forget them all
        self._group = (
            GroupCommit(engine, on_failure=self._documents.clear) if engine.dialect.name == "sqlite" else None
        )

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def _fetch(self, statement: Any, params: Mapping[str, Any] | None = None) -> list[Row[Any]]:
        """One read-only statement's rows, without a session: on SQLite with
        no BEGIN and COMMIT around it (`database.one_statement`: one statement
        reads one snapshot), which were most of a short read's cost; on
        PostgreSQL in autocommit, without BEGIN and ROLLBACK."""
        with self.engine.connect() as connection:
            return list(one_statement(connection).execute(statement, dict(params or {})).all())

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A transaction that will write, committed when this returns: on
        SQLite it holds the write lock from its first read, so that what it
        reads cannot change before it commits, and it shares its commit with
        the writers around it (`group_commit`)."""
        if self._group is not None:
            with self._group.write() as session:
                yield session
            return
        with self._sessions() as session, session.begin():
            session.connection(execution_options={WRITE: True})
            yield session

    # -- hosts -----------------------------------------------------------------

    def register_host(
        self,
        host_id: str,
        address: str,
        topology: Mapping[str, Any],
        critical_size: int,
        reserved_memory_mib: int,
        now: float,
        heartbeat_period_s: float | None = None,
        *,
        proof: Proof | None = None,
        agent_token: str | None = None,
        event: NewEvent | None = None,
    ) -> HostRecord:
        """Add a host, or update a known one (an agent restarting, its
        topology changed): its `draining` flag, first registration time and
        VMs are kept; a host reported down is up again ("host up").

        `proof` is checked under the host's lock (`HostAuthError` if it does
        not hold, nothing changed): an `Enrolment` adds a host that holds no
        credential yet and gives it the enrolment's; a `HostCredential` only
        updates the host it was issued to. None: a caller inside the controller.
        `event` is recorded in the same transaction (one commit, not two)."""
        record, _ = self.register_host_with_vms(
            host_id, address, topology, critical_size, reserved_memory_mib, now, heartbeat_period_s,
            proof=proof, agent_token=agent_token, event=event,
        )  # fmt: skip
        return record

    def register_host_with_vms(
        self,
        host_id: str,
        address: str,
        topology: Mapping[str, Any],
        critical_size: int,
        reserved_memory_mib: int,
        now: float,
        heartbeat_period_s: float | None = None,
        *,
        proof: Proof | None = None,
        agent_token: str | None = None,
        event: NewEvent | None = None,
    ) -> tuple[HostRecord, list[VMRecord]]:
        """`register_host`, and the host's VMs as the same transaction saw
        them (none, without a query, for a host added now). Plain statements on
        the host's columns: building and flushing ORM objects was most of a
        registration's store time, and loading the row decoded its last
        heartbeat's JSON for nothing."""
        if not 1 <= len(host_id) <= HOST_ID_MAX:
            raise StoreError(f"a host id has 1 to {HOST_ID_MAX} characters, not {len(host_id)}")
        digest = self.digest(topology)
        values: dict[str, Any] = {
            "address": address, "topology_digest": digest, "critical_size": critical_size,
            "reserved_memory_mib": reserved_memory_mib, "heartbeat_period_s": heartbeat_period_s,
            "last_heartbeat": now, "down": False,
        }  # fmt: skip
        if isinstance(proof, Enrolment):
            values["credential_digest"] = proof.digest
        if agent_token is not None:
            values["agent_token"] = agent_token
        with self._write() as session:
            if digest not in self._documents:
                self._add_topology(session, digest, topology)
            known = session.execute(_HOST_ADMISSION, {"host_id": host_id}).first()
            if isinstance(proof, HostCredential) and session.get(RevokedCredential, proof.digest) is not None:
                # removed since the API looked: refused as revoked, so that its agent does not enrol
                raise HostAuthError("credential revoked", f"host {host_id} was removed (pinfold host remove)")
            _admit(None if known is None else known.credential_digest, host_id, proof)
            document = self._documents.get(digest) or dict(topology)
            vms: list[VMRecord] = []
            if known is None:
                session.execute(
                    _INSERT_HOST, {"id": host_id, "draining": False, "registered_at": now, **values}
                )
                record = HostRecord(
                    id=host_id, address=address, topology=document, topology_digest=digest,
                    critical_size=critical_size, reserved_memory_mib=reserved_memory_mib, draining=False,
                    registered_at=now, last_heartbeat=now, heartbeat=None, down=False,
                    heartbeat_period_s=heartbeat_period_s, agent_token=agent_token,
                )  # fmt: skip
            else:
                again = session.execute(_REGISTER_AGAIN, {"host_id": host_id, **values}).one()
                record = _host_record(again, document)
                vms = [_vm_record(vm) for vm in session.execute(_vms_on_host(host_id))]
                _heard_from(session, host_id, known.down, now)
            if event is not None:
                _add_events(session, [event], now)
        self._documents[digest] = document  # once committed: a later registration need not store it
        return record, vms

    def digest(self, topology: Mapping[str, Any]) -> str:
        """The key `topology` is stored under (`models.digest_of`). A document
        equal to one this process has seen has that one's key: comparing takes
        a tenth of a millisecond, the canonical JSON and its hash of a large
        server's document several (most of a registration). Equal documents are
        equal as Python values (1 == 1.0), which the topology parser reads alike."""
        for digest, document in list(self._documents.items()):  # other threads add to it
            if document is topology or document == topology:
                return digest
        return digest_of(topology)

    def topology(self, digest: str) -> Mapping[str, Any] | None:
        """The topology document stored under `digest`, or None: what a
        registration by digest (`topology_digest`) stands for."""
        if digest not in self._documents:
            with self._read() as session:
                self._load_documents(session, {digest})
        return self._documents.get(digest)

    def _add_topology(self, session: Session, digest: str, document: Mapping[str, Any]) -> None:
        """Store a topology document once; another replica storing the same
        one at the same moment is fine (a savepoint absorbs the conflict).
        Only its key is read to look: not the document."""
        if session.scalar(select(TopologyDocument.digest).where(TopologyDocument.digest == digest)) is None:
            try:
                with session.begin_nested():
                    session.add(TopologyDocument(digest=digest, document=dict(document)))
            except IntegrityError:
                pass

    def _host_record(self, session: Session, host: Host | Row[Any]) -> HostRecord:
        return self._host_records(session, [host])[0]

    def _host_records(self, session: Session, hosts: Sequence[Host | Row[Any]]) -> list[HostRecord]:
        """Records with their topology documents, each read from the database
        once per process (a document never changes under its digest)."""
        self._load_documents(session, {host.topology_digest for host in hosts})
        return [_host_record(host, self._documents[host.topology_digest]) for host in hosts]

    def _load_documents(self, session: Session, digests: set[str]) -> None:
        """Read the topology documents of `digests` this process has not read yet."""
        missing = digests - self._documents.keys()
        if missing:
            query = select(TopologyDocument).where(TopologyDocument.digest.in_(missing))
            for row in session.scalars(query):
                self._documents[row.digest] = row.document

    def heartbeat(self, host_id: str, payload: Mapping[str, Any], now: float) -> bool:
        """Store a host's heartbeat; False when the host is unknown (the agent
        should register again). A host reported down is up again ("host up")."""
        values = {"heartbeat": dict(payload), "last_heartbeat": now, "down": False}
        with self._write() as session:
            # A host that is up, as nearly every beat finds it: one statement. Its columns,
            # not the row: loading the row decoded the last heartbeat's JSON.
            up = update(_HOSTS).where(Host.id == host_id, Host.down.is_(False)).values(values)
            if session.execute(up).rowcount:  # type: ignore[attr-defined]
                return True
            down = session.scalar(select(Host.down).where(Host.id == host_id).with_for_update())
            if down is None:
                return False
            session.execute(update(_HOSTS).where(Host.id == host_id).values(values))
            _heard_from(session, host_id, down, now)
            return True

    def set_reported_nics(self, host_id: str, changed: Mapping[str, Sequence[ReportedNIC]]) -> None:
        """Store the NICs an agent reported for these VMs of its host (the
        caller sends only the VMs whose NICs changed: a heartbeat that changes
        none writes nothing). A VM deleted or moved meanwhile is left alone."""
        if not changed:
            return
        with self._write() as session:
            for name, nics in changed.items():
                session.execute(
                    update(VM)
                    .where(VM.name == name, VM.host_id == host_id)
                    .values(reported_nics=[nic.to_dict() for nic in nics])
                )

    def credential(self, host_id: str) -> str | None:
        """The digest of the host's credential (None: enrolled before host
        credentials); `UnknownHostError` when there is no such host."""
        # its column, not the row: every heartbeat is checked, and the row holds the last one's JSON
        rows = self._fetch(_CREDENTIAL, {"host_id": host_id})
        if not rows:
            raise UnknownHostError(host_id)
        digest: str | None = rows[0].credential_digest
        return digest

    def holder(self, digest: str) -> str | None:
        """The id of the host whose credential has this digest, if any."""
        rows = self._fetch(_HOLDER, {"digest": digest})
        return str(rows[0].id) if rows else None

    def revoked(self, digest: str) -> bool:
        """Whether this is the credential of a removed host. Asked before
        every heartbeat: one statement (`_fetch`), not a session's
        transaction (its BEGIN and COMMIT were half of a beat's check)."""
        return bool(self._fetch(_REVOKED, {"digest": digest}))

    def remove_host(self, host_id: str, force: bool, now: float) -> list[VMRecord]:
        """Remove a host and revoke its credential ("host removed"), and with
        `force` forget its VMs (their agent is not asked: it may be gone; the
        migrations of those moving off it end as failed);
        without, `HostInUseError` while it has VMs. The VMs forgotten."""
        with self._write() as session:
            host = session.get(Host, host_id, with_for_update=True)
            if host is None:
                raise UnknownHostError(host_id)
            rows = list(session.scalars(_vms_on(host_id)))
            if rows and not force:
                raise HostInUseError(host_id, [row.name for row in rows])
            for row in rows:
                session.delete(row)
            session.execute(
                update(Migration)
                .where(Migration.vm.in_([row.name for row in rows]), Migration.outcome.is_(None))
                .values(
                    outcome="failed",
                    finished=now,
                    seconds=now - Migration.started,
                    detail=f"{host_id} was removed",
                )
            )
            session.flush()  # the VMs first: they refer to the host
            if host.credential_digest is not None:
                session.add(RevokedCredential(digest=host.credential_digest, host_id=host_id, revoked_at=now))
            session.delete(host)
            forgotten = [_vm_record(row) for row in rows]
            detail = {"vms": [vm.name for vm in forgotten]}
            session.add(_event_row(NewEvent("host removed", host_id, detail), now))
            return forgotten

    def mark_down(self, host_id: str, silent_since: float, now: float) -> bool:
        """Report a host down ("host down") if it is not already and has sent
        nothing since `silent_since`: True when this call reported it. The
        condition is checked in the UPDATE, so a heartbeat that arrived since
        the caller looked wins, and of two replicas only one reports it."""
        query = (
            update(Host)
            .where(Host.id == host_id, Host.down.is_(False), Host.last_heartbeat < silent_since)
            .values(down=True)
        )
        with self._write() as session:
            if session.execute(query).rowcount == 0:  # type: ignore[attr-defined]
                return False
            session.add(_event_row(NewEvent("host down", host_id, {}), now))
            return True

    def set_draining(self, host_id: str, draining: bool) -> HostRecord:
        """Mark a host draining (no new VMs) or not. Under the host's lock, so
        a reservation in flight either sees the flag or commits before it."""
        with self._write() as session:
            host = session.get(Host, host_id, with_for_update=True)
            if host is None:
                raise UnknownHostError(host_id)
            host.draining = draining
            session.flush()
            return self._host_record(session, host)

    def hosts(self) -> list[HostRecord]:
        with self._read() as session:
            return self._host_records(session, list(session.scalars(select(Host).order_by(Host.id))))

    def shapes(self) -> list[HostShape]:
        """Every host's shape, in id order: what a controller's picture is built
        from at start. A read of whole rows (with their last heartbeat's JSON)
        was most of a restart with 10,000 hosts."""
        columns = (Host.id, Host.topology_digest, Host.critical_size, Host.reserved_memory_mib)
        with self._read() as session:
            rows = list(session.execute(select(*columns).order_by(Host.id)))
            self._load_documents(session, {row[1] for row in rows})
        return [
            HostShape(id_, self._documents[digest], digest, size, memory)
            for id_, digest, size, memory in rows
        ]

    def liveness(self) -> list[HostLiveness]:
        """Every host's id, draining flag and last heartbeat, and nothing else:
        what scheduling needs on each request, cheap with many hosts."""
        return [HostLiveness._make(row) for row in self._fetch(_LIVENESS)]

    def host(self, host_id: str, heartbeat: bool = True) -> HostRecord | None:
        """The host, or None; not `heartbeat`: its last heartbeat left out
        (None), what a create or a delete needs of it (its address, size and
        token) without decoding the heartbeat's JSON."""
        rows = self._fetch(_HOST_ROW if heartbeat else _HOST_ROW_LIGHT, {"host_id": host_id})
        if not rows:
            return None
        if rows[0].topology_digest not in self._documents:
            with self._read() as session:
                self._load_documents(session, {rows[0].topology_digest})
        return _host_record(rows[0], self._documents[rows[0].topology_digest])

    # -- VMs -------------------------------------------------------------------

    def reserve(
        self, vm: VMRequest, host_id: str, fits: Fits, now: float, group: str | None = None
    ) -> VMRecord:
        """Take room for `vm` on the host, atomically with checking that it fits.

        Under the host's lock (`_reserve_rows`): load the host and the VMs it
        holds (every VM row holds its resources until deleted), ask `fits`,
        and insert the VM as `reserved` only if it fits. Raises `RefusedError`
        with `fits`'s text, `DuplicateVMError` when the name is taken (on any
        host), `UnknownHostError`. `group`: the VM joins that group, if its
        rule allows this host (`_check_group`: `RefusedError`, or `UnknownGroupError`).
        """
        try:
            with self._write() as session:
                (outcome,) = self._reserve_rows(session, [vm], host_id, _Each(fits), now, group)
                if isinstance(outcome, StoreError):
                    raise outcome
                return outcome
        except IntegrityError as exc:
            # The same name reserved at the same moment on another host (another lock).
            raise self._taken(vm.name, exc) from None

    def reserve_many(
        self, vms: Sequence[VMRequest], host_id: str, on_host: OnHost, now: float, group: str | None = None
    ) -> list[VMRecord | RefusedError | DuplicateVMError]:
        """`reserve` for many VMs on one host in one transaction (a bulk
        create's): under the host's lock, its VMs read and replayed once
        (`on_host`), then each of `vms` in order is admitted or refused
        (`Admission.admit`, which keeps what it admits: the next is checked
        with it there), as if each were reserved alone in this order. Each
        VM's outcome, in order: its record, or why it was refused (a name
        taken, no room). `UnknownHostError` refuses them all; `DuplicateVMError`
        (raised) when a name was reserved at the same moment on another host
        under another lock (nothing reserved: the caller tries them alone).
        `group`: each VM joins it if its rule allows the host, judged with
        the batch's earlier VMs as members (`_check_group`)."""
        try:
            with self._write() as session:
                return self._reserve_rows(session, vms, host_id, on_host, now, group)
        except IntegrityError as exc:
            for vm in vms:
                if self.vm(vm.name) is not None:
                    raise self._taken(vm.name, exc) from None
            raise StoreError(f"a batch on host {host_id!r} breaks a rule of the schema: {exc.orig}") from exc

    def _reserve_rows(
        self,
        session: Session,
        vms: Sequence[VMRequest],
        host_id: str,
        on_host: OnHost,
        now: float,
        group: str | None = None,
    ) -> list[VMRecord | RefusedError | DuplicateVMError]:
        """The VM rows of a reservation, inserted under the host's lock (see
        `reserve_many`): what the host holds (its VMs and those moving to it)
        replayed once. A group's rule is checked before the room, so that a
        VM it refuses is never admitted into the replayed allocator."""
        admission = self._admission(session, host_id, on_host)
        names = [vm.name for vm in vms]
        taken = {row.name: row for row in session.execute(_VM_ROWS, {"names": names})}
        outcomes: list[VMRecord | RefusedError | DuplicateVMError] = []
        numbers = _seq_numbers(session, len(vms))
        for vm in vms:
            if vm.name in taken:
                outcomes.append(DuplicateVMError(_vm_record(taken[vm.name])))
                continue
            try:
                if group is not None:
                    _check_group(session, group, host_id)
            except RefusedError as refused:
                outcomes.append(refused)
                continue
            reason = admission.admit(vm)
            if reason is not None:
                outcomes.append(RefusedError(host_id, *_reason(reason)))
                continue
            record = _reserved_record(vm, host_id, next(numbers), now)
            session.execute(_INSERT_VM, _vm_values(record))
            if group is not None:  # the next VM's check sees this one as a member
                session.execute(_INSERT_MEMBER, {"vm_name": vm.name, "group_name": group})
            outcomes.append(record)
        return outcomes

    def _taken(self, name: str, exc: IntegrityError) -> StoreError:
        taken = self.vm(name)
        if taken is None:
            return StoreError(f"vm {name!r} breaks a rule of the schema: {exc.orig}")
        return DuplicateVMError(taken)

    @staticmethod
    def _locked(session: Session, host_id: str) -> Row[Any]:
        """The host's row (without its heartbeat), locked until the transaction
        ends (`UnknownHostError`)."""
        host = session.execute(_HOST_ROW_LOCKED, {"host_id": host_id}).first()
        if host is None:
            raise UnknownHostError(host_id)
        return host

    def _admission(self, session: Session, host_id: str, on_host: OnHost) -> Admission:
        """The reservation's check, for a create and a migration alike: the
        host locked (`_locked`, `UnknownHostError`) and what it holds (its VMs
        and those moving to it, in order) handed to `on_host`."""
        host = self._locked(session, host_id)
        on_it = list(map(HeldVM._make, session.execute(_HELD_ON, {"host_id": host_id})))
        return on_host(self._host_record(session, host), on_it)

    # -- migrations ------------------------------------------------------------

    def reserve_migration(self, name: str, target: str, on_host: OnHost, now: float) -> MigrationRecord:
        """Hold room for running VM `name` on `target` as a create's
        reservation does (the same admission, `on_host`, under the target's lock), mark it
        `migrating` and record the migration as in flight, in one
        transaction. `UnknownVMError`; `StoreError` for a VM that is not
        running or is on `target` already; `RefusedError`, `UnknownHostError`."""
        with self._write() as session:
            row = session.get(VM, name)
            if row is None:
                raise UnknownVMError(name)
            if row.state != VMState.RUNNING.value or row.host_id is None:
                raise StoreError(f"{name} is {row.state}: only a running VM on a host moves live")
            if row.host_id == target:
                raise StoreError(f"{name} is on {target} already")
            source = row.host_id
            reason = self._admission(session, target, on_host).admit(_vm_record(row).request)
            if reason is not None:
                raise RefusedError(target, *_reason(reason))
            group = session.scalar(select(GroupMember.group_name).where(GroupMember.vm_name == name))
            if group is not None:
                _check_group(session, group, target, moving=name)
            row = session.get(VM, name, with_for_update=True, populate_existing=True)
            if row is None or row.state != VMState.RUNNING.value or row.host_id != source:
                raise StoreError(f"{name} changed while its migration was being reserved")
            row.state, row.target_host_id, row.updated_at, row.detail = (
                VMState.MIGRATING.value,
                target,
                now,
                "",
            )
            migration = Migration(vm=name, source=source, target=target, started=now, detail="")
            session.add(migration)
            event = NewEvent("vm migrating", name, {"source": source, "target": target})
            session.add(_event_row(event, now))
            session.flush()
            return _migration_record(migration)

    def end_migration(
        self,
        migration_id: int,
        now: float,
        *,
        moved: bool,
        detail: str = "",
        state: VMState = VMState.RUNNING,
    ) -> MigrationRecord | None:
        """Record a migration's end: `moved`, the VM's row goes to the target
        (with a new place in the reservation order: the target's agent
        allocated it after its VMs), else it stays on its source in `state`;
        the target's room is released either way. None when the migration had
        ended already (another replica, or a heartbeat, ended it first)."""
        with self._write() as session:
            migration = session.get(Migration, migration_id, with_for_update=True)
            if migration is None or migration.outcome is not None:
                return None
            row = session.get(VM, migration.vm, with_for_update=True)
            if (
                row is not None
                and row.state == VMState.MIGRATING.value
                and row.target_host_id == migration.target
            ):
                if moved:
                    row.host_id, row.seq = migration.target, _next_seq(session)
                    row.reported_nics = None  # the target reports them anew
                row.state, row.target_host_id, row.updated_at, row.detail = state.value, None, now, detail
            migration.finished, migration.seconds = now, max(0.0, now - migration.started)
            migration.outcome, migration.detail = ("done" if moved else "failed"), detail
            kind = "vm migrated" if moved else "vm migration failed"
            facts = {"source": migration.source, "target": migration.target, "seconds": migration.seconds}
            session.add(_event_row(NewEvent(kind, migration.vm, {**facts, "detail": detail}), now))
            session.flush()
            return _migration_record(migration)

    def migrations(self, since: float = 0.0, limit: int = 100) -> list[MigrationRecord]:
        """Those in flight, and those started since `since`: the latest first."""
        query = (
            select(Migration)
            .where(or_(Migration.outcome.is_(None), Migration.started >= since))
            .order_by(Migration.started.desc(), Migration.id.desc())
            .limit(limit)
        )
        with self._read() as session:
            return [_migration_record(row) for row in session.scalars(query)]

    def migration_of(self, name: str) -> MigrationRecord | None:
        """The migration of VM `name` in flight, if any."""
        query = select(Migration).where(Migration.vm == name, Migration.outcome.is_(None))
        with self._read() as session:
            row = session.scalars(query.order_by(Migration.id.desc())).first()
            return _migration_record(row) if row is not None else None

    def set_vm_state(
        self, name: str, state: VMState | str, now: float, detail: str = "", event: NewEvent | None = None
    ) -> VMRecord:
        """Record what became of a VM; `detail` holds the error text of a
        failure. `event`, when given, is recorded in the same transaction
        (one commit, one fsync, instead of two)."""
        state = _vm_state(state)
        with self._write() as session:
            (record,) = _set_states(session, [name], state, now, detail)
            if record is None:
                raise UnknownVMError(name)
            _add_events(session, [event] if event is not None else [], now)
            return record

    def set_vm_states(
        self, names: Sequence[str], state: VMState, now: float, events: Mapping[str, NewEvent]
    ) -> list[VMRecord | None]:
        """`set_vm_state` for many VMs (a host's share of a bulk create, made
        by its agent) in one transaction, each with its event from `events`
        if there is one; each one's record in order, None for a VM gone
        (deleted by another request meanwhile)."""
        state = _vm_state(state)
        with self._write() as session:
            records = _set_states(session, names, state, now)
            _add_events(session, [events[r.name] for r in records if r is not None and r.name in events], now)
            return records

    def delete_vm(
        self, name: str, event: NewEvent | None = None, now: float = 0.0, unchanged_since: float | None = None
    ) -> VMRecord | None:
        """Forget a VM, freeing its room on its host; the record it had, or
        None when there was no such VM. `event` goes in the same transaction.
        `unchanged_since`: only if the VM was last changed then (a decision
        taken on an older read, such as a heartbeat's, holds no more once
        another request touched the VM: `claim`)."""
        with self._write() as session:
            row = session.execute(_VM_ROW_LOCKED, {"name": name}).first()
            if row is None or (unchanged_since is not None and row.updated_at != unchanged_since):
                return None
            session.execute(_DELETE_VM, {"name": name})
            _add_events(session, [event] if event is not None else [], now)
            return _vm_record(row)

    def delete_vms(self, names: Sequence[str], events: Sequence[NewEvent], now: float) -> None:
        """Forget VMs `names` in one transaction with `events` (one gone
        meanwhile is skipped, its event recorded all the same, as its agent
        deleted it)."""
        with self._write() as session:
            session.execute(_DELETE_VMS, {"names": list(names)})
            _add_events(session, events, now)

    def vms_named(self, names: Sequence[str]) -> dict[str, VMRecord]:
        """The VMs of these names that there are, by name, in one statement."""
        return {row.name: _vm_record(row) for row in self._fetch(_VM_ROWS, {"names": list(names)})}

    def claim(self, name: str, updated_at: float, now: float) -> VMRecord | None:
        """Take over a stale reservation: touch it (`updated_at` = `now`) if
        it is still `reserved` and unchanged since `updated_at`; the record,
        or None when it changed or is gone (someone else acted on it)."""
        with self._write() as session:
            row = session.get(VM, name, with_for_update=True)
            if row is None or row.state != VMState.RESERVED.value or row.updated_at != updated_at:
                return None
            row.updated_at = now
            session.flush()
            return _vm_record(row)

    def vm(self, name: str) -> VMRecord | None:
        rows = self._fetch(_VM_ROW, {"name": name})
        return _vm_record(rows[0]) if rows else None

    def taken(self, names: Sequence[str]) -> set[str]:
        """Which of `names` are VMs' names: one query per thousand, where a
        bulk create asked `vm` once per name (a sixth of its time)."""
        found: set[str] = set()
        with self._read() as session:
            for start in range(0, len(names), 1000):
                chunk = list(names[start : start + 1000])
                found.update(session.scalars(select(VM.name).where(VM.name.in_(chunk))))
        return found

    def settled_on(self, host_id: str, nics: bool = False) -> list[SettledVM]:
        """A host's VMs as its heartbeat settles them; `nics`: with the NICs
        their agent last reported (read only for a beat that reports NICs)."""
        rows = self._fetch(_SETTLED_NICS_ON if nics else _SETTLED_ON, {"host_id": host_id})
        return [
            SettledVM(
                row.name,
                VMState(row.state),
                row.updated_at,
                _reported_nics(row.reported_nics) if nics else None,
            )
            for row in rows
        ]

    def vms(self, host_id: str | None = None) -> list[VMRecord]:
        """Every VM, or those on one host, in reservation order."""
        query = select(_VMS).order_by(_VMS.c.seq) if host_id is None else _vms_on_host(host_id)
        return [_vm_record(row) for row in self._fetch(query)]

    def names_on_hosts(self) -> dict[str, set[str]]:
        """Each host's VM names (a host without VMs is absent): all the
        picture's periodic check needs. Every VM's whole record was 19 ms of
        the controller's time a period with 1,000 VMs (issue 16), and grows
        with them, while the records of only the hosts that differ are needed."""
        names: dict[str, set[str]] = {}
        for row in self._fetch(_VM_HOSTS):
            names.setdefault(row.host_id, set()).add(row.name)
        return names

    # -- VM groups ---------------------------------------------------------------

    def create_group(self, name: str, policy: GroupPolicy, now: float) -> tuple[GroupRecord, bool]:
        """Add a group; the same name and policy again gives the group there
        (False: not made by this call); another policy, `GroupExistsError`."""
        try:
            with self._write() as session:
                row = session.get(VMGroup, name)
                if row is None:
                    row = VMGroup(name=name, policy=policy.value, created_at=now)
                    session.add(row)
                    session.flush()
                    return _group_record(row, ()), True
        except IntegrityError:  # another request made it at the same moment
            pass
        existing = self.group(name)
        if existing is None:
            raise StoreError(f"group {name!r}: made and deleted at once by other requests")
        if existing.policy is not policy:
            raise GroupExistsError(existing)
        return existing, False

    def group(self, name: str) -> GroupRecord | None:
        with self._read() as session:
            row = session.get(VMGroup, name)
            return None if row is None else _group_record(row, _members(session, name))

    def group_of(self, vm: str) -> str | None:
        """The name of the group VM `vm` is in, if any."""
        with self._read() as session:
            member = session.get(GroupMember, vm)
            return None if member is None else member.group_name

    def groups(self) -> list[GroupRecord]:
        """Every group with its members, by name."""
        members = select(GroupMember.group_name, GroupMember.vm_name).join(VM).order_by(VM.seq)
        with self._read() as session:
            by_group: dict[str, list[str]] = {}
            for group_name, vm_name in session.execute(members):
                by_group.setdefault(group_name, []).append(vm_name)
            rows = session.scalars(select(VMGroup).order_by(VMGroup.name))
            return [_group_record(row, by_group.get(row.name, ())) for row in rows]

    def delete_group(self, name: str) -> GroupRecord:
        """Delete a group with no members (`GroupInUseError` else, under the
        group's lock, so that no reservation joins it meanwhile)."""
        with self._write() as session:
            row = session.get(VMGroup, name, with_for_update=True)
            if row is None:
                raise UnknownGroupError(name)
            members = _members(session, name)
            if members:
                raise GroupInUseError(name, members)
            session.delete(row)
            return _group_record(row, ())

    # -- events ----------------------------------------------------------------

    def add_event(self, kind: str, subject: str, detail: Mapping[str, Any], now: float) -> EventRecord:
        with self._write() as session:
            row = _event_row(NewEvent(kind, subject, detail), now)
            session.add(row)
            session.flush()
            return _event_record(row)

    def events(self, after_id: int = 0, limit: int = 100) -> list[EventRecord]:
        """Events with an id above `after_id`, oldest first: a reader pages
        through them by passing the last id it saw."""
        query = select(Event).where(Event.id > after_id).order_by(Event.id).limit(limit)
        with self._read() as session:
            return [_event_record(row) for row in session.scalars(query)]


def _admit(credential_digest: str | None, host_id: str, proof: Proof | None) -> None:
    """Raise `HostAuthError` unless `proof` may register `host_id` (see
    `register_host`), a host holding `credential_digest` (None: none, or no such host)."""
    if proof is None:
        return
    if isinstance(proof, HostCredential):
        if not matches(credential_digest, proof.digest):
            raise HostAuthError("unauthorized", f"this credential is not host {host_id}'s")
        return
    if credential_digest is not None:
        raise HostAuthError(
            "host enrolled",
            f"host {host_id} is enrolled already and registers with its own credential "
            f"(its agent's DATA_DIR/host.token), not the enrolment token; to enrol it anew, "
            f"remove it first: pinfold host remove {host_id}",
        )


def _heard_from(session: Session, host_id: str, down: bool, now: float) -> None:
    """A host heard from while reported `down` is up again: "host up" (the
    caller clears its flag)."""
    if down:
        _add_events(session, [NewEvent("host up", host_id, {})], now)


def _vms_on_host(host_id: str) -> Select[Any]:
    """A host's VMs as plain rows, in reservation order."""
    return select(_VMS).where(_VMS.c.host_id == host_id).order_by(_VMS.c.seq)


def _vms_on(host_id: str) -> Any:
    return select(VM).where(VM.host_id == host_id).order_by(VM.seq)


def _check_group(session: Session, name: str, host_id: str, moving: str | None = None) -> None:
    """A reservation's group check, under the host's lock (taken first) and
    the group's: `RefusedError` when the group's rule rules the host out
    (`placement.host_refusal`, the cluster choice's own check, on the
    members as the database has them), `UnknownGroupError` for no group. The
    group's lock makes two reservations in one group take turns, so the
    second sees the first's member even on another host (affinity).
    `moving`: a member being migrated, judged against the others only (its
    own place on its source rules nothing out)."""
    row = session.get(VMGroup, name, with_for_update=True)
    if row is None:
        raise UnknownGroupError(name)
    query = select(VM.name, VM.host_id).join(GroupMember).where(GroupMember.group_name == name)
    where: dict[str, str | None] = dict(session.execute(query).all())
    where.pop(moving or "", None)
    rule = GroupRule(name, GroupPolicy(row.policy), frozenset(where))
    refusal = host_refusal(rule, host_id, where)
    if refusal is not None:
        raise RefusedError(host_id, refusal.describe(), refusal)


def _members(session: Session, name: str) -> list[str]:
    query = select(VM.name).join(GroupMember).where(GroupMember.group_name == name).order_by(VM.seq)
    return list(session.scalars(query))


def _group_record(row: VMGroup, members: Sequence[str]) -> GroupRecord:
    return GroupRecord(row.name, GroupPolicy(row.policy), row.created_at, tuple(members))


def _reason(reason: str | tuple[str, Refusal]) -> tuple[str, Refusal | None]:
    return reason if isinstance(reason, tuple) else (reason, None)


def _reserved_record(vm: VMRequest, host_id: str, seq: int, now: float) -> VMRecord:
    return VMRecord(
        name=vm.name,
        seq=seq,
        host_id=host_id,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        ratio=float(vm.ratio),
        owner=vm.owner,
        image=vm.image,
        state=VMState.RESERVED,
        detail="",
        created_at=now,
        updated_at=now,
        nics=tuple(NIC(n.network, n.bridge, n.mac) for n in vm.nics),
        first_boot_digest=first_boot_digest(vm.ssh_keys, vm.user_data),
    )


def _vm_values(record: VMRecord) -> dict[str, Any]:
    """A new VM row's columns (`reported_nics` and `target_host_id` start empty)."""
    return {
        "name": record.name, "seq": record.seq, "host_id": record.host_id, "vcpus": record.vcpus,
        "memory_mib": record.memory_mib, "ratio": record.ratio, "owner": record.owner,
        "image": record.image, "state": record.state.value, "detail": record.detail,
        "created_at": record.created_at, "updated_at": record.updated_at,
        "nics": [{"network": n.network, "bridge": n.bridge, "mac": n.mac} for n in record.nics],
        "first_boot_digest": record.first_boot_digest,
    }  # fmt: skip


def _next_seq(session: Session) -> int:
    """The next VM number (see `_seq_numbers`)."""
    return next(_seq_numbers(session, 1))


def _seq_numbers(session: Session, count: int) -> Iterator[int]:
    """Up to `count` new VM numbers, increasing, never reused. On PostgreSQL
    drawn all at once, one statement for a batch: each statement is a round
    trip to the server, and an insert and a delete a VM were two of a
    create's 14 (BENCHMARKS.md, issue 16, fifteenth round); numbers of VMs the
    batch then refuses are skipped, which only leaves gaps in the order. On
    SQLite (no sequences, statements in process) one at a time, as needed, by
    inserting a row into the counter table and deleting it."""
    if count <= 0:
        return
    if session.get_bind().dialect.name == "postgresql":
        yield from session.execute(_NEXTVALS, {"count": count}).scalars()
        return
    for _ in range(count):
        seq: int = session.execute(_DRAW_SEQ).scalar_one()
        session.execute(_DROP_SEQ, {"seq": seq})
        yield seq


def _set_states(
    session: Session, names: Sequence[str], state: VMState, now: float, detail: str = ""
) -> list[VMRecord | None]:
    """Give VMs `names` a state (and `detail`), as table statements: each
    one's record after, in order, None for one that is gone. An UPDATE ...
    RETURNING, not ORM objects loaded and flushed (most of a create's second
    transaction)."""
    values = {"names": list(names), "new_state": state.value, "new_detail": detail, "now": now}
    rows = {row.name: _vm_record(row) for row in session.execute(_SET_STATES, values)}
    return [rows.get(name) for name in names]


def _vm_state(state: VMState | str) -> VMState:
    """One of the controller's states (the agent's own would break the CHECK)."""
    if state not in CONTROLLER_STATES:
        valid = ", ".join(s.value for s in CONTROLLER_STATES)
        raise StoreError(f"unknown vm state {state!r}: one of {valid}")
    return VMState(state)


def _add_events(session: Session, events: Sequence[NewEvent], now: float) -> None:
    """Record `events` in the session's transaction with one plain INSERT."""
    if events:
        session.execute(_INSERT_EVENT, [_event_values(event, now) for event in events])


def _event_row(event: NewEvent, now: float) -> Event:
    return Event(**_event_values(event, now))


def _event_values(event: NewEvent, now: float) -> dict[str, Any]:
    return {"time": now, "kind": event.kind, "subject": event.subject, "detail": dict(event.detail)}


def _host_record(host: Host | Row[Any], topology: Mapping[str, Any]) -> HostRecord:
    return HostRecord(
        id=host.id,
        address=host.address,
        topology=topology,
        topology_digest=host.topology_digest,
        critical_size=host.critical_size,
        reserved_memory_mib=host.reserved_memory_mib,
        draining=host.draining,
        registered_at=host.registered_at,
        last_heartbeat=host.last_heartbeat,
        heartbeat=host.heartbeat,
        down=host.down,
        heartbeat_period_s=host.heartbeat_period_s,
        agent_token=host.agent_token,
    )


def _vm_record(row: VM | Row[Any]) -> VMRecord:
    return VMRecord(
        name=row.name,
        seq=row.seq,
        host_id=row.host_id,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        ratio=row.ratio,
        owner=row.owner,
        image=row.image,
        state=VMState(row.state),
        detail=row.detail,
        created_at=row.created_at,
        updated_at=row.updated_at,
        nics=tuple(NIC(n.get("network", ""), n.get("bridge", ""), n.get("mac", "")) for n in row.nics or ()),
        reported_nics=_reported_nics(row.reported_nics),
        target_host_id=row.target_host_id,
        first_boot_digest=row.first_boot_digest,
    )


def _reported_nics(column: Sequence[Mapping[str, Any]] | None) -> tuple[ReportedNIC, ...] | None:
    """The `reported_nics` column's NICs (None: the agent never reported any)."""
    return tuple(ReportedNIC.of(nic) for nic in column) if column is not None else None


def _migration_record(row: Migration) -> MigrationRecord:
    return MigrationRecord(
        id=row.id, vm=row.vm, source=row.source, target=row.target, started=row.started,
        finished=row.finished, seconds=row.seconds, outcome=row.outcome, detail=row.detail,
    )  # fmt: skip


def _event_record(row: Event) -> EventRecord:
    return EventRecord(id=row.id, time=row.time, kind=row.kind, subject=row.subject, detail=row.detail)
