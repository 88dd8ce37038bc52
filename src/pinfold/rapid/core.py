"""What every part of RAPID's VM Manager shares (`VMMCore`): the back-end,
RAPID's state, configuration.xml and `[rapid]` settings, how to read this
host's usage, the per-user locks and the AS answers a start waits for.

The VMM is split by concern into a chain of classes, each in its module and
each using only those below it: `VMMCore` here; `ds.DSLink` (what the DS and
the SLAM are told); `vms.VMKeeper` (a RAPID VM made with its address, or
removed); `upkeep.Upkeep` (start-up recovery, the register loop's passes,
the helpers, the heartbeats) and `handlers.Handlers` (the requests of the
SLAM, the ASs and the DS) side by side; `vmm.VMM` puts the two together.
Every part logs as the VMM (logger `pinfold.rapid.vmm`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pinfold.rapid.backend import Backend
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.settings import RapidSettings
from pinfold.rapid.state import RapidState

__all__ = ["Usage", "VMMCore", "log"]

#: the VMM's one logger, whichever part logs
log = logging.getLogger("pinfold.rapid.vmm")


@dataclass(frozen=True)
class Usage:
    """What RAPID reports to the DS about this host."""

    cpu_load_pct: int
    free_memory_mb: int
    gpu_util_pct: int
    cpu_cores: int


class VMMCore:
    def __init__(
        self,
        backend: Backend,
        state: RapidState,
        config: RapidConfig,
        settings: RapidSettings,
        usage: Callable[[], Usage],
        vm_usage: Callable[[str], tuple[float | None, float | None] | None] = lambda name: None,
    ) -> None:
        """`vm_usage(vm)`: (CPU use in % of its vCPUs, memory in use in MB), None
        for no figures, a None inside for one missing: from the agent's monitor
        (None before its first sample), or on OpenStack from Nova's diagnostics
        (`OpenStackBackend.vm_usage`)."""
        self.backend = backend
        self.state = state
        self.config = config
        self.settings = settings
        self.usage = usage
        self.vm_usage = vm_usage
        self._users_lock = threading.Lock()
        self._user_locks: dict[int, _UserLock] = {}
        self._as_answers: dict[int, _ASAnswer] = {}
        #: the SLAM this process registered with (RAPID: once per start, and after a DS registration)
        self._slam_told: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.registered = threading.Event()
        #: the DS's addresses, for `known_peer` (a name is resolved once, here)
        self._ds_addresses = _addresses_of(config.ds_ip) if settings.allow_known_peers else frozenset()

    # -- per-user serialisation --------------------------------------------------------

    @contextlib.contextmanager
    def _user(self, user_id: int, wait: bool = True) -> Iterator[bool]:
        """Requests about one user, one at a time. Yields whether the user's
        lock was taken: always, unless `wait` is False and it is held. A
        lock lives only while someone holds or waits for it, so user ids a
        peer makes up cost nothing once answered."""
        with self._users_lock:
            entry = self._user_locks.setdefault(user_id, _UserLock())
            entry.users += 1
        taken = entry.lock.acquire(blocking=wait)
        try:
            yield taken
        finally:
            if taken:
                entry.lock.release()
            with self._users_lock:
                entry.users -= 1
                if not entry.users:
                    del self._user_locks[user_id]

    @contextlib.contextmanager
    def _as_answer(self, user_id: int) -> Iterator[_ASAnswer]:
        """Where the AS of the user's VM will leave its answer, for as long as
        a start waits; gone after, however the start ends."""
        answer = _ASAnswer()
        with self._users_lock:
            self._as_answers[user_id] = answer
        try:
            yield answer
        finally:
            with self._users_lock:
                if self._as_answers.get(user_id) is answer:
                    del self._as_answers[user_id]

    def _abandon_as_waits(self) -> None:
        """End every start's wait for its AS, as if the AS had refused: the VMM
        stops, and a start must not hold the process for the rest of its wait."""
        with self._users_lock:
            waiting = list(self._as_answers.values())
        for answer in waiting:
            answer.give(False)


@dataclass
class _UserLock:
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: threads holding or waiting for it
    users: int = 0


class _ASAnswer:
    """What the AS of a starting VM said (its DS registration went well or
    not); the last answer wins, as RAPID's asSync flag."""

    def __init__(self) -> None:
        self._given = threading.Event()
        self._synced = False

    def give(self, synced: bool) -> None:
        self._synced = synced
        self._given.set()

    def wait(self, timeout_s: float) -> bool:
        """True if the AS confirmed within `timeout_s`."""
        return self._given.wait(timeout_s) and self._synced


def _addresses_of(host: str) -> frozenset[str]:
    """The IP addresses of `host` (itself if it is one); none if it cannot be resolved."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError as error:
        log.warning("RAPID: cannot resolve the DS's address %s: %s", host, error)
        return frozenset()
