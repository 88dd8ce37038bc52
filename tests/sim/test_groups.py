"""VM groups in the simulator (`--groups`): the same rule as the controller's
(`placement.GroupRule` through `Cluster.choose`), with the members running at
each moment; the side file's format and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pinfold.cli import app
from pinfold.placement import GroupPolicy
from pinfold.sim.groups import TraceGroups, read_groups
from pinfold.sim.readers.neutral import write_neutral
from pinfold.sim.replay import Scenario, simulate
from pinfold.sim.trace import Trace, TraceError
from tests.conftest import I7

runner = CliRunner()


def small_trace(count: int, departures: list[int] | None = None) -> Trace:
    """`count` VMs of 1 vCPU and 256 MiB, one a second, at level 1."""
    return Trace.from_columns(
        [f"vm-{n}" for n in range(count)], list(range(count)), departures or [100] * count,
        [1] * count, [256] * count, [1.0] * count,
    )  # fmt: skip


def one_group(trace: Trace, policy: GroupPolicy) -> TraceGroups:
    return TraceGroups(dict.fromkeys(range(len(trace)), "g"), {"g": policy})


def peak_in_use(result) -> int:
    return int(result.series.hosts_in_use.max())


def test_anti_affinity_on_three_hosts_places_three_apart_and_refuses_the_fourth(i7):
    trace = small_trace(4)
    scenario = Scenario("first-fit", hosts=3)
    assert peak_in_use(simulate(trace, i7, scenario)) == 1  # without the group: all on one host
    result = simulate(trace, i7, scenario, groups=one_group(trace, GroupPolicy.ANTI_AFFINITY))
    assert peak_in_use(result) == 3
    assert result.rejected == result.group_rejected == ["vm-3"]


def test_a_member_that_leaves_frees_its_host_for_the_group(i7):
    trace = small_trace(4, departures=[100, 2, 100, 100])  # vm-1 leaves before vm-3 arrives
    result = simulate(
        trace, i7, Scenario("first-fit", hosts=3), groups=one_group(trace, GroupPolicy.ANTI_AFFINITY)
    )
    assert result.rejected == []


def test_elastic_anti_affinity_opens_a_host_per_member_and_affinity_stays_on_one(i7):
    trace = small_trace(10)  # 10 CPUs in all: more than an i7 host's 8
    anti = simulate(trace, i7, Scenario("first-fit"), groups=one_group(trace, GroupPolicy.ANTI_AFFINITY))
    assert (anti.hosts_opened, anti.rejected) == (10, [])
    together = simulate(trace, i7, Scenario("worst-fit"), groups=one_group(trace, GroupPolicy.AFFINITY))
    assert together.hosts_opened == 1  # never a second host: the group's host is full
    assert together.rejected == together.group_rejected == ["vm-8", "vm-9"]
    soft = simulate(trace, i7, Scenario("worst-fit"), groups=one_group(trace, GroupPolicy.SOFT_AFFINITY))
    assert (soft.hosts_opened, soft.rejected) == (2, [])


def test_soft_anti_affinity_spreads_over_a_fixed_cluster_and_refuses_nothing(i7):
    trace = small_trace(6)
    result = simulate(
        trace, i7, Scenario("best-fit", hosts=3), groups=one_group(trace, GroupPolicy.SOFT_ANTI_AFFINITY)
    )
    assert peak_in_use(result) == 3
    assert result.rejected == []


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("vm,group,policy\n", 1, "header must be vm_id,group,policy"),
        ("vm_id,group,policy\nvm-9,g,affinity\n", 2, "'vm-9' is not in the trace"),
        ("vm_id,group,policy\nvm-0,g,spread\n", 2, "policy 'spread': one of affinity"),
        ("vm_id,group,policy\nvm-0,g,affinity\nvm-1,g,anti-affinity\n", 3, "group g is affinity"),
        ("vm_id,group,policy\nvm-0,g,affinity\nvm-0,h,affinity\n", 3, "vm-0 is in group g already"),
        ("vm_id,group,policy\nvm-0,,affinity\n", 2, "group: empty"),
    ],
)
def test_a_bad_groups_file_names_its_line(tmp_path, text, line, problem):
    path = tmp_path / "groups.csv"
    path.write_text(text)
    with pytest.raises(TraceError) as error:
        read_groups(path, small_trace(2))
    assert error.value.line == line
    assert problem in error.value.problem


def test_simulate_with_groups_from_the_command_line(tmp_path: Path):
    trace_path, groups_path, out = tmp_path / "trace.csv", tmp_path / "groups.csv", tmp_path / "out"
    write_neutral(small_trace(5), trace_path)
    groups_path.write_text("vm_id,group,policy\n" + "".join(f"vm-{n},web,anti-affinity\n" for n in range(4)))
    args = ["simulate", str(trace_path), "--topology", str(I7), "--hosts", "3", "--policy", "first-fit"]
    result = runner.invoke(app, [*args, "--groups", str(groups_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 VMs in 1 groups" in result.output
    summary = json.loads((out / "summary.json").read_text())["policies"]["first-fit"]
    assert (summary["rejected"], summary["rejected_by_group"], summary["peak_hosts_in_use"]) == (1, 1, 3)
    refused = runner.invoke(
        app, [*args, "--groups", str(groups_path), "--consolidate", "--out", str(out)], env={"COLUMNS": "300"}
    )
    assert refused.exit_code == 2
    assert "does not know groups" in refused.output
