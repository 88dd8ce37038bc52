import json

import pytest

from pinfold.topology import Topology
from tests.conftest import EPYC_EXP, I7


@pytest.mark.parametrize("path", [I7, EPYC_EXP], ids=["i7", "epyc-exp"])
def test_save_then_load_gives_the_same_topology(tmp_path, path):
    topo = Topology.load(path)
    topo.save(tmp_path / "copy.json")
    again = Topology.load(tmp_path / "copy.json")
    assert again == topo


def test_saved_file_carries_recomputed_distances_and_slackvm_keys(tmp_path, epyc):
    epyc.save(tmp_path / "e.json")
    doc = json.loads((tmp_path / "e.json").read_text())
    assert set(doc) == {"cpuset", "memset"}
    assert set(doc["cpuset"]) == {"numa_distances", "cpu_list", "distances", "host_count"}
    assert doc["cpuset"]["distances"]["0"]["64"] == 72
    assert "0" not in doc["cpuset"]["distances"]["0"]
    entry = doc["cpuset"]["cpu_list"][0]
    assert set(entry) == {"cpu_id", "numa_node", "sib_smt", "sib_cpu", "cache_level", "max_freq"}


def test_load_with_exclusions_removes_cpus_and_save_leaves_them_out(tmp_path, i7):
    topo = Topology.load(I7, exclude=[0, 4])
    assert topo.usable_cpus == (1, 2, 3, 5, 6, 7)
    topo.save(tmp_path / "x.json")
    doc = json.loads((tmp_path / "x.json").read_text())
    assert [c["cpu_id"] for c in doc["cpuset"]["cpu_list"]] == [1, 2, 3, 5, 6, 7]
    assert doc["cpuset"]["host_count"] == 8


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        ("{}", "not a SlackVM topology"),
        (
            '{"cpuset": {"cpu_list": [], "numa_distances": {"0": [10]}, "host_count": 1},'
            ' "memset": {"total": 1}}',
            "no CPUs",
        ),
        (
            '{"cpuset": {"cpu_list": [{"cpu_id": 5, "numa_node": 0, "cache_level": {"0": 0}}],'
            ' "numa_distances": {"0": [10]}, "host_count": 2}, "memset": {"total": 1}}',
            "cpu ids must lie",
        ),
        (
            '{"cpuset": {"cpu_list": [{"cpu_id": 0, "numa_node": 3, "cache_level": {"0": 0}}],'
            ' "numa_distances": {"0": [10]}, "host_count": 2}, "memset": {"total": 1}}',
            "NUMA",
        ),
    ],
    ids=["truncated", "empty-object", "no-cpus", "cpu-out-of-range", "missing-numa-row"],
)
def test_load_rejects_malformed_files_with_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        Topology.load(path)


def test_load_of_a_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        Topology.load(tmp_path / "absent.json")
