"""`pinfold simulate` and `pinfold trace generate` end to end, as a user runs
them: real files in, real files out (JSON, CSV, PNG, Markdown) checked."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from pinfold.cli import app
from pinfold.sim.readers.neutral import read_neutral
from tests.conftest import EPYC_EXP, I7, SHARED

runner = CliRunner()
BITBRAINS = SHARED / "data" / "traces" / "bitbrains_small_vms.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_simulate_bitbrains_compares_policies_and_writes_every_output(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "pinfold", "simulate", str(BITBRAINS), "--topology", str(I7), "--elastic",
         "--compare", "progress,first-fit,segregated", "--levels", "1.0=0.5,2.0=0.5", "--seed", "3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "levels drawn per VM from the mix 1=0.5,2=0.5 with seed 3" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"progress", "first-fit", "segregated"}
    assert summary["levels"] == "levels drawn per VM from the mix 1=0.5,2=0.5 with seed 3"
    for row in summary["policies"].values():
        assert row["vms"] == 50
        assert row["placed"] + row["rejected"] + row["zero_lifetime_skipped"] == 50
        assert row["peak_hosts"] >= row["lower_bound_peak"] >= 1
        for key in ("mean_hosts", "unallocated_cpu_fraction_at_peak", "unallocated_memory_fraction_at_peak",
                    "wall_seconds", "peak_hosts_over_lower_bound"):  # fmt: skip
            assert key in row
    assert summary["policies"]["segregated"]["peak_hosts"] >= summary["policies"]["progress"]["peak_hosts"]
    with (out / "timeseries.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["policy"] for row in rows} == {"progress", "first-fit", "segregated"}
    for name in ("hosts.png", "unallocated.png", "vnodes.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "| progress |" in report
    assert "![" in report
    assert "hosts.png" in report
    assert "one cluster per level" in report


def test_simulate_on_a_fixed_cluster_lists_rejections(tmp_path):
    out = tmp_path / "fixed"
    result = runner.invoke(
        app, ["simulate", str(BITBRAINS), "--topology", str(I7), "--hosts", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["policies"]["progress"]
    assert summary["rejected"] > 0
    with (out / "rejected.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == summary["rejected"]


def test_simulate_bad_trace_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("vm_id,arrival_s,departure_s,vcpus,memory_mib\na,10,5,1,100\n")
    result = runner.invoke(app, ["simulate", str(bad), "--topology", str(I7), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert f"{bad}:2: departure 5 is before arrival 10" in result.output


def test_simulate_rejects_conflicting_or_unknown_options(tmp_path):
    base = ["simulate", str(BITBRAINS), "--topology", str(I7), "--out", str(tmp_path / "o")]
    both = runner.invoke(app, [*base, "--hosts", "2", "--elastic"])
    assert both.exit_code == 2
    unknown = runner.invoke(app, [*base, "--compare", "progress,random"])
    assert unknown.exit_code == 2
    assert "unknown policy 'random'" in unknown.output
    levels = runner.invoke(app, [*base, "--levels", "1.0=0.7"])
    assert levels.exit_code == 2
    assert "add up to 0.7" in levels.output


def test_trace_generate_writes_a_seeded_neutral_trace(tmp_path):
    path = tmp_path / "syn.csv.gz"
    args = ["trace", "generate", str(path), "--vms", "300", "--duration", "3600", "--seed", "9"]
    assert runner.invoke(app, args).exit_code == 0
    first = read_neutral(path)
    assert len(first) == 300
    assert first.has_levels
    again = tmp_path / "again.csv.gz"
    assert runner.invoke(app, ["trace", "generate", str(again), *args[3:]]).exit_code == 0
    assert Path(again).exists()
    assert read_neutral(again).vm_ids == first.vm_ids
    assert list(read_neutral(again).arrival) == list(first.arrival)


def test_trace_generate_rejects_a_bad_mix(tmp_path):
    result = runner.invoke(app, ["trace", "generate", str(tmp_path / "x.csv"), "--sizes", "1=0.5"])
    assert result.exit_code == 2
    assert "--sizes" in result.output


def test_simulate_replays_a_generated_trace_on_epyc(tmp_path):
    path = tmp_path / "syn.csv"
    assert runner.invoke(app, ["trace", "generate", str(path), "--vms", "2000", "--seed", "1"]).exit_code == 0
    out = tmp_path / "o"
    result = runner.invoke(app, ["simulate", str(path), "--topology", str(EPYC_EXP), "--out", str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads((out / "summary.json").read_text())["policies"]["progress"]
    assert row["rejected"] == 0
    assert 1.0 <= row["peak_hosts_over_lower_bound"] < 1.5
