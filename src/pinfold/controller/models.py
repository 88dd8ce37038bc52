"""The controller's tables as SQLAlchemy declarative models.

The schema is created and changed only by the Alembic migrations in
`migrations/versions` (a test checks they match these models); the models
are what the store queries with. Times are epoch seconds as floats, so that
SQLite and PostgreSQL store them the same way and callers inject the clock.
The CHECK constraints keep a bug from persisting a VM no host could hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Double, ForeignKey, Index, Integer, MetaData, String, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pinfold.model.lifecycle import VMState
from pinfold.topology import slackvm_json

__all__ = [
    "HOST_ID_MAX",
    "VM",
    "Base",
    "Event",
    "GroupMember",
    "Host",
    "Migration",
    "RevokedCredential",
    "TopologyDocument",
    "VMGroup",
    "VMSequence",
    "VMState",
    "digest_of",
]

#: "s256$" + 32 hex digits of salt + "$" + 64 of SHA-256 is 102 characters; room for another scheme
FIRST_BOOT_DIGEST_MAX = 160
#: A host id is a DNS label: 1 to 63 characters (the CHECK on hosts.id says 63 too).
HOST_ID_MAX = 63

# Named constraints, so that migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TopologyDocument(Base):
    """A host topology (SlackVM's document), stored once however many hosts
    share it: a cluster has few host models and many hosts, and a large
    server's document is about 180 KB."""

    __tablename__ = "topologies"

    #: SHA-256 of the document's canonical JSON (sorted keys, no spaces)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)


class Host(Base):
    __tablename__ = "hosts"
    __table_args__ = (
        CheckConstraint("length(id) BETWEEN 1 AND 63", name="id_length"),
        # what scheduling reads of every host each second (`ControllerStore.liveness`),
        # read from this index alone: in the table, `down` and `heartbeat_period_s`
        # come after the heartbeat's JSON, whose overflow pages SQLite would walk
        Index("ix_hosts_liveness", "id", "draining", "last_heartbeat", "down", "heartbeat_period_s"),
    )

    id: Mapped[str] = mapped_column(String(HOST_ID_MAX), primary_key=True)
    address: Mapped[str] = mapped_column(String(2048))
    topology_digest: Mapped[str] = mapped_column(ForeignKey("topologies.digest"))
    critical_size: Mapped[int] = mapped_column(Integer)
    reserved_memory_mib: Mapped[int] = mapped_column(Integer)
    draining: Mapped[bool] = mapped_column(default=False)
    registered_at: Mapped[float] = mapped_column(Double)
    last_heartbeat: Mapped[float] = mapped_column(Double)
    heartbeat: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: a "host down" event was recorded and no heartbeat came since: stored, so
    #: that a restarted controller (or another replica) neither repeats the event
    #: nor misses the "host up" that follows
    down: Mapped[bool] = mapped_column(default=False, server_default=false())
    #: the period its agent sends heartbeats at, if it said so at registration
    heartbeat_period_s: Mapped[float | None] = mapped_column(Double)
    #: SHA-256 (hex) of the host's own credential, issued at enrolment; None for
    #: a host enrolled before host credentials (its next enrolment issues one)
    credential_digest: Mapped[str | None] = mapped_column(String(64))
    #: the agent's own API token, as it is: the controller presents it on every
    #: call to this agent (None: an older agent; the enrolment token is used)
    agent_token: Mapped[str | None] = mapped_column(String(512))


class RevokedCredential(Base):
    """The credential of a host removed with `pinfold host remove`: its
    agent's heartbeats and registrations are answered 403 "credential revoked"
    (not 404, which would have the agent enrol again by itself)."""

    __tablename__ = "revoked_credentials"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(HOST_ID_MAX))
    revoked_at: Mapped[float] = mapped_column(Double)


