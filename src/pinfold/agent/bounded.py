"""The heartbeat's per-VM parts, carried within a number of bytes of JSON.

The controller answers a body over its limit (4 MiB by default) with 413, so
a beat over it would fail every time and the host be taken for down. At the
model's bounds (16384 VMs of 63-character names, 8192 CPUs) a beat's per-VM
parts are far over it: the VMs' NICs with their addresses ~100 MB, their pins
~790 MB (each VM pinned to its whole vNode: 2048 VMs on a 512-CPU vNode are
5 MB already), the monitor's per-VM usage ~1.7 MB. The VMs' states must go
whole (the controller settles every VM by them: one left out would be taken
for gone), and they take at most ~1.3 MB at those bounds.

So the parts that can be cut are carried whole VM by whole VM, in an order
of their own, while they fit (`Bound.carry`); the rest of a VM's part is left
out of that beat, and its `Bound` says so in the log once. `HEARTBEAT_MAX_BYTES`
is what a beat may take; `registration.heartbeat_document` gives each part,
in turn, what the parts before it left (the NICs first, at most
`addresses.NICS_MAX_BYTES`, then the per-VM usage, then the pins).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["HEARTBEAT_MAX_BYTES", "Bound", "entry_size", "sized"]

logger = logging.getLogger(__name__)

#: what a beat may take as JSON: the controller's default body limit (4 MiB) less room
#: for what this count leaves out (the Registrar's own JSON encoding, a period's drift)
HEARTBEAT_MAX_BYTES = (4 << 20) - (256 << 10)

T = TypeVar("T")


def entry_size(name: str, value: Any) -> int:
    """What one VM's entry takes in a part's JSON object (braces included:
    a little over, never under)."""
    return len(json.dumps({name: value}))


def sized(items: Mapping[str, T], same: Callable[[T], Hashable] | None = None) -> list[tuple[str, T, int]]:
    """Each item with its `entry_size`, in order. `same` keys the values
    known to be equal, whose JSON is measured once: a beat's pins are a few
    lists (each level's vNode) repeated for every VM, and measuring 2048 lists
    of 512 CPUs one by one took 0.75 s of every beat."""
    if same is None:
        return [(name, value, entry_size(name, value)) for name, value in items.items()]
    measured: dict[Hashable, int] = {}
    entries = []
    for name, value in items.items():
        key = same(value)
        size = measured.get(key)
        if size is None:
            size = measured[key] = len(json.dumps(value))
        entries.append((name, value, len(json.dumps(name)) + size + 4))  # {"name": value}
    return entries


class Bound:
    """One part of the beat (`what`, for the log), cut to whole VMs: each
    part's own instance says once that it cut (the daemon keeps one per part)."""

    def __init__(self, what: str, order: str) -> None:
        self.what = what
        #: which VMs go first, in words, for the log
        self.order = order
        self._said = False

    def carry(self, entries: Sequence[tuple[str, T, int]], max_bytes: int) -> dict[str, T]:
        """`entries` (name, value, `entry_size`) in the order given, while
        their JSON object stays within `max_bytes`; the first that does not
        fit ends it."""
        carried: dict[str, T] = {}
        total = 2  # the braces
        for name, value, size in entries:
            if total + size + 2 > max_bytes:  # ", " between entries
                self._say(len(entries) - len(carried), max_bytes)
                break
            carried[name] = value
            total += size + 2
        return carried

    def _say(self, left_out: int, max_bytes: int) -> None:
        if not self._said:
            self._said = True
            logger.warning(
                "the heartbeat's %s exceed %d bytes: %d VMs' left out of this beat (%s; said once)",
                self.what, max(0, max_bytes), left_out, self.order,
            )  # fmt: skip
