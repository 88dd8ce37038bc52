"""A VM trace as columns, and the error every reader raises on bad input.

Columns (numpy arrays, one entry per VM) rather than one object per VM: the
Azure trace has 410,276 VMs and the synthetic scale test a million, and the
replay reads them by index.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["NO_DEPARTURE", "Trace", "TraceError"]

#: `departure` of a VM that outlives the trace.
NO_DEPARTURE = -1


class TraceError(ValueError):
    """Bad trace input: names the file, the line (1-based, when known) and the problem."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, eq=False)
class Trace:
    """VMs with arrival and departure times (integer seconds), sizes, and
    levels (NaN where the trace records none).

    `source` says where it came from; `level_note` how levels were assigned
    (reports print it).
    """

    vm_ids: list[str]
    arrival: npt.NDArray[np.int64]
    departure: npt.NDArray[np.int64]
    vcpus: npt.NDArray[np.int64]
    memory_mib: npt.NDArray[np.int64]
    ratio: npt.NDArray[np.float64]
    source: str = ""
    level_note: str = "levels from the trace"
    #: at one instant, do departures go first (neutral and Azure traces, DESIGN.md)
    #: or arrivals (SlackVM's replay order)?
    departures_first: bool = True

    def __post_init__(self) -> None:
        n = len(self.vm_ids)
        for name in ("arrival", "departure", "vcpus", "memory_mib", "ratio"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"trace column {name} has {len(getattr(self, name))} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.vm_ids)

    @property
    def has_levels(self) -> bool:
        return bool(len(self)) and not bool(np.isnan(self.ratio).any())

    @property
    def end(self) -> int:
        """The last instant the trace knows of (an arrival or a departure)."""
        if not len(self):
            return 0
        return int(max(self.arrival.max(), self.departure.max()))

    def with_levels(self, ratio: npt.NDArray[np.float64], note: str) -> Trace:
        return replace(self, ratio=ratio, level_note=note)

    @classmethod
    def from_columns(
        cls,
        vm_ids: list[str],
        arrival: list[int] | npt.NDArray[np.int64],
        departure: list[int] | npt.NDArray[np.int64],
        vcpus: list[int] | npt.NDArray[np.int64],
        memory_mib: list[int] | npt.NDArray[np.int64],
        ratio: list[float] | npt.NDArray[np.float64] | None = None,
        source: str = "",
    ) -> Trace:
        n = len(vm_ids)
        return cls(
            vm_ids=vm_ids,
            arrival=np.asarray(arrival, dtype=np.int64),
            departure=np.asarray(departure, dtype=np.int64),
            vcpus=np.asarray(vcpus, dtype=np.int64),
            memory_mib=np.asarray(memory_mib, dtype=np.int64),
            ratio=np.full(n, np.nan) if ratio is None else np.asarray(ratio, dtype=np.float64),
            source=source,
        )
