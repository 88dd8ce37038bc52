"""SlackVM's topology JSON format: read and write it.

The `distances` a file stores are ignored on load (some files carry values
from an older formula) and written freshly from `Topology.distances` on save,
so SlackVM's own tools reading a pinfold file see current numbers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pinfold.topology.model import CPU, Topology

__all__ = ["digest", "from_dict", "load", "save", "to_dict"]


def load(path: str | Path, exclude: Iterable[int] = ()) -> Topology:
    with open(path, encoding="utf-8") as handle:
        try:
            document = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from None
    try:
        return from_dict(document, exclude=exclude)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a SlackVM topology: {exc!r}") from None


def save(topology: Topology, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(topology), indent=1) + "\n", encoding="utf-8")


def digest(document: Mapping[str, Any]) -> str:
    """The SHA-256 of a document's canonical JSON (sorted keys, no spaces): the
    key the controller stores a host's topology under, and which an agent
    registers by when the controller holds that document already."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def from_dict(document: Mapping[str, Any], exclude: Iterable[int] = ()) -> Topology:
    cpuset = document["cpuset"]
    memset = document["memset"]
    cpus = tuple(_cpu_from_entry(entry) for entry in cpuset["cpu_list"])
    numa = {int(node): tuple(int(d) for d in row) for node, row in cpuset["numa_distances"].items()}
    topology = Topology(
        cpus=cpus,
        numa_distances=numa,
        host_count=int(cpuset["host_count"]),
        memory_total_mib=int(memset["total"]),
        memory_allowed_mib=int(memset.get("allowed", memset["total"])),
    )
    exclude = list(exclude)
    return topology.with_exclusions(exclude) if exclude else topology


def to_dict(topology: Topology, distances: bool = True) -> dict[str, Any]:
    """The SlackVM document. Excluded CPUs are left out of `cpu_list`, as in
    SlackVM's own files for hosts with reserved CPUs; `host_count` keeps them.
    `distances=False` leaves out the CPU distance table, O(CPUs²) and
    recomputed on reading anyway (what an agent sends its controller)."""
    usable = topology.usable_cpus
    kept = set(usable)
    cpu_list = [_cpu_to_entry(cpu) for cpu in topology.cpus if cpu.cpu_id in kept]
    cpuset: dict[str, Any] = {
        "numa_distances": {str(n): list(row) for n, row in sorted(topology.numa_distances.items())},
        "cpu_list": cpu_list,
    }
    if distances:
        matrix = topology.distances
        cpuset["distances"] = {str(a): {str(b): int(matrix[a, b]) for b in usable if b != a} for a in usable}
    cpuset["host_count"] = topology.host_count
    return {
        "cpuset": cpuset,
        "memset": {"total": topology.memory_total_mib, "allowed": topology.memory_allowed_mib},
    }


def _cpu_from_entry(entry: Mapping[str, Any]) -> CPU:
    levels = entry["cache_level"]
    cache_ids = tuple(int(levels[key]) for key in sorted(levels, key=int))
    freq = entry.get("max_freq")
    return CPU(
        cpu_id=int(entry["cpu_id"]),
        numa_node=int(entry["numa_node"]),
        cache_ids=cache_ids,
        smt_siblings=tuple(int(s) for s in entry.get("sib_smt", ())),
        package_siblings=tuple(int(s) for s in entry.get("sib_cpu", ())),
        max_freq_khz=int(freq) if freq else None,
    )


def _cpu_to_entry(cpu: CPU) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "cpu_id": cpu.cpu_id,
        "numa_node": cpu.numa_node,
        "sib_smt": list(cpu.smt_siblings),
        "sib_cpu": list(cpu.package_siblings),
        "cache_level": {str(level): cache for level, cache in enumerate(cpu.cache_ids)},
    }
    if cpu.max_freq_khz is not None:
        entry["max_freq"] = cpu.max_freq_khz
    return entry
