"""RAPID's state in the agent's SQLite file: kept across restarts, one row per user."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

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


def test_a_helper_slot_keeps_its_ds_vmid_until_the_ds_registers_this_vmm_again(tmp_path):
    """The vmid stays across restarts, for this DS registration only."""
    state = RapidState(tmp_path / "agent.db")
    state.registered(7, "10.1.1.1", 9002)
    epoch = state.epoch()
    state.save(RapidVM(-1, "rapid-helper-1", Status.STARTED, 1, 1024, vmid=11, helper=1))
    state.save(RapidVM(42, "rapid-user-42", Status.STARTED, 1, 512, vmid=12))
    state.forget(-1)
    state.forget(42)
    state.close()
    again = RapidState(tmp_path / "agent.db")
    assert (again.slot_vmid(1, epoch), again.slot_vmid(2, epoch)) == (11, 0)
    assert again.slot_vmid(1, epoch - 1) == 0  # asked by an exchange begun under an older registration
    again.registered(8, "10.1.1.1", 9002)
    assert again.slot_vmid(1, again.epoch()) == 0


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


def test_what_a_ds_exchange_learnt_is_written_only_in_the_epoch_it_began_in(tmp_path):
    """A DS registration starts an epoch; rows made or marked then carry it."""
    state = RapidState(tmp_path / "agent.db")
    state.registered(7, "10.1.1.1", 9002)
    read = state.save(RapidVM(42, "rapid-user-42", Status.STARTED, 1, 512, pending=Pending.DS))
    assert (state.epoch(), read.epoch) == (1, 1)
    state.registered(8, "10.2.2.2", 9003)  # while the exchange about `read` went on
    assert state.ds_update(read, vmid=9) is None
    assert state.ds_update(read, pending=Pending.NONE) is None
    now = state.vm(42)
    assert now is not None
    assert (now.vmid, now.pending, now.epoch) == (0, Pending.DS, 2)
    assert state.ds_update(now, vmid=10) == now.with_(vmid=10)
    assert state.vm(42) == now.with_(vmid=10)
    with pytest.raises(ValueError, match="not fields"):
        state.ds_update(now, status=Status.SUSPENDED)  # not what a DS exchange learns
    with pytest.raises(ValueError, match="not fields"):
        state.update(now, epoch=1)  # the store's own
    state.close()


def test_a_mark_for_the_ds_says_whether_the_row_was_settled(tmp_path):
    state = RapidState(tmp_path / "agent.db")
    older = state.save(RapidVM(42, "rapid-user-42", Status.STARTED, 1, 512, vmid=9))
    assert state.mark(older, status=Status.SUSPENDED) == (
        older.with_(status=Status.SUSPENDED, pending=Pending.DS),
        True,
    )
    state.registered(8, "10.2.2.2", 9003)
    marked = state.mark(older, status=Status.RESUMED)  # `older` still has vmid 9: the row has none
    assert marked is not None
    assert (marked[0].vmid, marked[0].status, marked[0].epoch, marked[1]) == (0, Status.RESUMED, 1, False)
    assert state.mark(older.with_(vm_name="rapid-user-42-gone"), status=Status.STARTED) is None
    state.close()
