"""VMs' serial consoles shared among their clients: one writer, several readers.

A hypervisor attaches one console per guest at a time (libvirt refuses a
second), so the agent opens one driver console per VM and fans its output out
to every client attached (`Seat`); only the writer's input reaches the guest.
The driver console is closed when the last client leaves, and every client is
told when it ends on the guest's side (the guest stopped, it was deleted).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pinfold.agent.core import AgentError
from pinfold.agent.drivers.base import Console, DriverError
from pinfold.agent.service import Agent
from pinfold.model.errors import ErrorCode

__all__ = ["ConsoleHub", "Seat"]


@dataclass(eq=False)
class Seat:
    """One client of a VM's console: `output` gets the console's bytes,
    `closed(reason)` is called once if the console ends under it."""

    shared: _Shared
    writer: bool
    output: Callable[[bytes], None]
    closed: Callable[[str], None]

    def write(self, data: bytes) -> None:
        """The writer's keystrokes to the guest; a reader's are dropped (it
        may watch, not type)."""
        if not self.writer:
            return
        console = self.shared.console
        if console is None:
            return
        try:
            console.write(data)
        except DriverError as error:
            raise AgentError(ErrorCode.INVALID, str(error)) from error

    def leave(self) -> None:
        self.shared.leave(self)


@dataclass(eq=False)
class _Shared:
    """A VM's one driver console and the seats on it."""

    domain: str
    hub: ConsoleHub
    console: Console | None = None
    seats: list[Seat] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writer(self) -> Seat | None:
        with self.lock:
            return next((seat for seat in self.seats if seat.writer), None)

    def fan_out(self, data: bytes) -> None:
        with self.lock:
            seats = list(self.seats)
        for seat in seats:
            seat.output(data)

    def ended(self, reason: str) -> None:
        self.hub.forget(self)
        with self.lock:
            seats, self.seats = self.seats, []
        for seat in seats:
            seat.closed(reason)

    def leave(self, seat: Seat) -> None:
        with self.lock:
            if seat in self.seats:
                self.seats.remove(seat)
            last = not self.seats
        if last and self.hub.forget(self) and self.console is not None:
            self.console.close()


class ConsoleHub:
    """The consoles of one agent's VMs, by domain."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._lock = threading.Lock()
        self._shared: dict[str, _Shared] = {}

    def attach(
        self, name: str, write: bool, output: Callable[[bytes], None], closed: Callable[[str], None]
    ) -> Seat:
        """A seat on VM `name`'s console; AgentError "unknown vm" (404) for no
        such VM, "invalid" (409) for one not running or, with `write`, for a
        console another client already writes to."""
        domain = self._agent.console_domain(name)
        with self._lock:
            shared = self._shared.get(domain)
            if shared is not None:
                if write and shared.writer() is not None:
                    raise AgentError(
                        ErrorCode.INVALID, f"another client writes to the console of {name}: use mode=read"
                    )
                seat = Seat(shared, write, output, closed)
                with shared.lock:
                    shared.seats.append(seat)
                return seat
            shared = _Shared(domain, self)
            seat = Seat(shared, write, output, closed)
            shared.seats.append(seat)
            shared.console = self._agent.open_console(domain, shared.fan_out, shared.ended)
            self._shared[domain] = shared
            return seat

    def forget(self, shared: _Shared) -> bool:
        """Drop `shared` from the hub; False when it was gone already."""
        with self._lock:
            if self._shared.get(shared.domain) is shared:
                del self._shared[shared.domain]
                return True
            return False
