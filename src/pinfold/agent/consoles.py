"""VMs' serial consoles shared among their clients: one writer, several readers.

A hypervisor attaches one console per guest at a time (libvirt refuses a
second), so the agent opens one driver console per VM and fans its output out
to every client attached (`Seat`); only the writer's input reaches the guest.
The driver console is closed when the last client leaves, and every client is
told when it ends on the guest's side (the guest stopped, it was deleted).

A client that closes its socket and connects again at once (a terminal
reattaching, a page reloaded) would race its own leaving: the socket's close
is answered before the agent has let go of its seat. So the last seat's
leaving and the closing of the driver console happen under the hub's lock, in
one step with an attach (which then opens a console of its own after the old
one is closed, never joins one being closed), and a writer that finds the
seat taken waits up to SEAT_WAIT_S for it to be freed before it is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pinfold.agent.core import AgentError
from pinfold.agent.drivers.base import Console, DriverError
from pinfold.agent.service import Agent
from pinfold.model.errors import ErrorCode

__all__ = ["SEAT_WAIT_S", "ConsoleHub", "Seat"]

#: how long a writer waits for the writer's seat of a client that is leaving
SEAT_WAIT_S = 2.0


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
        self.hub.leave(self, seat)


class ConsoleHub:
    """The consoles of one agent's VMs, by domain."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._lock = threading.Lock()
        #: notified whenever a seat is freed or a console forgotten (a writer may be waiting)
        self._changed = threading.Condition(self._lock)
        self._shared: dict[str, _Shared] = {}

    def attach(
        self, name: str, write: bool, output: Callable[[bytes], None], closed: Callable[[str], None]
    ) -> Seat:
        """A seat on VM `name`'s console; AgentError "unknown vm" (404) for no
        such VM, "invalid" (409) for one not running or, with `write`, for a
        console another client already writes to."""
        domain = self._agent.console_domain(name)
        deadline = time.monotonic() + SEAT_WAIT_S
        with self._changed:
            while write and (taken := self._shared.get(domain)) is not None and taken.writer() is not None:
                if not self._changed.wait(deadline - time.monotonic()):
                    raise AgentError(
                        ErrorCode.INVALID, f"another client writes to the console of {name}: use mode=read"
                    )
            shared = self._shared.get(domain)
            if shared is not None:
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

    def leave(self, shared: _Shared, seat: Seat) -> None:
        """`seat` leaves; the last one closes the driver console, before any
        attach can look for it (see the module's docstring)."""
        with self._changed:
            with shared.lock:
                if seat in shared.seats:
                    shared.seats.remove(seat)
                last = not shared.seats
            if last and self._shared.get(shared.domain) is shared:
                del self._shared[shared.domain]
                if shared.console is not None:
                    shared.console.close()
            self._changed.notify_all()

    def forget(self, shared: _Shared) -> bool:
        """Drop `shared` from the hub; False when it was gone already."""
        with self._changed:
            self._changed.notify_all()
            if self._shared.get(shared.domain) is shared:
                del self._shared[shared.domain]
                return True
            return False
