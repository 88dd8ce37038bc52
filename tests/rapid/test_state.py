"""RAPID's state in the agent's SQLite file: kept across restarts, one row per user."""

from __future__ import annotations

import signal
import subprocess
import sys

from pinfold.agent.store import Store
from pinfold.rapid.state import Pending, RapidState, RapidVM, Status


def test_state_survives_a_restart_beside_the_agents_tables(tmp_path):
    path = tmp_path / "agent.db"
    Store(path).close()  # the agent's own tables are there too
    state = RapidState(path)
    assert (state.vmm_id(), state.slam()) == (0, None)
    state.registered(7, "10.1.1.1", 9002)
    state.save(RapidVM(42, "rapid-user-42", Status.STARTED, 1, 512, vmid=9, ip="198.51.100.1"))
    state.save(RapidVM(-1, "rapid-helper-1", Status.STARTED, 1, 1024, helper=1))
    state.close()
    again = RapidState(path)
    assert (again.vmm_id(), again.slam()) == (7, ("10.1.1.1", 9002))
    assert [vm.user_id for vm in again.vms()] == [-1, 42]
    found, vm = again.by_ip("198.51.100.1"), again.vm(42)
    assert found is not None
    assert vm is not None
    assert found.user_id == 42
    assert vm.running
    assert not vm.with_(status=Status.SUSPENDED).running
    again.forget(42)
    assert again.vm(42) is None
    _, stored = Store(path).load()
    assert stored == {}


KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from pinfold.rapid.state import RapidState

state = RapidState(Path(sys.argv[1]))
state.registered(7, "10.1.1.1", 9002)


class Dying:
    '''The store's connection, killed (SIGKILL, as kill -9) after two of the three writes.'''

    def __init__(self, db):
        self.db, self.writes = db, 0

    def execute(self, sql, *args):
        if sql.startswith("INSERT"):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.db.execute(sql, *args)


state._db = Dying(state._db)
state.registered(8, "10.2.2.2", 9003)
"""


def test_a_kill_during_a_state_write_leaves_the_state_before_it(tmp_path):
    """Scenario 34: a process killed halfway through writing the DS's answer
    (id and SLAM address, three rows) restarts with the previous answer
    whole, not a mix of both (RAPID's in-place file rewrite corrupted it)."""
    path = tmp_path / "agent.db"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL
    again = RapidState(path)
    assert (again.vmm_id(), again.slam()) == (7, ("10.1.1.1", 9002))
    again.close()


def test_a_registration_marks_every_vm_for_the_ds_in_the_same_transaction(tmp_path):
    """A DS that registers this VMM knows none of its VMs: each is to be
    registered again; one being removed stays so, without its old vmid."""
    state = RapidState(tmp_path / "agent.db")
    state.save(RapidVM(42, "rapid-user-42", Status.SUSPENDED, 1, 512, vmid=9))
    state.save(RapidVM(43, "rapid-user-43", Status.STARTED, 1, 512, vmid=10, pending=Pending.REMOVE))
    state.registered(8, "10.2.2.2", 9003)
    assert [(vm.vmid, vm.status, vm.pending) for vm in state.vms()] == [
        (0, Status.SUSPENDED, Pending.DS),
        (0, Status.STARTED, Pending.REMOVE),
    ]
    state.close()


def test_an_update_changes_only_its_fields_and_only_of_that_vm(tmp_path):
    state = RapidState(tmp_path / "agent.db")
    older = state.save(RapidVM(42, "rapid-user-42", Status.STARTED, 1, 512))
    state.update(older, as_sync=True)
    state.update(older, vmid=9)  # from a copy that does not know as_sync changed
    assert state.vm(42) == older.with_(as_sync=True, vmid=9)
    state.update(older.with_(vm_name="rapid-user-42-gone"), vmid=1)  # another VM of that user: no-op
    assert state.vm(42) == older.with_(as_sync=True, vmid=9)
    state.close()
