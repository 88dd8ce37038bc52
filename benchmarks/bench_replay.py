"""Replay benchmarks for the simulator (issue 3).

    python -m benchmarks.bench_replay azure        # whole azure_v1_flavors.csv.gz, elastic EPYC-exp, progress
    python -m benchmarks.bench_replay synthetic    # --vms 1000000 --hosts 10000
    python -m benchmarks.bench_replay scaling      # time against trace size and cluster size, plot

Targets: Azure under 60 s wall and under 2 GiB peak memory on one core;
synthetic 1,000,000 VMs on 10,000 fixed hosts at >= 50,000 events/s (aim).
Wall time includes reading the trace; peak memory is the process's maximum
resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from benchmarks.common import EPYC_EXP, SHARED, pin_to_one_core
from pinfold.sim.generator import TraceShape, generate_shape
from pinfold.sim.mix import DEFAULT_LEVELS, assign_levels, parse_mix
from pinfold.sim.readers import read_trace
from pinfold.sim.replay import Scenario, simulate
from pinfold.sim.report import summarize
from pinfold.sim.trace import Trace
from pinfold.topology import Topology

AZURE = SHARED / "data" / "traces" / "azure_v1_flavors.csv.gz"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(vms: int, seed: int = 1) -> Trace:
    return generate_shape(TraceShape(vms=vms, seed=seed))


def run_azure(policy: str) -> dict[str, object]:
    start = time.perf_counter()
    trace = assign_levels(read_trace(AZURE), parse_mix(DEFAULT_LEVELS), seed=0)
    read = time.perf_counter() - start
    result = simulate(trace, Topology.load(EPYC_EXP), Scenario(policy=policy))
    wall = time.perf_counter() - start
    row = summarize(result)
    return {
        "benchmark": "azure",
        "levels": trace.level_note,
        "read_seconds": round(read, 2),
        "wall_seconds_total": round(wall, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        **row,
    }


def run_synthetic(vms: int, hosts: int) -> dict[str, object]:
    start = time.perf_counter()
    trace = synthetic(vms)
    made = time.perf_counter() - start
    result = simulate(trace, Topology.load(EPYC_EXP), Scenario(policy="progress", hosts=hosts))
    row = summarize(result)
    return {
        "benchmark": "synthetic",
        "generate_seconds": round(made, 2),
        "hosts": hosts,
        "peak_rss_mib": round(peak_rss_mib()),
        **row,
    }


def run_scaling(out: Path) -> dict[str, object]:
    """Events per second against trace size (elastic) and cluster size (fixed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topology = Topology.load(EPYC_EXP)
    by_size = []
    for vms in (10_000, 30_000, 100_000, 300_000):
        result = simulate(synthetic(vms), topology, Scenario(policy="progress"))
        by_size.append((vms, result.events, result.wall_seconds, result.hosts_opened))
    by_hosts = []
    trace = synthetic(50_000)
    for hosts in (100, 300, 1_000, 3_000, 10_000):
        result = simulate(trace, topology, Scenario(policy="progress", hosts=hosts))
        by_hosts.append((hosts, result.events, result.wall_seconds))
    from matplotlib.ticker import FuncFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}")
    left.plot([r[1] for r in by_size], [r[1] / r[2] for r in by_size], marker="o")
    for _, events, seconds, hosts in by_size:
        left.annotate(f"{hosts} hosts", (events, events / seconds), textcoords="offset points", xytext=(0, 6),
                      ha="center", fontsize=8)  # fmt: skip
    left.set_xlabel("events in the trace (elastic cluster)")
    right.plot([r[0] for r in by_hosts], [r[1] / r[2] for r in by_hosts], marker="o")
    right.set_xlabel("hosts in the fixed cluster (50,000-VM trace)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        ax.yaxis.set_major_formatter(plain)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("events per second")
        ax.grid(alpha=0.3)
    fig.suptitle("pinfold simulate: cost against trace size and cluster size")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return {
        "benchmark": "scaling",
        "plot": str(out),
        "by_trace_size": [
            {"vms": v, "events": e, "seconds": round(w, 2), "hosts": h, "events_per_second": round(e / w)}
            for v, e, w, h in by_size
        ],
        "by_cluster_size": [
            {"hosts": h, "events": e, "seconds": round(w, 2), "events_per_second": round(e / w)}
            for h, e, w in by_hosts
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["azure", "synthetic", "scaling"])
    parser.add_argument("--policy", default="progress")
    parser.add_argument("--vms", type=int, default=1_000_000)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/replay_scaling.png"))
    args = parser.parse_args()
    pin_to_one_core()
    if args.which == "azure":
        result = run_azure(args.policy)
    elif args.which == "synthetic":
        result = run_synthetic(args.vms, args.hosts)
    else:
        result = run_scaling(args.plot)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
