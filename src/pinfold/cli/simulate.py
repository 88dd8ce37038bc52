"""`pinfold simulate` and `pinfold trace generate`: shells over pinfold.sim."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from pinfold.placement import DEFAULT_CRITICAL_SIZE, DEFAULT_POLICY, POLICIES
from pinfold.sim.consolidate import DEFAULT_WARM_UP_S, Consolidation
from pinfold.sim.generator import TraceShape, generate_shape
from pinfold.sim.groups import TraceGroups, read_groups
from pinfold.sim.mix import DEFAULT_LEVELS, assign_levels, parse_mix
from pinfold.sim.readers import FORMATS, detect_format, read_trace
from pinfold.sim.readers.neutral import write_neutral
from pinfold.sim.replay import SEGREGATED, Result, Scenario, simulate
from pinfold.sim.trace import Trace, TraceError
from pinfold.topology import Topology

__all__ = ["register"]

console = Console(stderr=True, soft_wrap=True, emoji=False)
trace_app = typer.Typer(no_args_is_help=True, help="Make and inspect VM traces.")


class EventRateColumn(ProgressColumn):
    """Events per second since the task started."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} events/s", style="progress.data.speed")


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
    app.add_typer(trace_app, name="trace")


def simulate_command(
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="Trace file (.csv or .csv.gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for summary.json, plots, report.md.")],
    topology: Annotated[
        Path | None, typer.Option("--topology", "-t", help="Host topology file (default: this host).")
    ] = None,
    hosts: Annotated[int | None, typer.Option("--hosts", min=1, help="Fixed cluster of N hosts.")] = None,
    elastic: Annotated[
        bool, typer.Option("--elastic", help="Open a host whenever none fits (default).")
    ] = False,
    policy: Annotated[str, typer.Option("--policy", help=f"One of {', '.join(POLICIES)}.")] = DEFAULT_POLICY,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare", help=f"Comma-separated policies to run, among {', '.join(POLICIES)}, {SEGREGATED}."
        ),
    ] = None,
    trace_format: Annotated[
        str, typer.Option("--format", help=f"One of auto, {', '.join(FORMATS)}.")
    ] = "auto",
    levels: Annotated[
        str | None,
        typer.Option("--levels", help=f"Level mix for traces without levels (default {DEFAULT_LEVELS})."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the level draw.")] = 0,
    critical_size: Annotated[int, typer.Option("--critical-size", min=0)] = DEFAULT_CRITICAL_SIZE,
    usage: Annotated[
        Path | None,
        typer.Option("--usage", help="CPU usage samples (vm_id,t_s,cpu_util_pct) to plot the vNodes' usage."),
    ] = None,
    groups: Annotated[
        Path | None,
        typer.Option(
            "--groups",
            help="VM groups: CSV vm_id,group,policy (affinity, anti-affinity, their soft- forms).",
        ),
    ] = None,
    consolidate: Annotated[
        bool,
        typer.Option(
            "--consolidate",
            help="Also run each policy with consolidation by live migration, beside its plain run.",
        ),
    ] = False,
    consolidate_period: Annotated[
        int | None,
        typer.Option(
            "--consolidate-period", min=1, help=f"Seconds between plans (default {Consolidation.period_s})."
        ),
    ] = None,
    consolidate_budget: Annotated[
        str | None,
        typer.Option(
            "--consolidate-budget",
            help=f"Migrations per plan, at most, all at once; several, comma-separated, run one replay each "
            f"(default {Consolidation.budget}).",
        ),
    ] = None,
    consolidate_cooldown: Annotated[
        int | None,
        typer.Option(
            "--consolidate-cooldown",
            min=0,
            help=f"Seconds before a VM may move again (default {Consolidation.cooldown_s}).",
        ),
    ] = None,
    migration_bandwidth: Annotated[
        float | None,
        typer.Option(
            "--migration-bandwidth",
            min=0.001,
            help=f"MiB/s: a migration takes memory / bandwidth (default {Consolidation.bandwidth_mib_s:g}).",
        ),
    ] = None,
    warm_up: Annotated[
        int,
        typer.Option(
            "--warm-up", min=0, help="Seconds after the first event where steady-state means start."
        ),
    ] = DEFAULT_WARM_UP_S,
) -> None:
    """Replay a VM trace on a simulated cluster through the placement core.

    A SlackVM monitoring file (--format slackvm, or detected) is replayed on one
    host instead, as SlackVM's offline mode does, and written back with the
    vNode rows recomputed (OUT/monitoring.csv)."""
    if hosts is not None and elastic:
        raise typer.BadParameter("give either --hosts N or --elastic, not both")
    resolved = _resolve_format(trace_path, trace_format)
    if resolved == "slackvm":
        if (
            hosts is not None
            or elastic
            or compare
            or levels
            or usage
            or groups
            or policy != DEFAULT_POLICY
            or seed != 0
        ):
            raise typer.BadParameter(
                "a SlackVM monitoring replay is one host with the levels and usage it records: "
                "drop --hosts/--elastic/--compare/--policy/--levels/--seed/--usage/--groups"
            )
        _replay_slackvm(trace_path, _load_topology(topology), topology, out, critical_size)
        return
    if groups is not None and consolidate:
        raise typer.BadParameter(
            "--groups with --consolidate: the consolidation planner does not know groups yet"
        )
    names = [name.strip() for name in (compare or policy).split(",") if name.strip()]
    if SEGREGATED in names and hosts is not None:
        console.print(f"note: {SEGREGATED} is a baseline of elastic clusters; it ignores --hosts {hosts}")
    settings = _consolidations(
        consolidate, consolidate_period, consolidate_budget, consolidate_cooldown, migration_bandwidth
    )
    try:
        scenarios = [
            Scenario(
                policy=name,
                hosts=None if name == SEGREGATED else hosts,
                critical_size=critical_size,
                segregated_policy=policy,
                consolidation=consolidation,
            )
            for name in names
            for consolidation in [None, *([] if name == SEGREGATED else settings)]
        ]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    topo = _load_topology(topology)
    trace = _load_trace(trace_path, resolved, levels, seed)
    console.print(f"{len(trace):,} VMs from {trace.source}; {trace.level_note}")
    vm_groups = _load_groups(groups, trace)
    results = [_run(trace, topo, scenario, vm_groups) for scenario in scenarios]
    from pinfold.sim.report import write_outputs

    samples = None
    if usage is not None:
        from pinfold.sim.usage import read_usage

        try:
            samples = read_usage(usage)
        except TraceError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    summary = write_outputs(
        results, trace, out, str(topology or "this host (sysfs)"), usage=samples, warm_up_s=warm_up
    )
    _print_summary(summary)
    console.print(f"wrote {out}/summary.json, timeseries.csv, report.md and plots")


def _consolidations(
    consolidate: bool,
    period: int | None,
    budgets: str | None,
    cooldown: int | None,
    bandwidth: float | None,
) -> list[Consolidation]:
    """The consolidation settings to run, one per budget ([] without --consolidate)."""
    given = [
        flag
        for flag, value in (
            ("--consolidate-period", period),
            ("--consolidate-budget", budgets),
            ("--consolidate-cooldown", cooldown),
            ("--migration-bandwidth", bandwidth),
        )
        if value is not None
    ]
    if not consolidate:
        if given:
            raise typer.BadParameter(f"{', '.join(given)} only apply with --consolidate")
        return []
    base = Consolidation()
    try:
        sizes = [int(part) for part in (budgets or str(base.budget)).split(",") if part.strip()]
        if not sizes:
            raise ValueError("no budget")
        return [
            Consolidation(
                period_s=base.period_s if period is None else period,
                budget=size,
                cooldown_s=base.cooldown_s if cooldown is None else cooldown,
                bandwidth_mib_s=base.bandwidth_mib_s if bandwidth is None else bandwidth,
            )
            for size in sizes
        ]
    except ValueError as exc:
        raise typer.BadParameter(f"--consolidate-budget: {exc}") from None


def _load_topology(path: Path | None) -> Topology:
    try:
        return Topology.load(path) if path else Topology.discover()
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"topology: {exc}") from None


