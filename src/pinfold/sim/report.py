"""Turn replay results into summary.json, timeseries.csv, plots and report.md."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pinfold.placement.consolidation import Verdict
from pinfold.sim.consolidate import DEFAULT_WARM_UP_S
from pinfold.sim.replay import SEGREGATED, Result
from pinfold.sim.trace import Trace

#: vm_id -> (sample times, util %), as `pinfold.sim.usage.read_usage` returns
UsageSamples = dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]

__all__ = ["decimate", "summarize", "write_outputs"]

#: timeseries.csv keeps at most this many rows per policy (peaks are kept).
MAX_ROWS_PER_POLICY = 100_000


def summarize(result: Result, warm_up_s: int = DEFAULT_WARM_UP_S) -> dict[str, Any]:
    """The numbers of one replay: sizes, packing against the lower bound (at
    the peak, and on average over the whole trace and after `warm_up_s`), what
    was left unallocated on the hosts in use at the peak, and what
    consolidation did when it ran."""
    s = result.series
    n = len(s.time)
    peak_in_use = int(s.hosts_in_use.max()) if n else 0
    peak_index = int(np.argmax(s.hosts_in_use)) if n else 0
    # An elastic cluster must own every host it ever opened; a fixed one its hosts in use.
    peak_hosts = result.hosts_opened if result.scenario.elastic else peak_in_use
    bound_peak = int(s.lower_bound.max()) if n else 0
    cpus_at_peak = int(s.cpus_in_use_hosts[peak_index]) if n else 0
    memory_at_peak = int(s.memory_in_use_hosts[peak_index]) if n else 0
    free_cpus = cpus_at_peak - int(s.cpus_allocated[peak_index]) if n else 0
    free_memory = memory_at_peak - int(s.memory_allocated[peak_index]) if n else 0
    return {
        "policy": result.name,
        "cluster": "elastic" if result.scenario.elastic else f"fixed, {result.scenario.hosts} hosts",
        "vms": result.vms,
        "placed": result.placed,
        "rejected": len(result.rejected),
        "never_fit_any_host": len(result.never_fit),
        "rejected_by_group": len(result.group_rejected),
        "zero_lifetime_skipped": result.zero_lifetime,
        "peak_hosts": peak_hosts,
        "peak_hosts_in_use": peak_in_use,
        "peak_time_s": int(s.time[peak_index]) if n else None,
        "mean_hosts": round(time_weighted_mean(s.time, s.hosts_in_use), 3),
        **_mean_packing(s.time, s.hosts_in_use, s.lower_bound),
        "after_warm_up": _after_warm_up(s.time, s.hosts_in_use, s.lower_bound, warm_up_s),
        "lower_bound_peak": bound_peak,
        "peak_hosts_over_lower_bound": round(peak_hosts / bound_peak, 4) if bound_peak else None,
        "unallocated_cpus_at_peak": free_cpus,
        "unallocated_cpu_fraction_at_peak": round(free_cpus / cpus_at_peak, 4) if cpus_at_peak else None,
        "unallocated_memory_mib_at_peak": free_memory,
        "unallocated_memory_fraction_at_peak": round(free_memory / memory_at_peak, 4)
        if memory_at_peak
        else None,
        "hosts_per_cluster": result.cluster_hosts,
        "events": result.events,
        "wall_seconds": round(result.wall_seconds, 3),
        "events_per_second": round(result.events / result.wall_seconds) if result.wall_seconds else None,
        "consolidation": _consolidation(result),
    }


def _mean_packing(
    times: npt.NDArray[np.int64], hosts: npt.NDArray[Any], bound: npt.NDArray[Any], start: int | None = None
) -> dict[str, Any]:
    """Time-weighted mean hosts in use and mean lower bound, and their ratio."""
    mean_hosts = time_weighted_mean(times, hosts, start)
    mean_bound = time_weighted_mean(times, bound, start)
    return {
        "mean_lower_bound": round(mean_bound, 3),
        "mean_hosts_over_mean_bound": round(mean_hosts / mean_bound, 4) if mean_bound else None,
    }


def _after_warm_up(
    times: npt.NDArray[np.int64], hosts: npt.NDArray[Any], bound: npt.NDArray[Any], warm_up_s: int
) -> dict[str, Any] | None:
    """The same means from `warm_up_s` after the first event to the last (None
    when the trace is not that long): the steady state, once the cluster has
    filled (the Azure trace's hosts climb for two days)."""
    if not len(times) or int(times[-1]) <= int(times[0]) + warm_up_s:
        return None
    start = int(times[0]) + warm_up_s
    return {
        "from_s": start,
        "mean_hosts": round(time_weighted_mean(times, hosts, start), 3),
        **_mean_packing(times, hosts, bound, start),
    }


def _consolidation(result: Result) -> dict[str, Any] | None:
    """What the migrations cost: counts, per VM placed, time; None without consolidation."""
    log, settings = result.migrations, result.scenario.consolidation
    if log is None or settings is None:
        return None
    placed = max(result.placed, 1)
    return {
        "period_s": settings.period_s,
        "budget_per_plan": settings.budget,
        "cooldown_s": settings.cooldown_s,
        "bandwidth_mib_s": settings.bandwidth_mib_s,
        "policy": settings.policy,
        "plans": len(log.plans),
        "plans_that_moved": sum(1 for plan in log.plans if plan[1]),
        "hosts_emptied": sum(plan[2] for plan in log.plans),
        "migrations": log.started,
        "migrations_completed": log.completed,
        "migrations_cancelled_by_departure": log.cancelled,
        "migrations_refused_by_target": log.refused,
        "migrations_per_vm": round(log.started / placed, 4),
        "vms_migrated": len(log.per_vm),
        "most_migrations_of_one_vm": max(log.per_vm.values(), default=0),
        "migration_seconds": log.seconds,
        "planning_wall_seconds": round(log.planning_seconds, 3),
    }


def time_weighted_mean(
    times: npt.NDArray[np.int64], values: npt.NDArray[Any], start: int | None = None
) -> float:
    """Mean of a step function sampled at `times` (each value holds until the
    next sample), from `start` (the value then is the last sample at or
    before it) or from the first sample; a plain mean when every sample is at
    one instant."""
    if start is not None and len(times) and start > times[0]:
        later = times > start
        before = int(np.flatnonzero(~later)[-1])
        times = np.concatenate([[start], times[later]])
        values = np.concatenate([[values[before]], values[later]])
    if len(times) == 0:
        return 0.0
    durations = np.diff(times, append=times[-1]).astype(np.float64)
    total = durations.sum()
    if total == 0:
        return float(np.mean(values))
    return float((values * durations).sum() / total)


def decimate(values: npt.NDArray[Any], limit: int) -> npt.NDArray[np.int64]:
    """Indices of at most about `limit` samples, keeping the largest value of
    each bucket so that peaks survive in the CSV and the plots."""
    n = len(values)
    if n <= limit:
        return np.arange(n)
    edges = np.linspace(0, n, limit + 1).astype(np.int64)
    keep = [start + int(np.argmax(values[start:end])) for start, end in pairwise(edges) if end > start]
    keep.append(n - 1)
    return np.unique(np.array(keep, dtype=np.int64))


def write_timeseries(results: Sequence[Result], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        levels = results[0].levels if results else []
        writer.writerow(
            ["policy", "time_s", "hosts_in_use", "lower_bound", "vms_running", "cpus_allocated",
             "cpus_unallocated", "memory_allocated_mib", "memory_unallocated_mib",
             *[f"observed_vnode_{level:g}" for level in levels]]
        )  # fmt: skip
        for result in results:
            s = result.series
            cpus_free = s.cpus_in_use_hosts - s.cpus_allocated
            memory_free = s.memory_in_use_hosts - s.memory_allocated
            for i in decimate(s.hosts_in_use, MAX_ROWS_PER_POLICY):
                writer.writerow(
                    [result.name, int(s.time[i]), int(s.hosts_in_use[i]), int(s.lower_bound[i]),
                     int(s.vms_running[i]), int(s.cpus_allocated[i]), int(cpus_free[i]),
                     int(s.memory_allocated[i]), int(memory_free[i]),
                     *[int(v) for v in s.observed_vnodes[i]]]
                )  # fmt: skip


def write_plans(results: Sequence[Result], path: Path) -> None:
    """One row per consolidation plan: when, how many migrations, and how many
    hosts got each verdict (emptied, no target, ...; no file without
    consolidation)."""
    rows = [
        (result.name, *plan) for result in results if result.migrations for plan in result.migrations.plans
    ]
    if not rows:
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        verdicts = [f"hosts_{kind.value.replace(' ', '_')}" for kind in Verdict]
        writer.writerow(["policy", "time_s", "migrations", *verdicts])
        writer.writerows(rows)


def write_outputs(
    results: Sequence[Result],
    trace: Trace,
    out: Path,
    topology_name: str,
    extra: dict[str, Any] | None = None,
    usage: UsageSamples | None = None,
    warm_up_s: int = DEFAULT_WARM_UP_S,
) -> dict[str, Any]:
    """Write summary.json, timeseries.csv, rejected.csv, the plots and
    report.md into `out`; returns the summary document. With `usage` (per-VM
    CPU samples), the observed host's vNode usage is plotted too."""
    from pinfold.sim import plots

    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "trace": trace.source,
        "vms": len(trace),
        "levels": trace.level_note,
        "level_counts": {f"{level:g}": int(count) for level, count in _level_counts(trace).items()},
        "topology": topology_name,
        **(extra or {}),
        "warm_up_s": warm_up_s,
        "policies": {result.name: summarize(result, warm_up_s) for result in results},
    }
    write_timeseries(results, out / "timeseries.csv")
    write_plans(results, out / "plans.csv")
    with (out / "rejected.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["policy", "vm_id", "never_fits_a_host"])
        for result in results:
            never = set(result.never_fit)
            for vm in result.rejected:
                writer.writerow([result.name, vm, vm in never])
    observed = None
    if usage is not None and results:
        from pinfold.sim.usage import observed_usage

        observed = observed_usage(results[0], trace, usage)
        summary["usage"] = (
            "none of the observed host's VMs has usage samples"
            if observed is None
            else (f"vNode usage of {results[0].observed_host} sampled at {len(observed.times):,} instants")
        )
    images = plots.draw_all(results, out, observed)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_report(summary, images), encoding="utf-8")
    return summary


def _level_counts(trace: Trace) -> dict[float, int]:
    levels, counts = np.unique(trace.ratio, return_counts=True)
    return {float(level): int(count) for level, count in zip(levels, counts, strict=True)}


def render_report(summary: dict[str, Any], images: list[tuple[str, str]]) -> str:
    policies = summary["policies"]
    lines = [
        "# pinfold simulation report",
        "",
        f"- trace: `{summary['trace']}`, {summary['vms']:,} VMs",
        f"- levels: {summary['levels']} (VMs per level: "
        + ", ".join(f"{k}: {v:,}" for k, v in summary["level_counts"].items())
        + ")",
        f"- host topology: `{summary['topology']}`",
        "",
        "| policy | cluster | placed | rejected | peak hosts | lower bound at peak | peak / bound "
        "| mean hosts | unallocated CPU at peak | unallocated memory at peak | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in policies.items():
        lines.append(
            f"| {name} | {row['cluster']} | {row['placed']:,} | {row['rejected']:,} | {row['peak_hosts']:,} "
            f"| {row['lower_bound_peak']:,} | {_fmt(row['peak_hosts_over_lower_bound'])} "
            f"| {row['mean_hosts']:,.1f} | {_pct(row['unallocated_cpu_fraction_at_peak'])} "
            f"| {_pct(row['unallocated_memory_fraction_at_peak'])} | {row['wall_seconds']:.1f} |"
        )
    lines += ["", *_over_time_table(summary)]
    if SEGREGATED in policies:
        lines += ["", _segregation_sentence(policies)]
    zero = next(iter(policies.values()))["zero_lifetime_skipped"] if policies else 0
    lines += [
        "",
        "Peak hosts: for an elastic cluster, every host it had to open (the cluster size the trace "
        "needs); for a fixed cluster, the most hosts in use at once. The lower bound at each instant is "
        "max(ceil(sum over levels of vCPUs / ratio / CPUs per host), ceil(memory / memory per host)). "
        f"{zero:,} VMs that leave at the instant they arrive were skipped.",
        "",
    ]
    for title, file in images:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    return "\n".join(lines)


def _over_time_table(summary: dict[str, Any]) -> list[str]:
    """Packing over time (time-weighted means, whole trace and after the
    warm-up) and what consolidation cost, per policy."""
    days = summary.get("warm_up_s", DEFAULT_WARM_UP_S) / 86_400
    lines = [
        f"Over time (time-weighted means; 'after warm-up' starts {days:g} days after the first event):",
        "",
        "| policy | mean hosts | mean bound | mean hosts / mean bound | after warm-up: mean hosts "
        "| mean bound | ratio | migrations | migrations per VM | VMs migrated | hosts emptied |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["policies"].items():
        late = row["after_warm_up"] or {}
        moves = row["consolidation"] or {}
        lines.append(
            f"| {name} | {row['mean_hosts']:,.1f} | {row['mean_lower_bound']:,.1f} "
            f"| {_fmt(row['mean_hosts_over_mean_bound'])} | {_num(late.get('mean_hosts'))} "
            f"| {_num(late.get('mean_lower_bound'))} | {_fmt(late.get('mean_hosts_over_mean_bound'))} "
            f"| {moves.get('migrations', 0):,} | {moves.get('migrations_per_vm', 0):.3f} "
            f"| {moves.get('vms_migrated', 0):,} | {moves.get('hosts_emptied', 0):,} |"
        )
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _segregation_sentence(policies: dict[str, Any]) -> str:
    segregated = policies[SEGREGATED]["peak_hosts"]
    shared = {k: v["peak_hosts"] for k, v in policies.items() if k != SEGREGATED}
    if not shared or not segregated:
        return ""
    best = min(shared, key=lambda k: shared[k])
    saving = (segregated - shared[best]) / segregated
    verdict = "fewer" if saving > 0 else "more"
    return (
        f"Sharing one cluster between levels with `{best}` needs {shared[best]:,} hosts against "
        f"{segregated:,} for one cluster per level: {abs(saving):.1%} {verdict}."
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
