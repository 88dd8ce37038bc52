"""The agent's durable state: SQLite in the data directory.

It holds the VMs (in deploy order), their NICs (keyed by the VM's domain,
which never changes, with the MAC chosen for each, unique on the host), each
vNode's CPUs (in the order they were added), the operations under way and the
networks the agent made itself (only those it may ever remove). A VM's domain keeps the name it was
created with: a warm-pool VM handed out is renamed here and in the allocator,
not in libvirt (a running domain cannot be renamed). Every change is one transaction, written
with `synchronous=FULL`, and committed before the agent acknowledges it (but for the
clearing of a pending mark, which the next start would redo: `_transaction`); the
schema itself refuses a CPU in two vNodes (UNIQUE) so a bug cannot persist one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pinfold.model.lifecycle import VMState
from pinfold.model.vm import NIC, VMRequest
from pinfold.placement import HostSnapshot, VMSpec
from pinfold.private import private_database

__all__ = ["Pending", "Store", "StoredVM"]

SCHEMA_VERSION = 3
_NICS = """
CREATE TABLE IF NOT EXISTS nics (
    domain TEXT NOT NULL REFERENCES vms (domain) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('network', 'bridge')),
    source TEXT NOT NULL,
    mac TEXT NOT NULL UNIQUE,
    PRIMARY KEY (domain, position)
);
CREATE TABLE IF NOT EXISTS owned_networks (name TEXT PRIMARY KEY);
"""
SCHEMA = (
    _NICS
    + """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vms (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    vcpus INTEGER NOT NULL CHECK (vcpus >= 1),
    memory_mib INTEGER NOT NULL CHECK (memory_mib >= 1),
    ratio REAL NOT NULL CHECK (ratio >= 1.0),
    owner TEXT NOT NULL DEFAULT '',
    image TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    pending TEXT,
    domain TEXT NOT NULL,
    pool TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS vms_domain ON vms (domain);
CREATE TABLE IF NOT EXISTS vnode_cpus (
    ratio REAL NOT NULL,
    position INTEGER NOT NULL,
    cpu INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (ratio, position)
);
"""
)


class Pending(StrEnum):
    """An operation accepted and stored but not yet confirmed done."""

    CREATE = "create"
    DELETE = "delete"
    #: a graceful shutdown waiting for the guest (the agent's lock is not held meanwhile)
    SHUTDOWN = "shutdown"
    #: a live migration's source sending the guest (the lock is not held meanwhile)
    MIGRATE_OUT = "migrate-out"
    #: a live migration's target: the VM reserved here, its guest not yet confirmed arrived
    INCOMING = "incoming"


#: from schema 1: add the domain name (equal to the VM's name until then) and the pool
MIGRATIONS = {
    1: (
        "ALTER TABLE vms ADD COLUMN domain TEXT NOT NULL DEFAULT ''",
        "UPDATE vms SET domain = name",
        "ALTER TABLE vms ADD COLUMN pool TEXT NOT NULL DEFAULT ''",
        "CREATE UNIQUE INDEX IF NOT EXISTS vms_domain ON vms (domain)",
    ),
    #: from schema 2: the NICs (none for the VMs made before) and the networks the agent owns
    2: tuple(filter(str.strip, _NICS.split(";"))),
}


@dataclass(frozen=True)
class StoredVM:
    """`domain` is the hypervisor's name for it (the VM's own name unless it
    came from a warm pool); `pool` names the pool while it waits there."""

    spec: VMSpec
    owner: str
    image: str
    state: VMState
    pending: Pending | None
    domain: str = ""
    pool: str = ""
    #: its NICs, each with its MAC
    nics: tuple[NIC, ...] = ()

    def __post_init__(self) -> None:
        if not self.domain:
            object.__setattr__(self, "domain", self.spec.name)

    @property
    def request(self) -> VMRequest:
        """The request this VM answers, under its own name (not its domain's)."""
        spec = self.spec
        return VMRequest(
            spec.name, spec.vcpus, spec.memory_mib, spec.ratio, self.owner, self.image, nics=self.nics
        )


class Store:
    def __init__(self, path: Path) -> None:
        private_database(path)
        self.path = path
        # Callers serialise access (the API holds one lock around every change),
        # so the connection may move between the server's worker threads.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._transaction():
            self._migrate(path)

    def _migrate(self, path: Path) -> None:
        """Create the schema in a new store, or bring an older one up to date."""
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            for statement in filter(str.strip, SCHEMA.split(";")):
                self._db.execute(statement)
        else:
            version = int(row[0])
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{path}: store schema {version}, this agent reads up to {SCHEMA_VERSION}")
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    self._db.execute(statement)
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[None]:
        """One transaction. Not `durable`: committed without waiting for the
        disk (`synchronous=NORMAL`; the next durable commit's sync holds it
        too, WAL being written in order). Only for a step that ends an
        operation whose pending mark was stored durably: the OS keeps the
        commit when the agent is killed, and if the machine loses it (a power
        cut), the mark is still there and the next start finishes the
        operation (`reconcile`), as after a crash just before this step."""
        if not durable:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        finally:
            if not durable:
                # a COMMIT or ROLLBACK that failed may leave the transaction open, and SQLite
                # refuses the PRAGMA inside one: every later commit would then not wait for the disk
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._db.execute("PRAGMA synchronous=FULL")

    def load(self) -> tuple[HostSnapshot, dict[str, StoredVM]]:
        """The allocator's snapshot and every stored VM, in deploy order."""
        vms: dict[str, StoredVM] = {}
        rows = self._db.execute(
            "SELECT name, vcpus, memory_mib, ratio, owner, image, state, pending, domain, pool "
            "FROM vms ORDER BY seq"
        )
        nics = self._nics()
        for name, vcpus, memory, ratio, owner, image, state, pending, domain, pool in rows:
            spec = VMSpec(name, int(vcpus), int(memory), float(ratio))
            vms[name] = StoredVM(
                spec, owner, image, VMState(state), Pending(pending) if pending else None, domain, pool,
                tuple(nics.get(domain, ())),
            )  # fmt: skip
        vnodes: dict[float, list[int]] = {}
        for ratio, cpu in self._db.execute("SELECT ratio, cpu FROM vnode_cpus ORDER BY ratio, position"):
            vnodes.setdefault(float(ratio), []).append(int(cpu))
        snapshot = HostSnapshot(
            {r: tuple(cpus) for r, cpus in vnodes.items()}, tuple(v.spec for v in vms.values())
        )
        return snapshot, vms

    def _nics(self) -> dict[str, list[NIC]]:
        """Every VM's NICs by domain, in their order."""
        found: dict[str, list[NIC]] = {}
        rows = self._db.execute("SELECT domain, kind, source, mac FROM nics ORDER BY domain, position")
        for domain, kind, source, mac in rows:
            nic = NIC(bridge=source, mac=mac) if kind == "bridge" else NIC(network=source, mac=mac)
            found.setdefault(domain, []).append(nic)
        return found

    def macs(self) -> set[str]:
        """Every MAC a stored VM's NIC has (lower-case)."""
        return {mac for (mac,) in self._db.execute("SELECT mac FROM nics")}

    def owned_networks(self) -> set[str]:
        """The networks this agent made itself."""
        return {name for (name,) in self._db.execute("SELECT name FROM owned_networks")}

    def own_network(self, name: str) -> None:
        """Record that the agent made network `name` (before it is defined:
        a crash in between leaves a record of a network that may not exist,
        never a network made by the agent and not known to be its own)."""
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO owned_networks (name) VALUES (?)", (name,))

    def save_vm(self, vm: StoredVM, snapshot: HostSnapshot) -> None:
        """Insert or update one VM (its NICs with it, when it is new) and
        replace the vNode layout, atomically."""
        self.save_vms([vm], snapshot)

    def save_vms(self, vms: list[StoredVM], snapshot: HostSnapshot) -> None:
        """`save_vm` for each of `vms`, and the vNode layout, in one transaction."""
        with self._transaction():
            for vm in vms:
                self._save_vm(vm)
            self._write_vnodes(snapshot.vnodes)

    def _save_vm(self, vm: StoredVM) -> None:
        self._db.execute(
            "INSERT INTO vms "
            "(name, vcpus, memory_mib, ratio, owner, image, state, pending, domain, pool) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "state = excluded.state, pending = excluded.pending",
            (vm.spec.name, vm.spec.vcpus, vm.spec.memory_mib, float(vm.spec.ratio), vm.owner, vm.image,
             vm.state, vm.pending.value if vm.pending else None, vm.domain, vm.pool),
        )  # fmt: skip
        self._db.executemany(
            "INSERT INTO nics (domain, position, kind, source, mac) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (domain, position) DO NOTHING",
            [(vm.domain, i, nic.kind, nic.source, nic.mac.lower()) for i, nic in enumerate(vm.nics)],
        )

    def set_state(self, name: str, state: VMState, pending: Pending | None, durable: bool = True) -> None:
        """`durable`=False: only to clear a pending mark (see `_transaction`)."""
        self.set_states([name], state, pending, durable)

    def set_states(
        self, names: list[str], state: VMState, pending: Pending | None, durable: bool = True
    ) -> None:
        """The same state and pending mark for each of `names`, in one transaction
        (`durable`=False: only to clear a pending mark, see `_transaction`)."""
        if not names:
            return
        with self._transaction(durable):
            self._db.executemany(
                "UPDATE vms SET state = ?, pending = ? WHERE name = ?",
                [(state, pending.value if pending else None, name) for name in names],
            )

    def set_pending(self, names: list[str], pending: Pending) -> None:
        """Mark each of `names` `pending`, their states kept, in one transaction."""
        with self._transaction():
            self._db.executemany(
                "UPDATE vms SET pending = ? WHERE name = ?", [(pending.value, n) for n in names]
            )

    def hand_out(self, member: str, vm: StoredVM) -> None:
        """A pool member becomes `vm` (new name, owner and state; same domain,
        same place in the deploy order), in one transaction."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE vms SET name = ?, owner = ?, state = ?, pending = ?, pool = '' "
                "WHERE name = ? AND domain = ? AND pool != ''",
                (
                    vm.spec.name,
                    vm.owner,
                    vm.state,
                    vm.pending.value if vm.pending else None,
                    member,
                    vm.domain,
                ),
            )
            if cursor.rowcount != 1:
                raise RuntimeError(f"{member} is not a pool member with domain {vm.domain}")

    def resize_vm(self, name: str, vcpus: int, memory_mib: int, snapshot: HostSnapshot) -> None:
        """A VM's new size and the vNode layout that goes with it, atomically."""
        with self._transaction():
            self._db.execute(
                "UPDATE vms SET vcpus = ?, memory_mib = ? WHERE name = ?", (vcpus, memory_mib, name)
            )
            self._write_vnodes(snapshot.vnodes)

    def forget_vm(self, name: str, snapshot: HostSnapshot, durable: bool = True) -> None:
        """Remove a VM and store the vNode layout without it, atomically;
        `durable`=False: only for a VM marked `Pending.DELETE` (see `_transaction`)."""
        with self._transaction(durable):
            self._db.execute("DELETE FROM vms WHERE name = ?", (name,))
            self._write_vnodes(snapshot.vnodes)

    def forget_vms(self, names: list[str], snapshot: HostSnapshot, durable: bool = True) -> None:
        """`forget_vm` for each of `names`, in one transaction."""
        with self._transaction(durable):
            self._db.executemany("DELETE FROM vms WHERE name = ?", [(name,) for name in names])
            self._write_vnodes(snapshot.vnodes)

    def _write_vnodes(self, vnodes: Mapping[float, tuple[int, ...]]) -> None:
        self._db.execute("DELETE FROM vnode_cpus")
        self._db.executemany(
            "INSERT INTO vnode_cpus (ratio, position, cpu) VALUES (?, ?, ?)",
            [
                (float(ratio), position, cpu)
                for ratio, cpus in vnodes.items()
                for position, cpu in enumerate(cpus)
            ],
        )
