"""Helpers shared by the benchmarks: where the data is, one-core pinning, stats."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

SHARED = Path(os.environ.get("PINFOLD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
TOPOLOGIES = SHARED / "data" / "topologies"
EPYC_EXP = TOPOLOGIES / "topology_EPYC-7662-exp.json"


def pin_to_one_core() -> int | None:
    """Run on one core, as the targets say; returns the core or None if the
    platform does not allow it."""
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        return None
    return core


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
