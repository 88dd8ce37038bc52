"""RAPID's persisted state, in the agent's SQLite file beside its own tables.

The Java VMM rewrote two serialized files in place after each change (a crash
mid-write corrupted them, section 6); here each change is one committed
transaction (`synchronous=FULL`). What is kept: this VMM's id at the DS and
the SLAM's address (`rapid_vmm`), and one row per RAPID VM (`rapid_vms`): the
user it belongs to (helper VMs are users -1 and -2), the agent VM that
realises it, its DS vmid, status, address, whether its AS confirmed, and
what is still to be done for it (`pending`: tell the DS, or remove it).

Rows are changed field by field (`update`): a handler that saved its whole,
older copy of a row would undo what another handler wrote meanwhile.

A DS registration (`registered`) marks every row to be registered anew, and
it does so without the per-user locks the handlers hold while they talk to
the DS. So that such an exchange cannot write back what the old DS answered
(a vmid the new DS never issued, or "the DS knows all" over the new mark),
each registration starts a new *epoch*: rows record the epoch they were made
or marked in, and what a DS exchange learnt is written only if the row is
still in the epoch the exchange started in (`ds_update`).

The DS looks a helper up by its user id alone (-1, -2; PROTOCOL.md 8.3.9), so
a helper made again must not add a row there: each helper slot keeps the DS
vmid of its row (`slot_vmid`, kept when the helper's record goes), for as long
as the DS registration it was issued in lasts (a new one forgets them).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from pinfold.private import private_database

__all__ = ["Pending", "RapidState", "RapidVM", "Status"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS rapid_vmm (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rapid_vms (
    user_id INTEGER PRIMARY KEY,
    vm_name TEXT NOT NULL UNIQUE,
    vmid INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL CHECK (status IN (1, 2, 3)),
    helper INTEGER NOT NULL DEFAULT 0 CHECK (helper IN (0, 1, 2)),
    ip TEXT NOT NULL DEFAULT '',
    as_sync INTEGER NOT NULL DEFAULT 0,
    os_type INTEGER NOT NULL DEFAULT 0,
    vcpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_gb INTEGER NOT NULL DEFAULT 0,
    gpu_cores INTEGER NOT NULL DEFAULT 0,
    pending TEXT NOT NULL DEFAULT '',
    epoch INTEGER NOT NULL DEFAULT 0
);
"""
COLUMNS = (
    "user_id", "vm_name", "status", "vcpus", "memory_mb", "vmid", "helper", "ip", "as_sync", "os_type",
    "disk_gb", "gpu_cores", "pending", "epoch",
)  # fmt: skip
#: what `update` may change (the epoch is the store's own)
FIELDS = COLUMNS[2:-1]
#: what a DS exchange learns about a VM, written only in the epoch it started in
DS_FIELDS = ("vmid", "pending")


class Status(IntEnum):
    """RAPID's VM statuses (4 STOPPED is only ever sent to the DS)."""

    STARTED = 1
    SUSPENDED = 2
    RESUMED = 3
    STOPPED = 4


class Pending(StrEnum):
    """What is left to do for a VM after a peer or the hypervisor failed."""

    NONE = ""
    #: the DS does not know all about it yet: its registration (vmid 0), a helper's address, its status
    DS = "ds"
    #: to be removed (the hypervisor refused the delete, the DS could not be told STOPPED, or
    #: the VM vanished): hidden from peers, retried until done
    REMOVE = "remove"


@dataclass(frozen=True)
class RapidVM:
    user_id: int
    vm_name: str
    status: Status
    vcpus: int
    memory_mb: int
    vmid: int = 0
    helper: int = 0
    ip: str = ""
    as_sync: bool = False
    os_type: int = 0
    disk_gb: int = 0
    gpu_cores: int = 0
    pending: Pending = Pending.NONE
    #: the DS registration this row was made or last marked in (`RapidState.registered`)
    epoch: int = 0

    @property
    def running(self) -> bool:
        """Running as peers see it: a VM being removed is not."""
        return self.status in (Status.STARTED, Status.RESUMED) and not self.removing

    @property
    def removing(self) -> bool:
        return self.pending is Pending.REMOVE

    def with_(self, **changes: object) -> RapidVM:
        return replace(self, **changes)  # type: ignore[arg-type]


