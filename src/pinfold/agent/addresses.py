"""The VMs' NICs and addresses the heartbeat carries, kept between beats.

Learning a VM's addresses is a libvirt call per VM (its DHCP leases, then
its guest agent), and the heartbeat runs every period for every VM: asking
for each VM on each beat would make a host with many VMs beat slowly. The
book asks only for the VMs it knows nothing of, whose state changed (a
restarted guest may take another lease), that run with a NIC still without
an address (a guest booting), and, every `recheck_s`, the others (a lease
renewed on another address); at most `per_beat` of them per beat, the longest unasked
first, so a host whose VMs all boot at once spreads the asking over beats.

A beat carries at most `NICS_MAX_BYTES` of NICs (as JSON), and less when the
rest of the beat leaves less (`bounded`): at the model's bounds (16384 VMs,
8 NICs each, 16 addresses a NIC) they would be ~100 MB, and the controller
answers a body over 4 MiB with 413, so every beat would fail and the host be
taken for down. Past the bound whole VMs are left out, the last asked kept
first (what changed most recently); the controller keeps what it had for
those left out, and each comes in again when it is asked (at the latest at
its recheck). The agent says so in its log once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pinfold.agent.bounded import Bound, entry_size
from pinfold.agent.service import Agent, AgentError
from pinfold.agent.store import StoredVM
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import MAX_NIC_ADDRESSES, NIC

__all__ = ["NICS_MAX_BYTES", "AddressBook", "nic_document"]

#: how often the addresses of a VM that has them all are asked for again
RECHECK_S = 60.0
#: at most this many VMs are asked for per beat
PER_BEAT = 32
#: a beat's NICs take at most this many bytes of JSON: half the controller's 4 MiB
#: body limit, the other half left to the VMs' states, pins and usage (`bounded`)
NICS_MAX_BYTES = 2 << 20


def nic_document(nic: NIC, addresses: Sequence[str]) -> dict[str, Any]:
    """A NIC and the addresses learnt for it, as the agent's API and its
    heartbeat show them (no network or no bridge: null)."""
    return {
        "network": nic.network or None, "bridge": nic.bridge or None, "mac": nic.mac, "addresses": addresses,
    }  # fmt: skip


@dataclass(frozen=True)
class _Known:
    state: VMState
    asked_at: float
    nics: tuple[dict[str, Any], ...]
    #: what they take in a beat (`bounded.entry_size`)
    size: int

    @property
    def complete(self) -> bool:
        """Nothing more to learn before the recheck: every NIC has an address,
        or the VM is not running (a stopped guest holds none until its state
        changes, and is not asked for on every beat meanwhile)."""
        return self.state is not VMState.RUNNING or all(nic["addresses"] for nic in self.nics)


class AddressBook:
    """Per user VM, its NICs (network, bridge, MAC) with the addresses learnt
    for each, as last asked; `nics` brings it up to date for one beat."""

    def __init__(
        self,
        agent: Agent,
        recheck_s: float = RECHECK_S,
        per_beat: int = PER_BEAT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agent = agent
        self._recheck_s = recheck_s
        self._per_beat = per_beat
        self._clock = clock
        self._known: dict[str, _Known] = {}
        self._lock = threading.Lock()
        self._bound = Bound("NICs", "the last asked are sent first")
        #: how many VMs were asked for since the start (tests and the curious)
        self.asked = 0

    def nics(
        self, vms: Mapping[str, StoredVM], max_bytes: int = NICS_MAX_BYTES
    ) -> dict[str, list[dict[str, Any]]]:
        """The NICs of `vms` (those that have any), asking the hypervisor only
        for the VMs that need it (the module's docstring says which), within
        `max_bytes` of JSON (and never more than NICS_MAX_BYTES)."""
        with self._lock:
            now = self._clock()
            for name in set(self._known) - set(vms):
                del self._known[name]  # deleted: forgotten
            for name in self._due(vms, now)[: self._per_beat]:
                nics = self._ask(name)
                self._known[name] = _Known(vms[name].state, now, nics, entry_size(name, nics))
                self.asked += 1
            latest = sorted(self._known.items(), key=lambda item: -item[1].asked_at)
            entries = [(name, list(known.nics), known.size) for name, known in latest if known.nics]
            return self._bound.carry(entries, min(max_bytes, NICS_MAX_BYTES))

    def _due(self, vms: Mapping[str, StoredVM], now: float) -> list[str]:
        """The VMs to ask for, the longest unasked (or never asked) first."""
        due = []
        for name, vm in vms.items():
            if not vm.nics:
                continue  # no NIC: nothing to learn
            known = self._known.get(name)
            if (
                known is None
                or known.state != vm.state
                or not known.complete
                or now - known.asked_at >= self._recheck_s
            ):
                due.append((known.asked_at if known is not None else float("-inf"), name))
        return [name for _, name in sorted(due)]

    def _ask(self, name: str) -> tuple[dict[str, Any], ...]:
        try:
            found = self._agent.nic_addresses(name)
        except AgentError:  # deleted meanwhile
            return ()
        # the first MAX_NIC_ADDRESSES of each NIC: the controller refuses more
        return tuple(nic_document(nic, learnt[:MAX_NIC_ADDRESSES]) for nic, learnt in found)
