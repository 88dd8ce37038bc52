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
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum
from pathlib import Path

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
    pending TEXT NOT NULL DEFAULT ''
);
"""
COLUMNS = (
    "user_id", "vm_name", "status", "vcpus", "memory_mb", "vmid", "helper", "ip", "as_sync", "os_type",
    "disk_gb", "gpu_cores", "pending",
)  # fmt: skip


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
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(rapid_vms)")}
            if "pending" not in columns:  # a store written before the column existed
                self._db.execute("ALTER TABLE rapid_vms ADD COLUMN pending TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- this VMM ------------------------------------------------------------------

    def vmm_id(self) -> int:
        return int(self._meta("vmm_id") or 0)

    def slam(self) -> tuple[str, int] | None:
        ip, port = self._meta("slam_ip"), self._meta("slam_port")
        return (ip, int(port)) if ip and port else None

    def registered(self, vmm_id: int, slam_ip: str, slam_port: int) -> None:
        """The DS's answer to VMM_REGISTER_DS, in one transaction. A DS that
        registers this VMM (again) knows none of its VMs: each is marked to be
        registered anew (vmid 0), in the same transaction, so that a crash
        cannot leave the new id saved and the VMs unmarked. A VM being removed
        stays so; its old vmid may be another VM's at this DS, so it goes too."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, value in (("vmm_id", vmm_id), ("slam_ip", slam_ip), ("slam_port", slam_port)):
                    self._db.execute(
                        "INSERT OR REPLACE INTO rapid_vmm (key, value) VALUES (?, ?)", (key, str(value))
                    )
                self._db.execute(
                    "UPDATE rapid_vms SET vmid = 0, pending = CASE WHEN pending = ? THEN pending ELSE ? END",
                    (Pending.REMOVE, Pending.DS),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM rapid_vmm WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- VMs -------------------------------------------------------------------------

    def vms(self) -> list[RapidVM]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM rapid_vms ORDER BY user_id").fetchall()
        return [
            RapidVM(int(u), str(n), Status(s), int(c), int(m), int(v), int(h), str(ip), bool(a), int(o),
                    int(d), int(g), Pending(p))
            for u, n, s, c, m, v, h, ip, a, o, d, g, p in rows
        ]  # fmt: skip

    def vm(self, user_id: int) -> RapidVM | None:
        return next((vm for vm in self.vms() if vm.user_id == user_id), None)

    def by_ip(self, ip: str) -> RapidVM | None:
        """The VM an AS at `ip` runs in (not one being removed)."""
        return next((vm for vm in self.vms() if vm.ip and vm.ip == ip and not vm.removing), None)

    def save(self, vm: RapidVM) -> RapidVM:
        """The whole row: for a VM just made (or marked for removal)."""
        names, marks = ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
        with self._lock:
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
        columns = [column for column in COLUMNS[2:] if column in changes]
        if len(columns) != len(changes):
            raise ValueError(f"not fields of a VM's row: {sorted(set(changes) - set(columns))}")
        with self._lock:
            assignments = ", ".join(f"{column} = ?" for column in columns)
            self._db.execute(
                f"UPDATE rapid_vms SET {assignments} WHERE user_id = ? AND vm_name = ?",
                (*(getattr(updated, column) for column in columns), vm.user_id, vm.vm_name),
            )
        return updated

    def forget(self, user_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM rapid_vms WHERE user_id = ?", (user_id,))
