"""A small history of each host, kept in the controller's memory: a bounded
ring of heartbeat samples (vNode sizes and the cores each vNode uses), for the
dashboard's live counterpart of the simulator's vNode plot. Lost on restart,
by design: it is a view, not a record."""

from __future__ import annotations

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
    def __init__(self, per_host: int = 720) -> None:
        """720 samples: an hour at the default 5 s... or two at 10 s."""
        self._per_host = per_host
        self._rings: dict[str, deque[Sample]] = {}
        self._lock = threading.Lock()

    def record(self, host_id: str, now: float, heartbeat: Mapping[str, Any]) -> None:
        vnodes = heartbeat.get("vnodes") or {}
        usage = heartbeat.get("usage") or {}
        used_by_level = usage.get("vnodes") or {}
        sample = Sample(
            now,
            {str(level): len(cpus) for level, cpus in vnodes.items()},
            {
                str(level): float(v.get("used_cores", 0.0))
                for level, v in used_by_level.items()
                if isinstance(v, dict)
            },
        )
        with self._lock:
            ring = self._rings.setdefault(host_id, deque(maxlen=self._per_host))
            ring.append(sample)

    def of(self, host_id: str, since: float = 0.0) -> list[Sample]:
        with self._lock:
            return [sample for sample in self._rings.get(host_id, ()) if sample.time >= since]
