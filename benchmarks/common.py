"""Helpers shared by the benchmarks: where the data is, one-core pinning, stats, waiting, CPU time."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

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


def poll(
    check: Callable[[], T | None],
    what: str = "the guest to answer",
    timeout_s: float = 180.0,
    every_s: float = 0.02,
) -> T:
    """Call `check` every `every_s` until it returns something true; TimeoutError
    naming `what` after `timeout_s` (a benchmark has no pytest to fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def process_cpu_s(process: psutil.Process) -> float:
    """A process's own CPU time so far, user and system, in seconds (its children's not counted)."""
    times = process.cpu_times()
    return float(times.user + times.system)