class RapidState:
    """Thread-safe: RAPID's handlers run on a pool of workers."""

    def __init__(self, path: Path) -> None:
        private_database(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(rapid_vms)")}
            if "pending" not in columns:  # a store written before the column existed
                self._db.execute("ALTER TABLE rapid_vms ADD COLUMN pending TEXT NOT NULL DEFAULT ''")
            if "epoch" not in columns:
                self._db.execute("ALTER TABLE rapid_vms ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- this VMM ------------------------------------------------------------------

    def vmm_id(self) -> int:
        return int(self._meta("vmm_id") or 0)

    def slam(self) -> tuple[str, int] | None:
        ip, port = self._meta("slam_ip"), self._meta("slam_port")
        return (ip, int(port)) if ip and port else None

    def epoch(self) -> int:
        """How many times a DS registered this VMM (`registered`)."""
        return int(self._meta("epoch") or 0)

    def registered(self, vmm_id: int, slam_ip: str, slam_port: int) -> None:
        """The DS's answer to VMM_REGISTER_DS, in one transaction. A DS that
        registers this VMM (again) knows none of its VMs: each is marked to be
        registered anew (vmid 0), in the same transaction, so that a crash
        cannot leave the new id saved and the VMs unmarked. A VM being removed
        stays so; its old vmid may be another VM's at this DS, so it goes too.
        A new epoch begins: what an exchange with the DS begun before learns
        is not written (`ds_update`)."""
        with self._transaction():
            row = self._db.execute("SELECT value FROM rapid_vmm WHERE key = 'epoch'").fetchone()
            epoch = (int(row[0]) if row is not None else 0) + 1
            for key, value in (
                ("vmm_id", vmm_id), ("slam_ip", slam_ip), ("slam_port", slam_port), ("epoch", epoch),
            ):  # fmt: skip
                self._set_meta(key, value)
            self._db.execute(
                "UPDATE rapid_vms SET vmid = 0, pending = CASE WHEN pending = ? THEN pending ELSE ? END,"
                " epoch = ?",
                (Pending.REMOVE, Pending.DS, epoch),
            )
            self._db.execute("DELETE FROM rapid_vmm WHERE key IN (?, ?)", tuple(map(_slot_key, (1, 2))))

    def slot_vmid(self, slot: int, epoch: int) -> int:
        """The DS vmid of helper slot `slot`'s row, issued in DS registration
        `epoch`; 0 if there is none, or the DS registered this VMM since."""
        with self._lock:
            rows = dict(
                self._db.execute(
                    "SELECT key, value FROM rapid_vmm WHERE key IN ('epoch', ?)", (_slot_key(slot),)
                ).fetchall()
            )
        if int(rows.get("epoch", 0)) != epoch:
            return 0
        return int(rows.get(_slot_key(slot), 0))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One committed transaction, under the lock: all of it or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO rapid_vmm (key, value) VALUES (?, ?)", (key, str(value)))

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM rapid_vmm WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- VMs -------------------------------------------------------------------------

    def vms(self) -> list[RapidVM]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM rapid_vms ORDER BY user_id").fetchall()
        return [_vm(row) for row in rows]

    def vm(self, user_id: int) -> RapidVM | None:
        with self._lock:
            return self._row(user_id)

    def _row(self, user_id: int) -> RapidVM | None:
        row = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM rapid_vms WHERE user_id = ?", (user_id,)
        ).fetchone()
        return None if row is None else _vm(row)

    def by_ip(self, ip: str) -> RapidVM | None:
        """The VM an AS at `ip` runs in (not one being removed)."""
        return next((vm for vm in self.vms() if vm.ip and vm.ip == ip and not vm.removing), None)

    def save(self, vm: RapidVM) -> RapidVM:
        """The whole row: for a VM just made (or marked for removal), in the
        current epoch. Returns `vm` as saved."""
        names, marks = ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
        with self._lock:
            row = self._db.execute("SELECT value FROM rapid_vmm WHERE key = 'epoch'").fetchone()
            vm = vm.with_(epoch=int(row[0]) if row is not None else 0)
            self._db.execute(
                f"INSERT OR REPLACE INTO rapid_vms ({names}) VALUES ({marks})",
                tuple(getattr(vm, column) for column in COLUMNS),
            )
        return vm

    def update(self, vm: RapidVM, **changes: object) -> RapidVM:
        """Set only these fields of `vm`'s row, in one statement, and only if
        the row still holds that VM; other fields keep what others wrote.
        Returns `vm` with the changes (its other fields may be older)."""
        updated = vm.with_(**changes)
        with self._lock:
            self._set(vm, _columns(changes, FIELDS), updated)
        return updated

    def ds_update(self, vm: RapidVM, **changes: object) -> RapidVM | None:
        """What a DS exchange about `vm` learnt (its vmid, that the DS knows
        all): set only if no DS registration came between (the row is still
        in `vm`'s epoch). Returns `vm` with the changes, or None if the row
        was marked anew (or is gone) and nothing was written."""
        updated = vm.with_(**changes)
        with self._lock:
            written = self._set(vm, _columns(changes, DS_FIELDS), updated, epoch=vm.epoch)
        return updated if written else None

    def mark(self, vm: RapidVM, **changes: object) -> tuple[RapidVM, bool] | None:
        """Set these fields of `vm`'s row and mark it for the DS (`Pending.DS`),
        in one step. Returns the row as it is then, and whether it was settled
        (no mark) before: only then does the DS know its vmid. None if the
        row no longer holds that VM."""
        with self._lock:
            before = self._row(vm.user_id)
            if before is None or before.vm_name != vm.vm_name:
                return None
            updated = before.with_(**changes, pending=Pending.DS)
            self._set(vm, _columns({**changes, "pending": Pending.DS}, FIELDS), updated)
            return updated, before.pending is Pending.NONE

    def _set(self, vm: RapidVM, columns: list[str], values: RapidVM, epoch: int | None = None) -> bool:
        """UPDATE the named columns (all from COLUMNS) of `vm`'s row to their
        values in `values`, and only in `epoch` if given; True if a row changed."""
        assignments = ", ".join(f"{column} = ?" for column in columns)
        where = "user_id = ? AND vm_name = ?"
        key: tuple[object, ...] = (vm.user_id, vm.vm_name)
        if epoch is not None:
            where, key = f"{where} AND epoch = ?", (*key, epoch)
        cursor = self._db.execute(
            f"UPDATE rapid_vms SET {assignments} WHERE {where}",
            (*(getattr(values, column) for column in columns), *key),
        )
        return cursor.rowcount > 0

    def forget(self, user_id: int) -> None:
        """Drop the user's record. A helper's DS vmid stays with its slot
        (same transaction), for the helper made in its place to take."""
        with self._transaction():
            gone = self._row(user_id)
            if gone is not None and gone.helper and gone.vmid:
                self._set_meta(_slot_key(gone.helper), gone.vmid)
            self._db.execute("DELETE FROM rapid_vms WHERE user_id = ?", (user_id,))


def _slot_key(slot: int) -> str:
    return f"helper_vmid_{slot}"


def _vm(row: Any) -> RapidVM:
    u, n, s, c, m, v, h, ip, a, o, d, g, p, e = row
    return RapidVM(int(u), str(n), Status(s), int(c), int(m), int(v), int(h), str(ip), bool(a), int(o),
                   int(d), int(g), Pending(p), int(e))  # fmt: skip


def _columns(changes: dict[str, object], allowed: tuple[str, ...]) -> list[str]:
    """The names of the changed fields, taken from `allowed` (never from the
    caller: they go into SQL); a name not in it is an error."""
    columns = [column for column in allowed if column in changes]
    if len(columns) != len(changes) or not columns:
        raise ValueError(f"not fields one may set this way: {sorted(set(changes) - set(columns)) or 'none'}")
    return columns
