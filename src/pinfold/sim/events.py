"""The event engine: order a trace's arrivals and departures, and walk them.

It knows nothing of placement: it calls back with (time, vm index, is arrival)
for each event and once at the end of each instant. DESIGN.md's order: at one
instant, departures go before arrivals (neutral and Azure traces), or arrivals
before departures (SlackVM monitoring files, as SlackVM replays them); ties
inside a kind keep trace order.
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
    # sort key of each kind: the kind that goes first at an instant sorts lower
    arrival_key, departure_key = (1, 0) if trace.departures_first else (0, 1)
    kinds = np.concatenate([np.full(len(index), arrival_key), np.full(len(leaving), departure_key)])
    vms = np.concatenate([index, leaving])
    order = np.lexsort((vms, kinds, times))
    is_arrival = np.concatenate([np.ones(len(index), dtype=bool), np.zeros(len(leaving), dtype=bool)])
    return EventList(times[order], is_arrival[order], vms[order], int(len(trace) - len(index)))


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
