"""PNG plots of replay results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from pinfold.sim.replay import Result
from pinfold.sim.report import decimate
from pinfold.sim.slackvm_replay import HostReplay
from pinfold.sim.usage import VNodeUsage

__all__ = ["draw_all", "draw_host_replay", "draw_vnode_usage"]

MAX_POINTS = 4000
LEVEL_COLOURS = {1.0: "#1b6ca8", 2.0: "#f29e4c", 3.0: "#c8553d", 4.0: "#6a4c93"}
OTHER_COLOURS = ["#2a9d8f", "#8d99ae", "#e9c46a", "#264653"]


def _days(times: npt.NDArray[np.int64], start: float) -> npt.NDArray[np.float64]:
    """Days since the trace's first event."""
    return (np.asarray(times, dtype=np.float64) - start) / 86_400.0


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def draw_all(results: Sequence[Result], out: Path, usage: VNodeUsage | None = None) -> list[tuple[str, str]]:
    """Draw every plot into `out`; returns (title, file name) pairs for the report."""
    if not results or not len(results[0].series.time):
        return []
    images = [
        ("Hosts in use against the lower bound", _hosts(results, out / "hosts.png")),
        ("Unallocated CPU and memory on the hosts in use", _unallocated(results, out / "unallocated.png")),
    ]
    first = results[0]
    if first.observed_host is not None:
        title = f"vNode sizes on host {first.observed_host} ({first.name})"
        images.append((title, _vnodes(first, out / "vnodes.png")))
    if usage is not None:
        title = f"vNode sizes against usage on host {first.observed_host} ({first.name})"
        file = draw_vnode_usage(
            usage.times, usage.levels, usage.sizes, usage.usage, out / "vnode_usage.png", title
        )
        images.append((title, file))
    return images


def _hosts(results: Sequence[Result], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bound = results[0].series
    keep = decimate(bound.lower_bound, MAX_POINTS)
    start = float(bound.time[0])
    ax.fill_between(_days(bound.time[keep], start), bound.lower_bound[keep], step="post", color="0.85",
                    label="lower bound")  # fmt: skip
    for result in results:
        s = result.series
        keep = decimate(s.hosts_in_use, MAX_POINTS)
        ax.step(
            _days(s.time[keep], start), s.hosts_in_use[keep], where="post", linewidth=1.0, label=result.name
        )
    ax.set_xlabel("time since the first event (days)")
    ax.set_ylabel("hosts in use")
    ax.set_title("Hosts in use per policy (segregated: all level clusters together)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def _unallocated(results: Sequence[Result], path: Path) -> str:
    fig, (cpu_ax, mem_ax) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for result in results:
        s = result.series
        keep = decimate(s.hosts_in_use, MAX_POINTS)
        with np.errstate(invalid="ignore", divide="ignore"):
            cpu = 1 - s.cpus_allocated[keep] / s.cpus_in_use_hosts[keep]
            mem = 1 - s.memory_allocated[keep] / s.memory_in_use_hosts[keep]
        days = _days(s.time[keep], float(s.time[0]))
        cpu_ax.plot(days, 100 * cpu, linewidth=0.9, label=result.name)
        mem_ax.plot(days, 100 * mem, linewidth=0.9, label=result.name)
    cpu_ax.set_ylabel("unallocated CPUs (%)")
    mem_ax.set_ylabel("unallocated memory (%)")
    mem_ax.set_xlabel("time since the first event (days)")
    cpu_ax.set_title("Capacity left unallocated on the hosts in use")
    for ax in (cpu_ax, mem_ax):
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    cpu_ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def _vnodes(result: Result, path: Path) -> str:
    """SlackVM's Figure 3: each level's vNode size on one host over time."""
    s = result.series
    keep = decimate(s.observed_vnodes.sum(axis=1), MAX_POINTS)
    days = _days(s.time[keep], float(s.time[0]))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    sizes = [s.observed_vnodes[keep, j] for j in range(len(result.levels))]
    colours = [LEVEL_COLOURS.get(level, OTHER_COLOURS[i % 4]) for i, level in enumerate(result.levels)]
    ax.stackplot(days, *sizes, labels=[f"{level:g}:1 vNode" for level in result.levels],
                 colors=colours, step="post", alpha=0.85)  # fmt: skip
    if s.host_cpus:
        ax.axhline(s.host_cpus, color="black", linewidth=0.8, linestyle=":", label="usable CPUs")
    ax.set_xlabel("time since the first event (days)")
    ax.set_ylabel("logical CPUs")
    ax.set_title(f"vNode sizes on {result.observed_host}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def draw_host_replay(replay: HostReplay, path: Path) -> str:
    """SlackVM's Figure 3 from a monitoring replay."""
    title = "vNode sizes recomputed by pinfold against the usage recorded for them"
    times = np.asarray(replay.timestamps, dtype=np.int64)
    return draw_vnode_usage(times, replay.levels, replay.sizes, replay.usage, path, title)


def draw_vnode_usage(
    times: npt.NDArray[np.int64],
    levels: list[float],
    sizes: npt.NDArray[np.int32],
    usage: npt.NDArray[np.float64],
    path: Path,
    title: str,
) -> str:
    """SlackVM's Figure 3: per level, the vNode size (CPUs, filled) and the
    cores its VMs use (line), one panel per level."""
    span = float(times[-1] - times[0]) if len(times) else 0.0
    unit, seconds = (
        ("days", 86_400.0) if span > 2 * 86_400 else ("hours", 3_600.0) if span > 7_200 else ("minutes", 60.0)
    )
    x = (np.asarray(times, dtype=np.float64) - (times[0] if len(times) else 0)) / seconds
    fig, axes = plt.subplots(
        len(levels), 1, figsize=(10, 2.4 * len(levels) + 0.6), sharex=True, squeeze=False
    )
    for j, level in enumerate(levels):
        ax = axes[j, 0]
        colour = LEVEL_COLOURS.get(level, OTHER_COLOURS[j % 4])
        ax.fill_between(x, sizes[:, j], step="post", color=colour, alpha=0.35, label="vNode size (CPUs)")
        if not np.isnan(usage[:, j]).all():
            ax.plot(x, usage[:, j], color=colour, linewidth=0.9, label="vNode usage (cores)")
        ax.set_ylabel(f"{level:g}:1 vNode")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel(f"time ({unit})")
    axes[0, 0].set_title(title)
    return _save(fig, path)
