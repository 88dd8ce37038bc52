"""What a heartbeat changes in the controller's records of its host's VMs.

What the agent has is what is. A pure function from the controller's records
of one host's VMs (name, state, when last changed) and the states the agent's
heartbeat reports to a list of steps; `Controller._settle` carries them out.
Table-tested row by row in tests/controller/test_settle.py.

A record changed less than two heartbeat periods ago is *recent*: the
heartbeat may predate the change (an agent call answered after the agent
sampled its VMs), so it is left alone. A reservation older than
`stale_after_s` (longer than any agent call) is *stale*: the controller that
made it did not come back to it.

| stored state | reported | record | step |
|---|---|---|---|
| deleting | yes | any | none (its delete is under way, retried) |
| any other | a controller state, not the stored one | not recent | follow: the reported state |
| any other | a controller state, not the stored one | recent | none |
| any other | the stored state, or an agent's own (creating, stopping...) | any | none |
| deleting | no | any | forget (the agent confirmed the delete) |
| reserved | no | stale | forget (a create that never finished) |
| reserved | no | not stale | none (its create may be under way) |
| missing | no | any | none (already missing) |
| running, paused, shutoff, failed | no | not recent | missing ("its agent does not report it") |
| running, paused, shutoff, failed | no | recent | none |
| migrating | any | any | none (`move_step` settles it) |

Steps come in the order of the records.

A `migrating` record is its source host's (its room held on the target too)
and is settled by `move_step`, from what the source reports, once it is stale
and no controller in this process is moving it (`Controller._settle_move`):

| the source reports it | step |
|---|---|
| migrating (the agent is sending it) | none |
| in another state | back: the move did not happen; abort on the target, the record keeps the source |
| not at all | land: it left; commit on the target, the record moves there |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pinfold.model.lifecycle import CONTROLLER_STATES, VMState

__all__ = ["NOT_REPORTED", "Action", "Move", "Step", "Stored", "move_step", "plan", "vm_state"]

#: the detail of a VM marked missing
NOT_REPORTED = "its agent does not report it"


class Action(StrEnum):
    #: set the record's state to the step's `state`
    FOLLOW = "follow"
    #: delete the record (and record a "vm dropped" event saying what it `was`)
    FORGET = "forget"
    #: set the record's state to missing, with `NOT_REPORTED` as its detail
    MISSING = "missing"


class Move(StrEnum):
    #: the source still has it: the migration is over, it failed
    BACK = "back"
    #: the source no longer has it: it is on the target (commit there)
    LAND = "land"


@dataclass(frozen=True)
class Stored:
    """What the plan needs of one of the controller's records."""

    name: str
    state: VMState
    updated_at: float


@dataclass(frozen=True)
class Step:
    """`state` is the state to set and `detail` its words (FOLLOW, MISSING);
    `was` the record's state."""

    action: Action
    name: str
    was: VMState
    state: VMState | None = None
    detail: str = ""


def vm_state(agent_state: object, otherwise: VMState) -> VMState:
    """The controller's state for an agent's report; `otherwise` for one of the
    agent's own states (creating, stopping...) or one it does not know."""
    state = str(agent_state)
    return VMState(state) if state in CONTROLLER_STATES else otherwise


def plan(
    stored: Iterable[Stored],
    reported: Mapping[str, str],
    now: float,
    heartbeat_period_s: float,
    stale_after_s: float,
) -> list[Step]:
    """The steps that make the records follow `reported` (the table above)."""
    steps = []
    for record in stored:
        step = _step(record, reported, now - record.updated_at, heartbeat_period_s, stale_after_s)
        if step is not None:
            steps.append(step)
    return steps


def move_step(reported: str | None, age: float, stale_after_s: float) -> Move | None:
    """What settles a `migrating` record that was last changed `age` seconds
    ago, given the source's report of it (None: not reported); see the table."""
    if age <= stale_after_s or reported == VMState.MIGRATING.value:
        return None
    return Move.LAND if reported is None else Move.BACK


def _step(
    record: Stored, reported: Mapping[str, str], age: float, heartbeat_period_s: float, stale_after_s: float
) -> Step | None:
    recent = age < 2 * heartbeat_period_s
    if record.state is VMState.MIGRATING:
        return None
    if record.name in reported:
        if record.state is VMState.DELETING or recent:
            return None
        state = vm_state(reported[record.name], record.state)
        return None if state is record.state else Step(Action.FOLLOW, record.name, record.state, state)
    if record.state is VMState.DELETING or (record.state is VMState.RESERVED and age > stale_after_s):
        return Step(Action.FORGET, record.name, record.state)
    if record.state in (VMState.MISSING, VMState.RESERVED) or recent:
        return None
    return Step(Action.MISSING, record.name, record.state, VMState.MISSING, NOT_REPORTED)