def _resolve_format(path: Path, trace_format: str) -> str:
    if trace_format not in ("auto", *FORMATS):
        raise typer.BadParameter(f"unknown trace format {trace_format!r}; valid: auto, {', '.join(FORMATS)}")
    if trace_format != "auto":
        return trace_format
    try:
        return detect_format(path)
    except TraceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _replay_slackvm(
    path: Path, topology: Topology, topology_path: Path | None, out: Path, critical_size: int
) -> None:
    import json

    from pinfold.sim.plots import draw_host_replay
    from pinfold.sim.readers.slackvm import read_monitoring
    from pinfold.sim.slackvm_replay import replay_monitoring

    try:
        monitoring = read_monitoring(path)
    except TraceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    replay = replay_monitoring(monitoring, topology, out / "monitoring.csv", critical_size)
    summary = {
        "input": str(path),
        "topology": str(topology_path or "this host (sysfs)"),
        "timestamps": len(replay.timestamps),
        "vms": len(monitoring.vms),
        "placed": replay.placed,
        "rejected": replay.rejected,
        "levels": replay.levels,
        "peak_vnode_cpus": {f"{r:g}": int(replay.sizes[:, j].max()) for j, r in enumerate(replay.levels)},
        "rows_written": replay.rows_written,
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    draw_host_replay(replay, out / "vnodes.png")
    console.print(
        f"replayed {len(monitoring.vms):,} VMs over {len(replay.timestamps):,} timestamps: "
        f"{replay.placed:,} placed, {len(replay.rejected):,} refused; wrote {out}/monitoring.csv, vnodes.png"
    )


def _load_trace(path: Path, trace_format: str, levels: str | None, seed: int) -> Trace:
    try:
        trace = read_trace(path, trace_format)
    except TraceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if levels is None and trace.has_levels:
        return trace
    try:
        mix = parse_mix(levels or DEFAULT_LEVELS, "--levels", minimum_key=1.0)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    # --levels given: every VM gets a drawn level; otherwise only those without one
    return assign_levels(trace, mix, seed, keep_recorded=levels is None)


def _load_groups(path: Path | None, trace: Trace) -> TraceGroups | None:
    if path is None:
        return None
    try:
        groups = read_groups(path, trace)
    except TraceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    console.print(f"{len(groups.group_of):,} VMs in {len(groups.policies):,} groups from {path}")
    return groups


def _run(trace: Trace, topology: Topology, scenario: Scenario, groups: TraceGroups | None = None) -> Result:
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        EventRateColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{scenario.name:>12}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        started = time.perf_counter()
        result = simulate(trace, topology, scenario, on_progress=advance, groups=groups)
        progress.update(task, description=f"{scenario.name:>12} {time.perf_counter() - started:.1f} s")
    return result


def _print_summary(summary: dict[str, object]) -> None:
    table = Table(title="simulation summary")
    columns = ("policy", "placed", "rejected", "peak hosts", "lower bound", "peak / bound", "mean hosts",
               "mean hosts / mean bound", "after warm-up", "migrations per VM")  # fmt: skip
    for column in columns:
        table.add_column(column)
    policies = summary["policies"]
    assert isinstance(policies, dict)
    for name, row in policies.items():
        ratio = row["peak_hosts_over_lower_bound"]
        table.add_row(
            name,
            f"{row['placed']:,}",
            f"{row['rejected']:,}",
            f"{row['peak_hosts']:,}",
            f"{row['lower_bound_peak']:,}",
            "-" if ratio is None else f"{ratio:.3f}",
            f"{row['mean_hosts']:,.1f}",
            _ratio(row["mean_hosts_over_mean_bound"]),
            _ratio((row["after_warm_up"] or {}).get("mean_hosts_over_mean_bound")),
            "-" if row["consolidation"] is None else f"{row['consolidation']['migrations_per_vm']:.3f}",
        )
    Console(emoji=False).print(table)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@trace_app.command("generate")
def generate_command(
    out: Annotated[Path, typer.Argument(help="Neutral CSV to write (.csv or .csv.gz).")],
    vms: Annotated[int, typer.Option("--vms", min=1)] = TraceShape.vms,
    duration: Annotated[int, typer.Option("--duration", min=1, help="Seconds.")] = TraceShape.duration_s,
    sizes: Annotated[str, typer.Option("--sizes", help="vCPUs=weight,...")] = TraceShape.sizes,
    memory: Annotated[str, typer.Option("--memory", help="MiB per vCPU=weight,...")] = TraceShape.memory,
    lifetimes: Annotated[
        str, typer.Option("--lifetimes", help="mean lifetime in s=weight,... (exponential)")
    ] = TraceShape.lifetimes,
    levels: Annotated[str, typer.Option("--levels", help="ratio=weight,...")] = TraceShape.levels,
    seed: Annotated[int, typer.Option("--seed")] = TraceShape.seed,
) -> None:
    """Write a seeded synthetic trace in the neutral CSV format."""
    shape = TraceShape(vms, duration, sizes, memory, lifetimes, levels, seed)
    try:
        trace = generate_shape(shape)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    write_neutral(trace, out)
    console.print(f"wrote {len(trace):,} VMs to {out} ({trace.level_note})")
