"""Discover the topology of the running host from Linux sysfs.

`root` lets tests point the reader at a copy of a sysfs tree; in production it
is "/". Files that virtual machines often lack (cpufreq, cache ids on old
kernels, NUMA nodes on non-NUMA kernels) have fallbacks rather than being
required.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pinfold.topology.cpulist import parse_cpulist
from pinfold.topology.model import CPU, Topology

__all__ = ["discover"]

_LOCAL_DISTANCE = 10


def discover(exclude: Iterable[int] = (), root: str | Path = "/") -> Topology:
    """Read the online CPUs, their caches and NUMA nodes, and host memory.

    The NUMA node of a CPU comes from `/sys/devices/system/node/node*/cpulist`
    (SlackVM used the socket id, which is wrong on multi-node sockets such as
    EPYC in NPS4 mode).
    """
    base = Path(root)
    cpu_dir = base / "sys/devices/system/cpu"
    online = parse_cpulist(_read(cpu_dir / "online"))
    possible_text = _read_optional(cpu_dir / "possible")
    possible = parse_cpulist(possible_text) if possible_text else online
    node_of, distances = _numa_layout(base / "sys/devices/system/node", online)
    cpus = tuple(_read_cpu(cpu_dir / f"cpu{cpu_id}", cpu_id, node_of[cpu_id]) for cpu_id in online)
    memory = _memory_total_mib(base / "proc/meminfo")
    topology = Topology(
        cpus=cpus,
        numa_distances=distances,
        host_count=max(possible + online) + 1,
        memory_total_mib=memory,
        memory_allowed_mib=memory,
    )
    exclude = list(exclude)
    return topology.with_exclusions(exclude) if exclude else topology


def _numa_layout(node_dir: Path, online: list[int]) -> tuple[dict[int, int], dict[int, tuple[int, ...]]]:
    node_of: dict[int, int] = {}
    distances: dict[int, tuple[int, ...]] = {}
    for path in sorted(node_dir.glob("node[0-9]*")):
        node = int(path.name.removeprefix("node"))
        for cpu in parse_cpulist(_read(path / "cpulist")):
            node_of[cpu] = node
        distance_text = _read_optional(path / "distance")
        if distance_text:
            distances[node] = tuple(int(d) for d in distance_text.split())
    if not distances:
        distances = {0: (_LOCAL_DISTANCE,)}
    for cpu in online:
        node_of.setdefault(cpu, 0)
    width = max(distances) + 1
    for node, row in list(distances.items()):
        if len(row) < width:
            raise ValueError(f"NUMA node {node} lists {len(row)} distances, expected {width}")
    return node_of, distances


def _read_cpu(path: Path, cpu_id: int, node: int) -> CPU:
    smt = parse_cpulist(_read_optional(path / "topology/thread_siblings_list") or str(cpu_id))
    package = parse_cpulist(
        _read_optional(path / "topology/package_cpus_list")
        or _read_optional(path / "topology/core_siblings_list")
        or str(cpu_id)
    )
    freq = _read_optional(path / "cpufreq/cpuinfo_max_freq")
    return CPU(
        cpu_id=cpu_id,
        numa_node=node,
        cache_ids=_cache_ids(path / "cache", cpu_id),
        smt_siblings=tuple(s for s in smt if s != cpu_id),
        package_siblings=tuple(s for s in package if s != cpu_id),
        max_freq_khz=int(freq) if freq else None,
    )


def _cache_ids(cache_dir: Path, cpu_id: int) -> tuple[int, ...]:
    """Cache ids in index order. Without an `id` file (older kernels), the
    lowest CPU sharing the cache names it, which shares exactly as ids do."""
    indexes = sorted(cache_dir.glob("index[0-9]*"), key=lambda p: int(p.name.removeprefix("index")))
    ids: list[int] = []
    for index in indexes:
        text = _read_optional(index / "id")
        if text:
            ids.append(int(text))
        else:
            shared = parse_cpulist(_read_optional(index / "shared_cpu_list") or str(cpu_id))
            ids.append(min(shared))
    return tuple(ids)


def _memory_total_mib(meminfo: Path) -> int:
    for line in _read(meminfo).splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal":
            kib = int(value.split()[0])
            return kib // 1024
    raise ValueError(f"{meminfo}: no MemTotal line")


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


def _read_optional(path: Path) -> str | None:
    try:
        return _read(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
