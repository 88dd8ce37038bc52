"""Topology.discover on this host's real sysfs, and on built sysfs trees that
show what real machines have and this one lacks (two NUMA nodes, no cpufreq,
no cache ids)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinfold.topology import Topology, parse_cpulist


def test_discover_reads_this_host():
    topo = Topology.discover()
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    assert [cpu.cpu_id for cpu in topo.cpus] == online
    assert topo.host_count >= len(online)
    assert topo.memory_total_mib > 0
    assert topo.cache_levels >= 1
    # whatever the host, distances follow the rule and the matrix is consistent
    d = topo.distances
    for a in online:
        for b in online:
            assert d[a, b] == d[b, a]
            if a != b:
                assert d[a, b] >= 10


def test_discover_excludes_cpus_reserved_for_the_host():
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    topo = Topology.discover(exclude=[online[0]])
    assert online[0] not in topo.usable_cpus
    assert len(topo.usable_cpus) == len(online) - 1


def test_discover_refuses_to_exclude_unknown_cpus():
    with pytest.raises(ValueError, match="unknown CPUs"):
        Topology.discover(exclude=[100_000])


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def build_two_socket_tree(root: Path, with_cache_ids: bool = True) -> None:
    """8 CPUs: 2 nodes x 2 cores x SMT2; siblings n and n+4; an L3 per node;
    node cpulists that differ from the package ids (node 1 = CPUs 2,3,6,7
    while every CPU claims package 0, as on a multi-node socket)."""
    cpu = root / "sys/devices/system/cpu"
    _write(cpu / "online", "0-7")
    _write(cpu / "possible", "0-15")
    for n in range(8):
        core = n % 4
        node = core // 2
        base = cpu / f"cpu{n}"
        _write(base / "topology/thread_siblings_list", f"{core},{core + 4}")
        _write(base / "topology/package_cpus_list", "0-7")
        _write(base / "topology/physical_package_id", "0")
        for index, (level, cache_id) in enumerate([(1, core), (1, core), (2, core), (3, node)]):
            cache = base / f"cache/index{index}"
            _write(cache / "level", str(level))
            shared = f"{core},{core + 4}" if level < 3 else ("0-1,4-5" if node == 0 else "2-3,6-7")
            _write(cache / "shared_cpu_list", shared)
            if with_cache_ids:
                _write(cache / "id", str(cache_id))
    nodes = root / "sys/devices/system/node"
    _write(nodes / "node0/cpulist", "0-1,4-5")
    _write(nodes / "node0/distance", "10 21")
    _write(nodes / "node1/cpulist", "2-3,6-7")
    _write(nodes / "node1/distance", "21 10")
    _write(root / "proc/meminfo", "MemTotal:       16384000 kB\nMemFree:         1000 kB")


@pytest.mark.parametrize("with_cache_ids", [True, False], ids=["cache-ids", "shared-lists-only"])
def test_discover_builds_distances_from_a_two_node_tree(tmp_path, with_cache_ids):
    build_two_socket_tree(tmp_path, with_cache_ids)
    topo = Topology.discover(root=tmp_path)
    assert topo.host_count == 16
    assert [c.numa_node for c in topo.cpus] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert topo.memory_total_mib == 16000
    assert all(c.max_freq_khz is None for c in topo.cpus)  # no cpufreq: not required
    assert topo.distance(0, 4) == 10
    assert topo.distance(0, 1) == 40
    assert topo.distance(0, 2) == 40 + 21


def test_discover_without_numa_directory_puts_every_cpu_on_node_zero(tmp_path):
    build_two_socket_tree(tmp_path)
    for path in sorted((tmp_path / "sys/devices/system/node").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    topo = Topology.discover(root=tmp_path)
    assert {c.numa_node for c in topo.cpus} == {0}
    assert topo.distance(0, 2) == 40 + 10


def test_discover_reads_cpufreq_when_present(tmp_path):
    build_two_socket_tree(tmp_path)
    for n in range(8):
        _write(tmp_path / f"sys/devices/system/cpu/cpu{n}/cpufreq/cpuinfo_max_freq", "3000000")
    assert {c.max_freq_khz for c in Topology.discover(root=tmp_path).cpus} == {3000000}


def test_discovered_topology_round_trips_through_slackvm_json(tmp_path):
    build_two_socket_tree(tmp_path / "root")
    topo = Topology.discover(root=tmp_path / "root", exclude=[0, 4])
    topo.save(tmp_path / "t.json")
    back = Topology.load(tmp_path / "t.json")
    assert back.usable_cpus == topo.usable_cpus
    assert back.host_count == 16
    usable = list(topo.usable_cpus)
    assert (back.distances[usable][:, usable] == topo.distances[usable][:, usable]).all()
