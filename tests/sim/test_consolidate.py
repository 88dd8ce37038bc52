"""Consolidation in the simulator: hand-made traces on i7 hosts (8 CPUs,
31,776 MiB) whose migrations can be followed by hand, the cost model (a VM
holds both hosts while it migrates), departures in mid-flight, and the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pinfold.cli import app
from pinfold.sim.consolidate import Consolidation, shadow_name
from pinfold.sim.generator import TraceShape, generate_shape
from pinfold.sim.readers.neutral import write_neutral
from pinfold.sim.replay import SEGREGATED, Scenario, simulate
from pinfold.sim.report import summarize, time_weighted_mean
from pinfold.sim.trace import NO_DEPARTURE, Trace
from tests.conftest import I7

GIB = 1024
FOREVER = NO_DEPARTURE


def trace_of(rows: list[tuple[str, int, int, int, int, float]]) -> Trace:
    ids, arrival, departure, vcpus, memory, ratio = (list(c) for c in zip(*rows, strict=True))
    return Trace.from_columns(ids, arrival, departure, vcpus, memory, ratio)


def at(result, t: int) -> int:
    """Index of the sample at time t."""
    return int(np.flatnonzero(result.series.time == t)[0])


# host00000: a (6, leaves at 100) and b (2 vCPUs, 10 GiB); host00001: c (4).
# After 100, host00000 holds b alone (25%), host00001 c (50%): the plan at 200
# moves b to host00001, which takes 10 s at 1 GiB/s.
TWO_HOSTS = [
    ("a", 0, 100, 6, GIB, 1.0),
    ("b", 0, FOREVER, 2, 10 * GIB, 1.0),
    ("c", 1, FOREVER, 4, GIB, 1.0),
]
EVERY_200 = Consolidation(period_s=200, budget=4, cooldown_s=0, bandwidth_mib_s=1024)


def test_a_plan_moves_the_light_host_and_both_hosts_hold_the_vm_while_it_moves(i7):
    trace = trace_of([*TWO_HOSTS, ("late", 1001, 1002, 1, GIB, 1.0)])
    result = simulate(trace, i7, Scenario("first-fit", consolidation=EVERY_200))
    s = result.series
    assert result.name == "first-fit+consolidate(N=4)"
    assert result.migrations is not None
    # (time, migrations, then hosts emptied, no target, cooldown (host00001
    # holds b, moved in this plan), frozen, over budget, not tried)
    assert result.migrations.plans[0] == (200, 1, 1, 0, 1, 0, 0, 0)
    assert result.migrations.completed == 1
    during, after = at(result, 200), at(result, 210)
    assert s.hosts_in_use[during] == 2  # the source until the copy is done
    assert s.cpus_allocated[during] == 2 + 4 + 2  # b's 2 CPUs on both hosts
    assert s.memory_allocated[during] == 10 * GIB + GIB + 10 * GIB
    assert s.lower_bound[during] == 1  # the bound counts b once
    assert s.hosts_in_use[after] == 1
    assert s.cpus_allocated[after] == 6
    assert s.memory_allocated[after] == 11 * GIB
    assert s.vms_running[after] == 2
    summary = summarize(result)
    assert summary["consolidation"]["migrations"] == 1
    assert summary["consolidation"]["migration_seconds"] == 10
    assert summary["consolidation"]["migrations_per_vm"] == pytest.approx(1 / 4)


def test_the_same_trace_without_consolidation_keeps_both_hosts(i7):
    trace = trace_of([*TWO_HOSTS, ("late", 1001, 1002, 1, GIB, 1.0)])
    plain = simulate(trace, i7, Scenario("first-fit"))
    assert plain.migrations is None
    assert plain.series.hosts_in_use[-1] == 2
    assert summarize(plain)["consolidation"] is None


def test_an_arrival_avoids_the_host_being_emptied(i7):
    # during b's migration (200-210) `f` arrives: first-fit would pick
    # host00000 (6 CPUs free), which is being emptied; it goes to host00001
    trace = trace_of([*TWO_HOSTS, ("f", 205, FOREVER, 1, GIB, 1.0), ("late", 1001, 1002, 1, GIB, 1.0)])
    result = simulate(trace, i7, Scenario("first-fit", consolidation=EVERY_200))
    s = result.series
    assert s.hosts_in_use[at(result, 205)] == 2
    assert s.hosts_in_use[-1] == 1
    assert result.hosts_opened == 2


def test_a_vm_that_leaves_while_it_migrates_leaves_both_hosts(i7):
    trace = trace_of(
        [("a", 0, 100, 6, GIB, 1.0), ("b", 0, 205, 2, 10 * GIB, 1.0), ("c", 1, FOREVER, 4, GIB, 1.0)]
    )
    result = simulate(trace, i7, Scenario("first-fit", consolidation=EVERY_200))
    log = result.migrations
    assert log is not None
    assert (log.started, log.completed, log.cancelled) == (1, 0, 1)
    s = result.series
    i = at(result, 205)
    assert (s.hosts_in_use[i], s.cpus_allocated[i], s.memory_allocated[i], s.vms_running[i]) == (1, 4, GIB, 1)


def test_a_consolidated_replay_loses_no_vm_and_is_deterministic(i7):
    shape = TraceShape(vms=400, duration_s=4 * 86_400, sizes="1=0.4,2=0.4,4=0.2", seed=5)
    trace = generate_shape(shape)
    settings = Consolidation(period_s=1800, budget=8, cooldown_s=3600)
    runs = [simulate(trace, i7, Scenario("progress", consolidation=settings)) for _ in range(2)]
    plain = simulate(trace, i7, Scenario("progress"))
    first = runs[0]
    assert first.migrations is not None
    assert first.migrations.started > 0
    assert first.migrations.refused == 0
    for column in ("time", "hosts_in_use", "cpus_allocated"):
        assert np.array_equal(getattr(first.series, column), getattr(runs[1].series, column))
    assert first.migrations.plans == runs[1].migrations.plans  # type: ignore[union-attr]
    # same VMs running at every trace instant, and the same lower bound
    trace_times = np.isin(first.series.time, plain.series.time)
    assert np.array_equal(first.series.vms_running[trace_times], plain.series.vms_running)
    assert np.array_equal(first.series.lower_bound[trace_times], plain.series.lower_bound)
    assert time_weighted_mean(first.series.time, first.series.hosts_in_use) < time_weighted_mean(
        plain.series.time, plain.series.hosts_in_use
    )
    assert not first.rejected


def test_segregated_takes_no_consolidation():
    with pytest.raises(ValueError, match="segregated"):
        Scenario(SEGREGATED, consolidation=Consolidation())


@pytest.mark.parametrize(
    ("field", "value"),
    [("period_s", 0), ("budget", 0), ("cooldown_s", -1), ("bandwidth_mib_s", 0), ("policy", "nope")],
)
def test_bad_consolidation_settings_are_refused(field, value):
    with pytest.raises(ValueError):  # noqa: PT011 (each names its own field)
        Consolidation(**{field: value})


def test_migration_time_is_memory_over_bandwidth_at_least_one_second():
    settings = Consolidation(bandwidth_mib_s=1000)
    assert settings.duration_s(8192) == 9
    assert settings.duration_s(10) == 1
    assert shadow_name("x") != "x"


def test_time_weighted_mean_from_a_start_carries_the_value_then():
    times = np.array([0, 10, 20, 40])
    values = np.array([1, 3, 5, 7])
    assert time_weighted_mean(times, values) == pytest.approx((10 + 30 + 100) / 40)
    # from 15: 3 until 20, then 5 until 40
    assert time_weighted_mean(times, values, 15) == pytest.approx((5 * 3 + 20 * 5) / 25)


def test_cli_runs_plain_and_consolidated_side_by_side(tmp_path):
    trace = tmp_path / "t.csv"
    write_neutral(generate_shape(TraceShape(vms=200, duration_s=3 * 86_400, seed=2)), trace)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["simulate", str(trace), "--topology", str(I7), "--elastic", "--consolidate",
         "--consolidate-budget", "2,8", "--consolidate-period", "3600", "--consolidate-cooldown", "0",
         "--migration-bandwidth", "500", "--warm-up", "86400", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["policies"]) == ["progress", "progress+consolidate(N=2)", "progress+consolidate(N=8)"]
    assert summary["warm_up_s"] == 86400
    row = summary["policies"]["progress+consolidate(N=8)"]
    assert row["consolidation"]["budget_per_plan"] == 8
    assert row["consolidation"]["bandwidth_mib_s"] == 500
    assert row["after_warm_up"]["from_s"] == row["after_warm_up"]["from_s"]
    for name in ("mean_lower_bound", "mean_hosts_over_mean_bound"):
        assert name in row
    with (out / "plans.csv").open() as handle:
        plans = list(csv.DictReader(handle))
    assert {p["policy"] for p in plans} == {"progress+consolidate(N=2)", "progress+consolidate(N=8)"}
    assert "| progress+consolidate(N=8) |" in (out / "report.md").read_text()


def test_cli_refuses_consolidation_options_without_consolidate(tmp_path):
    trace = tmp_path / "t.csv"
    write_neutral(generate_shape(TraceShape(vms=10, duration_s=1000, seed=2)), trace)
    for extra in (["--consolidate-budget", "4"], ["--consolidate", "--consolidate-budget", "x"]):
        result = CliRunner().invoke(
            app, ["simulate", str(trace), "--topology", str(I7), "--out", str(tmp_path / "o"), *extra]
        )
        assert result.exit_code == 2, result.output


def test_a_source_sends_its_vms_one_after_another(i7):
    # host00000 keeps b and b2 (5 GiB each, 5 s at 1 GiB/s) after a leaves:
    # both are reserved on host00001 at 200, b ends at 205, b2 at 210
    trace = trace_of(
        [("a", 0, 100, 6, GIB, 1.0), ("b", 0, FOREVER, 1, 5 * GIB, 1.0), ("b2", 0, FOREVER, 1, 5 * GIB, 1.0),
         ("c", 1, FOREVER, 4, GIB, 1.0), ("late", 1001, 1002, 1, GIB, 1.0)]
    )  # fmt: skip
    result = simulate(trace, i7, Scenario("first-fit", consolidation=EVERY_200))
    s = result.series
    assert s.memory_allocated[at(result, 200)] == 2 * 10 * GIB + GIB
    assert (s.hosts_in_use[at(result, 205)], s.memory_allocated[at(result, 205)]) == (2, 15 * GIB + GIB)
    assert (s.hosts_in_use[at(result, 210)], s.memory_allocated[at(result, 210)]) == (1, 10 * GIB + GIB)
    assert result.migrations is not None
    assert result.migrations.seconds == 10


def test_migrations_still_in_flight_at_the_end_finish_without_stretching_the_series(i7):
    # the plan at 200 runs after that instant's events (d arrives), and moves b
    # then d; both end after the last event: the cluster ends consistent, and
    # the series (and its time-weighted means) stop at the trace's last instant
    trace = trace_of([*TWO_HOSTS, ("d", 200, FOREVER, 1, GIB, 1.0)])
    result = simulate(trace, i7, Scenario("first-fit", consolidation=EVERY_200))
    assert result.migrations is not None
    assert (result.migrations.started, result.migrations.completed) == (2, 2)
    assert result.series.time[-1] == 200
