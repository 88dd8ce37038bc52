"""The `sim` driver: guests in memory, with the libvirt driver's behaviour
(same states, same errors), for demos and for tests that need many hosts.

Thread-safe as libvirt is: the monitor reads stats and a graceful shutdown
waits outside the agent's lock, while API threads create and delete guests.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from pinfold.agent.domain import DomainSpec
from pinfold.agent.drivers.base import Console, DriverError, GuestInfo, GuestState, Migrated, MigrationTarget
from pinfold.agent.networks import NetworkInfo

__all__ = ["SimDriver"]

log = logging.getLogger(__name__)

SIM_CONSOLE_BANNER = "[pinfold simulated console of {name}: no guest runs here, what you type is echoed]\r\n"


class SimConsole:
    """A simulated console, said to be one: it echoes what is typed (a return
    as CR LF), and keeps what it shows in the guest's serial log, as a real
    guest's serial is logged."""

    def __init__(
        self, name: str, output: Callable[[bytes], None], closed: Callable[[str], None], log: Path | None
    ) -> None:
        self.name = name
        self._output = output
        self._closed = closed
        self._log = log
        self._lock = threading.Lock()
        self._open = True

    def show(self, data: bytes) -> None:
        if self._log is not None:
            self._log.parent.mkdir(parents=True, exist_ok=True)
            with self._log.open("ab") as log:
                log.write(data)
        self._output(data)

    def write(self, data: bytes) -> None:
        if not self._open:
            raise DriverError("invalid", f"the console of {self.name} is closed")
        self.show(data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").replace(b"\r", b"\r\n"))

    def close(self) -> None:
        with self._lock:
            self._open = False

    def end(self, reason: str) -> None:
        with self._lock:
            was_open, self._open = self._open, False
        if was_open:
            self._closed(reason)


#: the documentation ranges (TEST-NET-2, -3, -1), in the order addresses are taken from them
_RANGES = ("198.51.100", "203.0.113", "192.0.2")

#: addresses the counter file reserves at a time: it is written once a block, not once a
#: create (a third of a sim create's CPU, issue 16); a restart skips the block's unused rest
COUNTER_BLOCK = 32


class _Wire:
    """Sim guests in flight between two sim drivers: `migrate` puts a guest
    here, the target's `receive` takes it. One per process: sim drivers in
    one process (the tests' and demos' in-process agents) migrate to each
    other; sim agents in two processes cannot (their commit finds nothing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._guests: dict[str, tuple[DomainSpec, str]] = {}

    def send(self, spec: DomainSpec, address: str) -> None:
        with self._lock:
            self._guests[spec.name] = (spec, address)

    def take(self, name: str) -> tuple[DomainSpec, str] | None:
        with self._lock:
            return self._guests.pop(name, None)


_WIRE = _Wire()


class SimDriver:
    def __init__(
        self, counter: Path | None = None, networks: Iterable[str] = (), bridges: Iterable[str] = ()
    ) -> None:
        """`counter`: a file that keeps a count past every address handed
        out (reserved `COUNTER_BLOCK` at a time), so that a driver made again
        on it (an agent restarted on its data dir) goes on past them: a peer
        such as a RAPID DS may still hold them. None: in memory only, from the
        first address. `networks` and `bridges`: the host's, as configured
        (simulated: started, no subnet)."""
        self._networks = {name: NetworkInfo(name, f"sim-{name}"[:15], "", True) for name in networks}
        self._bridges = frozenset(bridges)
        self._guests: dict[str, GuestInfo] = {}
        self._addresses: dict[str, str] = {}
        self._counter = counter
        self._created = _count_in(counter) if counter is not None else 0
        self._reserved = self._created  # the count the file holds: addresses up to it may be out
        #: held around every read and change of the guests (RLock: methods call `_get`)
        self._lock = threading.RLock()
        self._consoles: dict[str, list[SimConsole]] = {}
        #: set (by a test) to make the next `migrate` fail with these words, the guest left here
        self.migration_failure = ""
        #: how long a migration would take (simulated: nothing waits); one longer than its
        #: target's `timeout_s` is cancelled as libvirt's would be, the guest left here
        self.migration_s = 0.0

    def create(self, spec: DomainSpec) -> None:
        with self._lock:
            if spec.name in self._guests:
                raise DriverError("already exists", f"domain '{spec.name}' already exists")
            if self._created >= self._reserved:  # a failed write leaves no guest behind
                self._save_counter(self._created + COUNTER_BLOCK)
            self._created += 1
            self._guests[spec.name] = GuestInfo(spec.name, GuestState.RUNNING, spec)
            index = (self._created - 1) % (254 * len(_RANGES))
            self._addresses[spec.name] = f"{_RANGES[index // 254]}.{1 + index % 254}"

    def _save_counter(self, reserved: int) -> None:
        """Written (and replaced atomically) before an address past the last
        reservation is handed out; kept as the reservation only once written
        (a failed write is tried again at the next create)."""
        if self._counter is not None:
            self._counter.parent.mkdir(parents=True, exist_ok=True)
            partial = self._counter.with_name(self._counter.name + ".tmp")
            partial.write_text(str(reserved))
            os.replace(partial, self._counter)
        self._reserved = reserved

    def delete(self, name: str) -> None:
        with self._lock:
            self._get(name)
            del self._guests[name]
        self._end_consoles(name, "deleted")

    def start(self, name: str) -> None:
        self._move(name, {GuestState.SHUTOFF}, GuestState.RUNNING)

    def shutdown(self, name: str, timeout_s: float) -> None:
        self._move(name, {GuestState.RUNNING, GuestState.PAUSED}, GuestState.SHUTOFF)

    def suspend(self, name: str) -> None:
        self._move(name, {GuestState.RUNNING}, GuestState.PAUSED)

    def resume(self, name: str) -> None:
        self._move(name, {GuestState.PAUSED}, GuestState.RUNNING)

    def repin(self, name: str, cpuset: frozenset[int]) -> None:
        if not cpuset:
            raise DriverError("invalid", "empty cpuset")
        self._update(name, lambda spec: spec.with_cpuset(cpuset))

    def give_console(self, name: str) -> bool:
        """A simulated guest always has a console: nothing to give."""
        self._get(name)
        return False

    def relabel(self, name: str, owner: str) -> None:
        self._update(name, lambda spec: replace(spec, owner=owner))

    def resize(self, name: str, vcpus: int, memory_mib: int) -> None:
        if vcpus < 1 or memory_mib < 1:
            raise DriverError("invalid", "vcpus and memory must be positive")
        self._update(name, lambda spec: replace(spec, vcpus=vcpus, memory_mib=memory_mib))

    def migrate(self, name: str, target: MigrationTarget) -> Migrated:
        """The guest leaves: it is put on the process's wire, pinned to the
        target's CPUs, for the target's `receive` (it keeps its address)."""
        with self._lock:
            guest = self._get(name)
            if guest.state is not GuestState.RUNNING or guest.spec is None:
                raise DriverError(
                    "invalid", f"domain '{name}' is {guest.state.value}: only a running guest migrates"
                )
            if self.migration_failure:
                failure, self.migration_failure = self.migration_failure, ""
                raise DriverError("failed", failure)
            if target.timeout_s is not None and self.migration_s > target.timeout_s:
                raise DriverError(
                    "timed out", f"migrate {name}: not done in {target.timeout_s:g} s, cancelled"
                )
            _WIRE.send(guest.spec.with_cpuset(target.cpuset), self._addresses[name])
            del self._guests[name]
        self._end_consoles(name, "migrated")
        return Migrated(seconds=0.0)

    def migrating_out(self, name: str) -> bool:
        """A sim migration is over when `migrate` returns."""
        return False

    def receive(self, spec: DomainSpec) -> None:
        """The guest a sim peer sent: it runs here from now on, as `spec` says."""
        with self._lock:
            if spec.name in self._guests:
                guest = self._guests[spec.name]
                if guest.state is GuestState.RUNNING:
                    return  # received before (a commit retried)
                raise DriverError("already exists", f"domain '{spec.name}' already exists")
            sent = _WIRE.take(spec.name)
            if sent is None:
                raise DriverError("not found", f"domain '{spec.name}' has not arrived")
            self._guests[spec.name] = GuestInfo(spec.name, GuestState.RUNNING, spec)
            self._addresses[spec.name] = sent[1]

    def stats(self) -> dict[str, tuple[int, float]]:
        """Sim guests use no CPU and hold their whole memory."""
        with self._lock:
            return {
                g.name: (0, float(g.spec.memory_mib))
                for g in self._guests.values()
                if g.state is GuestState.RUNNING and g.spec is not None
            }

    def guests(self) -> list[GuestInfo]:
        with self._lock:
            return list(self._guests.values())

    def info(self, name: str) -> GuestInfo:
        return self._get(name)

    def addresses(self, name: str) -> list[str]:
        """A running sim guest has an address in TEST-NET-2 (198.51.100.0/24,
        for documentation), then TEST-NET-3 and -1: given at creation, in
        order, so tests can predict it."""
        with self._lock:
            guest = self._get(name)
            if guest.state is not GuestState.RUNNING:
                return []
            return [self._addresses[name]]

    def nic_addresses(self, name: str) -> dict[str, list[str]]:
        """The simulated address, on the guest's first NIC (none without one)."""
        guest = self._get(name)
        nics = guest.spec.nics if guest.spec is not None else ()
        addresses = self.addresses(name)
        return {nics[0].mac: addresses} if nics and addresses else {}

    def networks(self) -> list[NetworkInfo]:
        with self._lock:
            return list(self._networks.values())

    def bridge_exists(self, name: str) -> bool:
        return name in self._bridges

    def define_network(self, name: str, subnet: ipaddress.IPv4Network) -> None:
        with self._lock:
            if name in self._networks:
                raise DriverError("already exists", f"network '{name}' already exists")
            self._networks[name] = NetworkInfo(name, f"sim-{name}"[:15], str(subnet), True)

    def start_network(self, name: str) -> None:
        with self._lock:
            network = self._networks.get(name)
            if network is None:
                raise DriverError("not found", f"no network with matching name '{name}'")
            self._networks[name] = replace(network, active=True)

    def console(self, name: str, output: Callable[[bytes], None], closed: Callable[[str], None]) -> Console:
        """A `SimConsole` on a running guest: a banner saying it is simulated, then echoes."""
        with self._lock:
            guest = self._get(name)
            if guest.state is not GuestState.RUNNING:
                raise DriverError("invalid", f"domain '{name}' is {guest.state.value}")
            log = guest.spec.serial_log if guest.spec is not None else None
            console = SimConsole(name, output, closed, log)
            self._consoles.setdefault(name, []).append(console)
        console.show(SIM_CONSOLE_BANNER.format(name=name).encode())
        return console

    def _end_consoles(self, name: str, how: str) -> None:
        with self._lock:
            consoles = self._consoles.pop(name, [])
        for console in consoles:
            console.end(f"the console of {name} closed (the guest was {how})")

    def _get(self, name: str) -> GuestInfo:
        with self._lock:
            guest = self._guests.get(name)
        if guest is None:
            raise DriverError("not found", f"no domain with matching name '{name}'")
        return guest

    def _move(self, name: str, allowed: set[GuestState], to: GuestState) -> None:
        with self._lock:
            guest = self._get(name)
            if guest.state not in allowed:
                raise DriverError("invalid", f"domain '{name}' is {guest.state.value}")
            self._guests[name] = replace(guest, state=to)
        if to is GuestState.SHUTOFF:
            self._end_consoles(name, "stopped")

    def _update(self, name: str, change: Callable[[DomainSpec], DomainSpec]) -> None:
        with self._lock:
            guest = self._get(name)
            assert guest.spec is not None
            self._guests[name] = replace(guest, spec=change(guest.spec))


def _count_in(counter: Path) -> int:
    """The count kept in `counter` (0 when there is none). One damaged by
    hand is said and counted from 0 again: simulated addresses are not worth
    an agent that will not start."""
    try:
        text = counter.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    if text.isdigit():
        return int(text)
    log.warning(
        "sim driver: %s holds no count (%r): addresses start again from the first", counter, text[:40]
    )
    return 0
