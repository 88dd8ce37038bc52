"""The event engine: order a trace's arrivals and departures, and walk them.

It knows nothing of placement: it calls back with (vm index, is arrival) for
each event and once at the end of each instant. DESIGN.md's order: at one
instant, departures go before arrivals; ties inside a kind keep trace order.
A VM that leaves at the instant it arrives holds nothing and is skipped (the
replay reports how many).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pinfold.sim.trace import NO_DEPARTURE, Trace

__all__ = ["EventList", "order_events", "walk"]

DEPARTURE = 0
ARRIVAL = 1


@dataclass(frozen=True)
class EventList:
    times: npt.NDArray[np.int64]
    arrivals: npt.NDArray[np.bool_]
    vms: npt.NDArray[np.int64]
    zero_lifetime: int

    def __len__(self) -> int:
        return len(self.times)

    @property
    def instants(self) -> int:
        return int(np.unique(self.times).size) if len(self.times) else 0


def order_events(trace: Trace) -> EventList:
    kept = (trace.departure == NO_DEPARTURE) | (trace.departure > trace.arrival)
    index = np.flatnonzero(kept)
    leaving = index[trace.departure[index] != NO_DEPARTURE]
    times = np.concatenate([trace.arrival[index], trace.departure[leaving]])
    kinds = np.concatenate([np.full(len(index), ARRIVAL), np.full(len(leaving), DEPARTURE)])
    vms = np.concatenate([index, leaving])
    order = np.lexsort((vms, kinds, times))
    return EventList(times[order], kinds[order] == ARRIVAL, vms[order], int(len(trace) - len(index)))


def walk(
    events: EventList,
    on_event: Callable[[int, int, bool], None],
    on_instant_end: Callable[[int], None],
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 8192,
) -> None:
    """Call `on_event(time, vm, is_arrival)` for each event in order, and
    `on_instant_end(t)` after the last event of each instant."""
    times = events.times.tolist()
    arrivals = events.arrivals.tolist()
    vms = events.vms.tolist()
    total = len(times)
    for i in range(total):
        on_event(times[i], vms[i], arrivals[i])
        if i + 1 == total or times[i + 1] != times[i]:
            on_instant_end(times[i])
        if on_progress is not None and (i + 1) % progress_every == 0:
            on_progress(i + 1)
    if on_progress is not None:
        on_progress(total)
