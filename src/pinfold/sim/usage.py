"""Per-VM CPU usage series, and the usage of each vNode of the observed host.

A usage file is CSV `vm_id,t_s,cpu_util_pct` (plain or .gz), the layout of
`../shared/data/traces/bitbrains_small_cpu_util.csv.gz`: each sample holds until
the VM's next one. A vNode's usage at an instant is, as in SlackVM, the cores
its VMs use: the sum of util% / 100 x vCPUs over the VMs of that level on the
host at that instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pinfold.sim.readers._common import headed_rows, open_text, parse_float, parse_int
from pinfold.sim.replay import Result
from pinfold.sim.trace import Trace, TraceError

__all__ = ["HEADER", "VNodeUsage", "observed_usage", "read_usage"]

HEADER = ["vm_id", "t_s", "cpu_util_pct"]

Series = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]


def read_usage(path: str | Path) -> dict[str, Series]:
    """vm_id -> (sample times ascending, util %)."""
    samples: dict[str, tuple[list[int], list[float]]] = {}
    with open_text(path) as handle:
        for line, row in headed_rows(handle, path, HEADER):
            t = parse_int(row[1], "t_s", path, line, minimum=0)
            pct = parse_float(row[2], "cpu_util_pct", path, line, minimum=0.0)
            times, values = samples.setdefault(row[0].strip(), ([], []))
            if times and t <= times[-1]:
                raise TraceError(path, line, f"t_s {t} of {row[0].strip()} is not after its previous sample")
            times.append(t)
            values.append(pct)
    return {
        vm: (np.array(t, dtype=np.int64), np.array(v, dtype=np.float64)) for vm, (t, v) in samples.items()
    }


@dataclass(frozen=True)
class VNodeUsage:
    """On the observed host, per sample time: each level's vNode size (CPUs)
    and usage (cores)."""

    times: npt.NDArray[np.int64]
    levels: list[float]
    sizes: npt.NDArray[np.int32]
    usage: npt.NDArray[np.float64]


def observed_usage(result: Result, trace: Trace, usage: dict[str, Series]) -> VNodeUsage | None:
    """Sample the observed host at every usage time inside the replay; None
    when no VM of that host has usage samples."""
    s = result.series
    if not len(s.time) or not result.observed_stays:
        return None
    index = {name: i for i, name in enumerate(trace.vm_ids)}
    stays = {
        trace.vm_ids[vm]: stay for vm, stay in result.observed_stays.items() if trace.vm_ids[vm] in usage
    }
    if not stays:
        return None
    # after the last event the host keeps its state, so samples past it count too
    grid = np.unique(np.concatenate([usage[name][0] for name in stays]))
    grid = grid[grid >= int(s.time[0])]
    position = np.searchsorted(s.time, grid, side="right") - 1
    sizes = np.where(position[:, None] >= 0, s.observed_vnodes[np.maximum(position, 0)], 0).astype(np.int32)
    cores = np.zeros((len(grid), len(result.levels)))
    for name, (arrival, departure) in stays.items():
        vm = index[name]
        times, pct = usage[name]
        alive = (grid >= arrival) & (grid < (departure if departure is not None else np.iinfo(np.int64).max))
        sample = np.searchsorted(times, grid[alive], side="right") - 1
        known = sample >= 0
        level = result.levels.index(float(trace.ratio[vm]))
        rows = np.flatnonzero(alive)[known]
        cores[rows, level] += pct[sample[known]] / 100.0 * float(trace.vcpus[vm])
    return VNodeUsage(grid, result.levels, sizes, cores)
