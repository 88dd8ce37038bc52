"""The `pinfold` command line: a thin shell over the placement core.

Commands only parse arguments, call the core and print; no placement logic
lives here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pinfold.placement import DEFAULT_CRITICAL_SIZE, Cluster, HostAllocator, PlacementError, VMSpec
from pinfold.topology import Topology, format_cpulist, parse_cpulist

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True, help="pinfold: VMs of several oversubscription levels on shared hosts."
)
topology_app = typer.Typer(no_args_is_help=True, help="Read, show and convert host CPU topologies.")
app.add_typer(topology_app, name="topology")
console = Console(emoji=False)  # no ":cd:" in a MAC address turned into an emoji

from pinfold.cli import agent as _agent  # noqa: E402  (these register their commands on `app`)
from pinfold.cli import client as _client  # noqa: E402
from pinfold.cli import controller as _controller  # noqa: E402
from pinfold.cli import groups as _groups  # noqa: E402
from pinfold.cli import simulate as _simulate  # noqa: E402
from pinfold.cli import up as _up  # noqa: E402

_simulate.register(app)
_agent.register(app)
_controller.register(app)
_client.register(app)
_groups.register(app)
_up.register(app)

DEFAULT_DEMO_TOPOLOGY = "topology_i7-1185G7.json"

TopologyFile = Annotated[
    Path | None,
    typer.Option("--topology", "-t", help="SlackVM topology JSON file (default: this host, from sysfs)."),
]
Exclude = Annotated[str, typer.Option("--exclude", help="CPUs reserved for the host, e.g. 0-1,8.")]


def _topology(path: Path | None, exclude: str) -> Topology:
    try:
        excluded = parse_cpulist(exclude)
        return Topology.load(path, exclude=excluded) if path else Topology.discover(exclude=excluded)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None


def _demo_topology() -> Topology:
    data = resources.files("pinfold") / "data" / DEFAULT_DEMO_TOPOLOGY
    with resources.as_file(data) as path:
        return Topology.load(path)


@topology_app.command("show")
def topology_show(
    topology: TopologyFile = None, exclude: Exclude = "", as_json: bool = typer.Option(False, "--json")
) -> None:
    """Show the CPUs, caches, NUMA nodes and memory of a topology."""
    topo = _topology(topology, exclude)
    if as_json:
        from pinfold.topology import slackvm_json

        print(json.dumps(slackvm_json.to_dict(topo)))
        return
    table = Table(
        title=f"{len(topo.usable_cpus)} usable of {topo.host_count} CPUs, {topo.memory_allowed_mib} MiB"
    )
    for column in ("cpu", "node", "caches (L1d L1i L2 L3 ...)", "SMT siblings", "usable"):
        table.add_column(column)
    for cpu in topo.cpus:
        usable = "yes" if cpu.cpu_id in topo.usable_cpus else "excluded"
        siblings = format_cpulist(cpu.smt_siblings) or "-"
        caches = " ".join(map(str, cpu.cache_ids))
        table.add_row(str(cpu.cpu_id), str(cpu.numa_node), caches, siblings, usable)
    console.print(table)


@topology_app.command("save")
def topology_save(out: Path, topology: TopologyFile = None, exclude: Exclude = "") -> None:
    """Write a topology (this host's by default) in SlackVM's JSON format."""
    _topology(topology, exclude).save(out)
    console.print(f"wrote {out}")


@app.command()
def demo(
    topology: Annotated[
        Path | None,
        typer.Option(
            "--topology", "-t", help=f"SlackVM topology file (default: the bundled {DEFAULT_DEMO_TOPOLOGY})."
        ),
    ] = None,
    critical_size: int = typer.Option(
        DEFAULT_CRITICAL_SIZE, help="Oversubscribed levels share CPUs below this many VMs."
    ),
) -> None:
    """Place VMs of three levels on one host and on a small cluster, showing
    the vNodes, the pinning and why a VM that does not fit was refused."""
    topo = _topology(topology, "") if topology else _demo_topology()
    host = HostAllocator(topo, critical_size=critical_size)
    console.rule(f"one host: {len(topo.usable_cpus)} CPUs, {topo.memory_allowed_mib} MiB")
    requests = [
        VMSpec("web-1", 2, 2048, 1.0),
        VMSpec("batch-1", 2, 2048, 2.0),
        VMSpec("batch-2", 2, 2048, 2.0),
        VMSpec("dev-1", 1, 2048, 3.0),
        VMSpec("huge", len(topo.usable_cpus) + 1, 1024, 1.0),
    ]
    for spec in requests:
        try:
            change = host.deploy(spec)
        except PlacementError as exc:
            console.print(
                f"[red]refused[/] {spec.name} ({spec.vcpus} vCPU at {spec.ratio}): {exc.refusal.describe()}"
            )
            continue
        moved = f"; re-pinned {sorted(change.repinned)}" if change.repinned else ""
        pins = format_cpulist(change.pinning or ())
        console.print(f"deployed {spec.name} ({spec.vcpus} vCPU at {spec.ratio}) pinned to {pins}{moved}")
    console.print(_vnode_table(host))
    console.print(f"sharing between oversubscribed levels: {host.sharing()}")
    console.print(json.dumps(host.status()))

    console.rule("a cluster of three such hosts, policy progress")
    cluster = Cluster()
    for name in ("host-a", "host-b", "host-c"):
        cluster.add_host(name, HostAllocator(topo, critical_size=critical_size))
    for i, ratio in enumerate([1.0, 2.0, 3.0, 1.0, 2.0, 1.0]):
        spec = VMSpec(f"vm-{i}", 2, 4096 * (1 + i % 2), ratio)
        where, _ = cluster.deploy(spec)
        console.print(f"{spec.name} ({spec.vcpus} vCPU, {spec.memory_mib} MiB at {ratio}) -> {where}")
    too_big = VMSpec("too-big", len(topo.usable_cpus), topo.memory_allowed_mib + 1, 1.0)
    decision = cluster.choose(too_big)
    console.print(f"too-big: {decision.explain()}")


def _vnode_table(host: HostAllocator) -> Table:
    table = Table(title="vNodes")
    for column in ("level", "CPUs (in order added)", "vCPUs allocated", "room", "VMs"):
        table.add_column(column)
    for ratio in host.levels:
        cpus = host.vnode(ratio)
        _, allocated = host.level_usage(ratio)
        vms = [name for name, spec in host.vms.items() if float(spec.ratio) == ratio]
        room = len(cpus) * ratio - allocated
        table.add_row(f"{ratio}:1", ",".join(map(str, cpus)), str(allocated), f"{room:g}", " ".join(vms))
    return table


def main() -> None:
    app()
