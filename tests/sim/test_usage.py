"""Usage samples: the reader on the real Bitbrains file, the vNode usage of
the observed host worked out by hand, and the plot through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pinfold.cli import app
from pinfold.sim.replay import Scenario, simulate
from pinfold.sim.trace import NO_DEPARTURE, Trace, TraceError
from pinfold.sim.usage import observed_usage, read_usage
from tests.conftest import I7, SHARED

TRACES = SHARED / "data" / "traces"


def test_reads_the_bitbrains_usage_series():
    usage = read_usage(TRACES / "bitbrains_small_cpu_util.csv.gz")
    assert len(usage) == 50
    times, pct = usage["bb-1019"]
    assert times[0] == 0
    assert times[1] == 300
    assert pct[1] == pytest.approx(0.4)
    assert np.all(np.diff(times) > 0)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("vm,t\n", "header must be"),
        ("vm_id,t_s,cpu_util_pct\na,0,-1\n", "must be >= 0"),
        ("vm_id,t_s,cpu_util_pct\na,300,1\na,0,1\n", "not after its previous sample"),
        ("vm_id,t_s,cpu_util_pct\na,0\n", "expected 3 columns"),
    ],
    ids=["header", "negative", "unordered", "columns"],
)
def test_usage_reader_rejects_bad_input(tmp_path, content, problem):
    path = tmp_path / "u.csv"
    path.write_text(content)
    with pytest.raises(TraceError, match=problem):
        read_usage(path)


def test_vnode_usage_sums_the_cores_of_the_vms_of_each_level(i7):
    trace = Trace.from_columns(
        ["a", "b", "c"],
        [0, 0, 100],
        [NO_DEPARTURE, 200, NO_DEPARTURE],
        [2, 4, 1],
        [1024] * 3,
        [1.0, 2.0, 2.0],
    )
    usage = {
        "a": (np.array([0, 100, 200]), np.array([50.0, 100.0, 0.0])),
        "b": (np.array([0, 150]), np.array([25.0, 75.0])),
        "c": (np.array([100]), np.array([100.0])),
    }
    result = simulate(trace, i7, Scenario("progress"))
    observed = observed_usage(result, trace, usage)
    assert observed is not None
    assert observed.times.tolist() == [0, 100, 150, 200]
    premium = observed.levels.index(1.0)
    level_2 = observed.levels.index(2.0)
    assert observed.usage[:, premium].tolist() == [1.0, 2.0, 2.0, 0.0]  # 50% x 2, 100% x 2, ..., 0
    # b: 25% x 4 = 1 core, then 75% x 4 = 3 cores, gone at 200; c: 1 core from 100
    assert observed.usage[:, level_2].tolist() == [1.0, 2.0, 4.0, 1.0]
    assert observed.sizes[:, premium].tolist() == [2, 2, 2, 2]
    assert observed.sizes[-1, level_2] == 1  # b left at 200: the 2:1 vNode shrank to c's 1 CPU


def test_cli_plots_vnode_usage_for_bitbrains(tmp_path):
    out = tmp_path / "bb"
    result = CliRunner().invoke(app, [
        "simulate", str(TRACES / "bitbrains_small_vms.csv"), "--topology", str(I7), "--out", str(out),
        "--usage", str(TRACES / "bitbrains_small_cpu_util.csv.gz"), "--levels", "1.0=0.4,2.0=0.3,3.0=0.3",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert "sampled at" in summary["usage"]
    assert (out / "vnode_usage.png").read_bytes()[:4] == b"\x89PNG"
    assert "vnode_usage.png" in (out / "report.md").read_text()
