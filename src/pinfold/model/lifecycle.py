"""A VM's lifecycle: one state enum for the agent and the controller, and
the one table of which action is legal in which state.

States. Both sides use `running`, `paused`, `shutoff`, `missing` and `migrating`; the
others belong to one side only (`CONTROLLER_STATES`, `AGENT_STATES`):

| state | side | meaning |
|---|---|---|
| reserved | controller | room taken on a host, the agent not yet asked |
| creating | agent | stored, its domain being made (a `create` pending mark) |
| warming | agent | a warm-pool member booting |
| pooled | agent | a warm-pool member suspended, ready to be handed out |
| resuming | agent | a pool member being handed out (a `create` pending mark) |
| running | both | the guest runs |
| paused | both | the guest is suspended |
| stopping | agent | a graceful shutdown under way (a `shutdown` pending mark) |
| migrating | both | moving live: the source agent sends it (`migrate-out` mark); room on both hosts |
| incoming | agent | a live migration's target: room reserved, the guest not arrived (an `incoming` mark) |
| shutoff | both | the guest is off |
| other | agent | the hypervisor's state is none of the three (crashed, blocked...) |
| error | agent | a step of the agent's start failed (its pending mark is kept) |
| failed | controller | kept for the schema; nothing sets it today |
| deleting | controller | a delete its agent has not yet confirmed (retried) |
| missing | both | the hypervisor (agent) or the agent (controller) lacks it |

The controller stores only its states (its table's CHECK lists them; a new
one needs a migration), in each of which the VM holds its resources on its
host until the row is deleted, and keeps its record when an agent reports a
state of the agent's own.

Transitions (`transition(state, action)`; every other pair is refused):

| state | start | shutdown | suspend | resume | delete |
|---|---|---|---|---|---|
| running | - | shutoff | paused | - | deleting |
| paused | - | shutoff | - | running | deleting |
| shutoff | running | - | - | - | deleting |
| migrating | - | - | - | - | - |
| any other | - | - | - | - | deleting |

Delete is legal in every state but `migrating` (it forces the guest off: a
VM moving between two hosts is deleted once it landed, or once its move
failed and it is back on its source); its next state is
the controller's `deleting` (the agent forgets the VM instead). The agent
refuses it for `incoming` too (the target of a move): that migration's end,
or its abort, decides. A refusal is
`Refused`, a `PinfoldError` of code "invalid" (HTTP 409), naming the state.

Who consults it: the agent, with the state the hypervisor reports just
before it acts (its stored state may lag behind a guest that powered itself
off); the controller, to refuse the states that allow nothing but a delete
whatever the hypervisor says (its record of running, paused and shutoff may
lag a heartbeat behind, so for those the agent decides); the dashboard,
through `GET /api/v1/lifecycle`, to show the buttons of each state.
"""

from __future__ import annotations

from enum import StrEnum

from pinfold.model.errors import ErrorCode, PinfoldError

__all__ = [
    "AGENT_STATES",
    "CONTROLLER_STATES",
    "POWER_ACTIONS",
    "Action",
    "Refused",
    "VMState",
    "allowed",
    "table",
    "takes_actions",
    "transition",
]


class VMState(StrEnum):
    """Where a VM stands (see the module's table for which side uses which)."""

    RESERVED = "reserved"
    CREATING = "creating"
    WARMING = "warming"
    POOLED = "pooled"
    RESUMING = "resuming"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    MIGRATING = "migrating"
    INCOMING = "incoming"
    SHUTOFF = "shutoff"
    OTHER = "other"
    ERROR = "error"
    FAILED = "failed"
    DELETING = "deleting"
    MISSING = "missing"


class Action(StrEnum):
    """What a user may ask of a VM."""

    START = "start"
    SHUTDOWN = "shutdown"
    SUSPEND = "suspend"
    RESUME = "resume"
    DELETE = "delete"


#: the states the controller stores, in the order of its schema's CHECK
CONTROLLER_STATES = (
    VMState.RESERVED, VMState.RUNNING, VMState.PAUSED, VMState.SHUTOFF,
    VMState.FAILED, VMState.DELETING, VMState.MISSING, VMState.MIGRATING,
)  # fmt: skip
#: the states the agent stores
AGENT_STATES = (
    VMState.CREATING, VMState.WARMING, VMState.POOLED, VMState.RESUMING, VMState.RUNNING,
    VMState.PAUSED, VMState.STOPPING, VMState.SHUTOFF, VMState.OTHER, VMState.ERROR, VMState.MISSING,
    VMState.MIGRATING, VMState.INCOMING,
)  # fmt: skip
#: the actions of `POST /api/v1/vms/{name}/{action}` (a delete is `DELETE /api/v1/vms/{name}`)
POWER_ACTIONS = (Action.START, Action.SHUTDOWN, Action.SUSPEND, Action.RESUME)

_TABLE: dict[tuple[VMState, Action], VMState] = {
    (VMState.RUNNING, Action.SHUTDOWN): VMState.SHUTOFF,
    (VMState.RUNNING, Action.SUSPEND): VMState.PAUSED,
    (VMState.PAUSED, Action.SHUTDOWN): VMState.SHUTOFF,
    (VMState.PAUSED, Action.RESUME): VMState.RUNNING,
    (VMState.SHUTOFF, Action.START): VMState.RUNNING,
    **{(state, Action.DELETE): VMState.DELETING for state in VMState if state is not VMState.MIGRATING},
}


class Refused(PinfoldError):  # noqa: N818 (a refusal, not an error of the program)
    """An action the table forbids in a state: code "invalid" (409), `detail`
    the rule ("start is refused in state running"); `describe(name)` says it
    for one VM."""

    def __init__(self, state: VMState, action: Action) -> None:
        self.state = state
        self.action = action
        super().__init__(ErrorCode.INVALID, f"{action} is refused in state {state}")

    def describe(self, name: str, because: str | None = None) -> str:
        """The refusal in words ("web is paused: start needs shutoff"), with
        `because` in place of the table's reason ("" for none)."""
        if because is None:
            needs = " or ".join(state for state in VMState if (state, self.action) in _TABLE)
            because = f"{self.action} needs {needs}"
        return f"{name} is {self.state}: {because}" if because else f"{name} is {self.state}"


def transition(state: VMState, action: Action) -> VMState:
    """The state `action` leads to from `state`; `Refused` when it is illegal."""
    try:
        return _TABLE[(state, action)]
    except KeyError:
        raise Refused(state, action) from None


def allowed(state: VMState) -> tuple[Action, ...]:
    """The actions legal in `state`, in `Action`'s order."""
    return tuple(action for action in Action if (state, action) in _TABLE)


def takes_actions(state: VMState) -> bool:
    """Whether any action but a delete is legal in `state`: the controller
    refuses the others itself, whatever the hypervisor says."""
    return any((state, action) in _TABLE for action in POWER_ACTIONS)


def table() -> dict[str, list[str]]:
    """Every state's legal actions, as JSON (`GET /api/v1/lifecycle`)."""
    return {state.value: [action.value for action in allowed(state)] for state in VMState}