class VMSequence(Base):
    """A counter for `VM.seq`: one row is inserted (and deleted) per
    reservation to draw the next number. An autoincrementing column that is
    not the primary key exists on PostgreSQL but not on SQLite; this table
    works on both, and on PostgreSQL draws from a sequence without locking."""

    __tablename__ = "vm_sequence"
    __table_args__ = ({"sqlite_autoincrement": True},)  # never reuse a number

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)


class VM(Base):
    __tablename__ = "vms"
    __table_args__ = (
        CheckConstraint("vcpus >= 1", name="vcpus_positive"),
        CheckConstraint("memory_mib >= 1", name="memory_positive"),
        CheckConstraint("ratio >= 1.0", name="ratio_at_least_one"),
        # lifecycle.CONTROLLER_STATES; a new state needs a migration (tests check they agree)
        CheckConstraint(
            "state IN ('reserved', 'running', 'paused', 'shutoff', 'failed', 'deleting', 'missing', "
            "'migrating')",
            name="state_known",
        ),
    )

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: the order of reservation: a host's VMs replay through the allocator in it
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    ratio: Mapped[float] = mapped_column(Double)
    owner: Mapped[str] = mapped_column(String(255), default="")
    image: Mapped[str] = mapped_column(String(2048), default="")
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String, default="")
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    #: the NICs asked for, [{"network", "bridge", "mac"}] ("" for what was not given)
    nics: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list, server_default="[]")
    #: the NICs its agent last reported, [{"network", "bridge", "mac", "addresses"}]
    #: (None: not reported yet); written only when a heartbeat changes them
    reported_nics: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    #: while `migrating`: the host it moves to, where its room is held too (no foreign
    #: key: removing that host with --force leaves the move to fail, not the removal)
    target_host_id: Mapped[str | None] = mapped_column(String(HOST_ID_MAX), index=True)
    #: `pinfold.model.vm.first_boot_digest` of the create's SSH keys and user data (kept
    #: themselves by its agent's seed only): a repeated create with others is refused.
    #: None: reserved before migration 0009, its inputs unknown (any repeat matches)
    first_boot_digest: Mapped[str | None] = mapped_column(String(FIRST_BOOT_DIGEST_MAX))


class Migration(Base):
    """One live migration, in flight (`finished` None) or done: what
    `GET /api/v1/migrations` lists and the consolidation budget counts."""

    __tablename__ = "migrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm: Mapped[str] = mapped_column(String(255), index=True)
    source: Mapped[str] = mapped_column(String(HOST_ID_MAX))
    target: Mapped[str] = mapped_column(String(HOST_ID_MAX))
    started: Mapped[float] = mapped_column(Double, index=True)
    finished: Mapped[float | None] = mapped_column(Double)
    seconds: Mapped[float | None] = mapped_column(Double)
    #: None while in flight, then "done" or "failed"
    outcome: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String, default="")


class VMGroup(Base):
    """A VM group, as Nova's server groups: its policy says whether its members
    share hosts or keep apart (`pinfold.placement.groups`). A group with
    members cannot be deleted (the foreign key of `group_members` says so too)."""

    __tablename__ = "groups"
    __table_args__ = (
        # placement.GroupPolicy; a new policy needs a migration (tests check they agree)
        CheckConstraint(
            "policy IN ('affinity', 'anti-affinity', 'soft-affinity', 'soft-anti-affinity')",
            name="policy_known",
        ),
    )

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    policy: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Double)


class GroupMember(Base):
    """A VM's group (at most one, as in Nova): written with the VM's
    reservation, in its transaction, and gone with the VM's row."""

    __tablename__ = "group_members"

    vm_name: Mapped[str] = mapped_column(ForeignKey("vms.name", ondelete="CASCADE"), primary_key=True)
    group_name: Mapped[str] = mapped_column(ForeignKey("groups.name"), index=True)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Double)
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


def digest_of(document: Mapping[str, Any]) -> str:
    """The key a topology document is stored under (`slackvm_json.digest`:
    an agent computes the same key to register by it)."""
    return slackvm_json.digest(document)
