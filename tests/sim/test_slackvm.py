"""SlackVM monitoring files: reading them, and replaying one host through the
placement core with the vNode rows recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pinfold.cli import app
from pinfold.placement import HostAllocator, VMSpec
from pinfold.sim.readers import detect_format, read_trace
from pinfold.sim.readers.slackvm import HEADER, read_monitoring
from pinfold.sim.replay import Scenario, simulate
from pinfold.sim.slackvm_replay import replay_monitoring
from pinfold.sim.trace import NO_DEPARTURE, TraceError
from tests.conftest import I7
from tests.sim.slackvm_files import TIMESTAMPS, RecordedVM, sample_vms, write_monitoring

runner = CliRunner()


@pytest.fixture
def monitoring_file(tmp_path) -> Path:
    return write_monitoring(tmp_path / "monitoring.csv", sample_vms(), TIMESTAMPS)


def test_reader_takes_arrival_size_level_and_memory_from_vm_rows(monitoring_file):
    trace = read_trace(monitoring_file)  # detected as slackvm
    assert detect_format(monitoring_file) == "slackvm"
    assert trace.vm_ids == ["vm-a", "vm-b", "vm-c", "vm-d", "vm-e"]
    assert list(trace.arrival) == [0, 0, 15, 30, 45]
    # removed at the timestamp after its last row; alive at the end: no departure
    assert list(trace.departure) == [NO_DEPARTURE, 45, NO_DEPARTURE, 60, NO_DEPARTURE]
    assert list(trace.vcpus) == [2, 2, 1, 1, 4]
    assert list(trace.memory_mib) == [2048, 2048, 1024, 1024, 4096]
    assert list(trace.ratio) == [1.0, 2.0, 2.0, 3.0, 2.0]
    assert "sb_oc" in trace.level_note


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda lines: ["tmp,rec", *lines[1:]], "header must be"),
        (lambda lines: [*lines[:2], "0\tvm\tcpu", *lines[2:]], "expected 11 tab-separated columns"),
        (lambda lines: [*lines[:1], lines[1].replace("\tglobal\t", "\thost\t"), *lines[2:]], "rec must be"),
        (lambda lines: [line.replace("\t3.0\tNone\tNone", "\t0.5\tNone\tNone") for line in lines], "sb_oc"),
        (
            lambda lines: [line for line in lines if "u-d\tvm-d\t1\t" not in line],
            "u-d has cpu rows but no mem",
        ),
        (
            lambda lines: [line.replace("\t1024\tsubset-1\tu-c", "\t-5\tsubset-1\tu-c") for line in lines],
            "> 0 MB",
        ),
    ],
    ids=["header", "columns", "rec", "level", "no-mem-row", "negative-memory"],
)
def test_reader_rejects_bad_files_naming_the_line(monitoring_file, mangle, problem):
    lines = monitoring_file.read_text().splitlines()
    monitoring_file.write_text("\n".join(mangle(lines)) + "\n")
    with pytest.raises(TraceError, match=problem) as error:
        read_monitoring(monitoring_file)
    assert str(error.value).startswith(f"{monitoring_file}:")


def rows_of(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_replay_recomputes_vnode_rows_in_slackvm_order(monitoring_file, tmp_path, i7):
    monitoring = read_monitoring(monitoring_file)
    out = tmp_path / "out.csv"
    result = replay_monitoring(monitoring, i7, out)
    assert result.placed == 5
    assert result.rejected == {}
    rows = rows_of(out)
    assert rows[0] == HEADER
    assert all(len(row) == 11 for row in rows)

    # the same deploys and removals done by hand give the vNode sizes written
    host = HostAllocator(i7)
    expected: dict[int, dict[str, str]] = {}
    arrivals = {0: ["vm-a", "vm-b"], 15: ["vm-c"], 30: ["vm-d"], 45: ["vm-e"], 60: []}
    removals = {45: ["vm-b"], 60: ["vm-d"]}
    specs = {vm.name: VMSpec(vm.name, vm.vcpus, vm.memory_mb, vm.ratio) for vm in sample_vms()}
    for t in TIMESTAMPS:
        for name in arrivals[t]:
            host.deploy(specs[name])
        for name in removals.get(t, []):
            host.remove(name)
        expected[t] = {f"subset-{r}": str(len(host.vnode(r))) for r in host.levels}
    written: dict[int, dict[str, str]] = {}
    for row in rows[1:]:
        if row[1] == "subset" and row[2] == "cpu":
            written.setdefault(int(row[0]), {})[row[5]] = row[4]
    assert written == expected

    at_45 = [row for row in rows[1:] if row[0] == "45"]
    kinds = [(row[1], row[2], row[5]) for row in at_45]
    assert kinds[0] == ("global", "cpu", "None")
    assert at_45[0][4] == "8"  # usable CPUs of the topology
    # each vNode's subset row comes right before its VMs' cpu rows
    first_subset = kinds.index(("subset", "cpu", "subset-1.0"))
    assert kinds[first_subset + 1] == ("vm", "cpu", "subset-1.0")
    dsc = json.loads(next(r for r in at_45 if r[1] == "subset" and r[5] == "subset-2.0")[10])
    assert sorted(dsc["vms"]) == ["vm-c", "vm-e"]
    assert len(dsc["cpus"]) == int(expected[45]["subset-2.0"])
    assert [r[6] for r in at_45 if r[1] == "vm" and r[2] == "cpu"] == ["u-a", "u-c", "u-e", "u-d"]
    mem = next(r for r in at_45 if r[1] == "subset" and r[2] == "mem")
    assert mem[4] == str(2048 + 1024 + 1024 + 4096)


def test_replay_carries_usage_over_and_round_trips(monitoring_file, tmp_path, i7):
    out = tmp_path / "out.csv"
    result = replay_monitoring(read_monitoring(monitoring_file), i7, out)
    level_2 = result.levels.index(2.0)
    assert result.usage[0, level_2] == pytest.approx(0.6)  # 0.3 x 2 vCPUs recorded at t=0
    again = read_monitoring(out)
    assert {vm.name for vm in again.vms.values()} == {f"vm-{c}" for c in "abcde"}
    assert again.trace().vcpus.tolist() == read_monitoring(monitoring_file).trace().vcpus.tolist()


def test_replay_drops_the_rows_of_refused_vms(tmp_path, i7):
    vms = [RecordedVM("u-big", "big", 6, 1024, 1.0, 0, 30), RecordedVM("u-x", "x", 4, 1024, 1.0, 0, 30)]
    path = write_monitoring(tmp_path / "m.csv", vms, [0, 15, 30])
    result = replay_monitoring(read_monitoring(path), i7, tmp_path / "out.csv")
    assert result.rejected == {"x": "not enough cpu"}
    assert "u-x" not in (tmp_path / "out.csv").read_text()


def test_cli_replays_a_monitoring_file_on_one_host(monitoring_file, tmp_path):
    out = tmp_path / "replay"
    result = runner.invoke(
        app,
        ["simulate", "--format", "slackvm", str(monitoring_file), "--topology", str(I7), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["placed"] == 5
    assert summary["peak_vnode_cpus"]["2"] >= 2
    assert (out / "vnodes.png").read_bytes()[:4] == b"\x89PNG"
    assert rows_of(out / "monitoring.csv")[0] == HEADER


def test_cli_refuses_cluster_options_for_a_monitoring_replay(monitoring_file, tmp_path):
    result = runner.invoke(
        app,
        [
            "simulate",
            str(monitoring_file),
            "--topology",
            str(I7),
            "--hosts",
            "3",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "one host" in result.output


def test_slackvm_order_deploys_before_it_removes(tmp_path, i7):
    """x holds 6 CPUs until t=15 (so SlackVM removes it at t=30); y (4 vCPUs)
    arrives at t=30. SlackVM deploys before it removes: y does not fit the
    8-CPU host at that moment. Both the one-host replay and a cluster replay of
    the same file must agree."""
    vms = [RecordedVM("u-x", "x", 6, 1024, 1.0, 0, 15), RecordedVM("u-y", "y", 4, 1024, 1.0, 30, 45)]
    path = write_monitoring(tmp_path / "m.csv", vms, [0, 15, 30, 45])
    one_host = replay_monitoring(read_monitoring(path), i7, tmp_path / "out.csv")
    assert one_host.rejected == {"y": "not enough cpu"}
    trace = read_trace(path)
    assert not trace.departures_first
    cluster_run = simulate(trace, i7, Scenario("progress", hosts=1))
    assert cluster_run.rejected == ["y"]
