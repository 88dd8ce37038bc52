"""A small history of each host, kept in the controller's memory: the heartbeat
samples of the last hour (vNode sizes and the cores each vNode uses), for the
dashboard's live counterpart of the simulator's vNode plot. Lost on restart,
by design: it is a view, not a record.

Bounded twice: by time (`span_s`, what the plot shows) and by count
(`per_host`, so that an agent beating very fast cannot grow a ring without
limit; at the agents' default period of 10 s an hour is 360 samples)."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["History", "Sample"]


@dataclass(frozen=True)
class Sample:
    time: float
    sizes: dict[str, int]  # level -> CPUs in its vNode
    used: dict[str, float]  # level -> cores its CPUs used

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "sizes": self.sizes, "used": self.used}


class History:
    def __init__(self, span_s: float = 3600.0, per_host: int = 3600) -> None:
        """Samples of the last `span_s` seconds, at most `per_host` of them
        per host (the newest: an hour at one sample a second)."""
        self.span_s = span_s
        self._per_host = per_host
        self._rings: dict[str, deque[Sample]] = {}
        self._lock = threading.Lock()

    def record(self, host_id: str, now: float, heartbeat: Mapping[str, Any]) -> None:
        """Add a sample of `heartbeat`; what is not of the expected shape (the
        API checks it, a heartbeat from elsewhere may not be) is left out."""
        sample = Sample(now, _sizes(heartbeat.get("vnodes")), _used(heartbeat.get("usage")))
        with self._lock:
            ring = self._rings.setdefault(host_id, deque(maxlen=self._per_host))
            ring.append(sample)
            while ring[0].time < now - self.span_s:
                ring.popleft()

    def of(self, host_id: str, now: float, since: float = 0.0) -> list[Sample]:
        """The host's samples of the `span_s` before `now` (the controller's
        clock: a host that fell silent has its old samples age out), from `since`."""
        start = max(since, now - self.span_s)
        with self._lock:
            return [sample for sample in self._rings.get(host_id, ()) if sample.time >= start]


def _sizes(vnodes: object) -> dict[str, int]:
    """level -> CPUs in its vNode, from `{level: [cpu, ...]}`."""
    if not isinstance(vnodes, Mapping):
        return {}
    return {str(level): len(cpus) for level, cpus in vnodes.items() if isinstance(cpus, list | tuple)}


def _used(usage: object) -> dict[str, float]:
    """level -> cores used, from `{"vnodes": {level: {"used_cores": n}}}`."""
    by_level = usage.get("vnodes") if isinstance(usage, Mapping) else None
    if not isinstance(by_level, Mapping):
        return {}
    used = {}
    for level, entry in by_level.items():
        cores = entry.get("used_cores", 0.0) if isinstance(entry, Mapping) else None
        if isinstance(cores, int | float) and not isinstance(cores, bool) and math.isfinite(cores):
            used[str(level)] = float(cores)
    return used
