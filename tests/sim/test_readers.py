"""Every trace reader passes the same conformance checks (good rows, gzip,
errors that name file, line and problem), plus format-specific cases on the
real files of ../shared/data/traces."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pinfold.sim.mix import assign_levels, parse_mix
from pinfold.sim.readers import detect_format, read_trace
from pinfold.sim.readers.azure import read_azure
from pinfold.sim.readers.neutral import read_neutral, write_neutral
from pinfold.sim.trace import NO_DEPARTURE, Trace, TraceError
from tests.conftest import SHARED

TRACES = SHARED / "data" / "traces"


@dataclass(frozen=True)
class Format:
    """How to write rows in one format, for the shared conformance tests."""

    name: str
    read: Callable[[str | Path], Trace]
    header: str | None
    row: Callable[[str, str, str, str, str], str]  # vm, arrival, departure, vcpus, memory (MiB)


def neutral_row(vm: str, arrival: str, departure: str, vcpus: str, memory: str) -> str:
    return f"{vm},{arrival},{departure},{vcpus},{memory}"


def azure_row(vm: str, arrival: str, departure: str, vcpus: str, memory: str) -> str:
    gb = f"{int(memory) / 1024:g}" if memory.lstrip("-").isdigit() else memory
    return f"{vm},sub,dep,{arrival},{departure},90.1,10.5,70.2,Interactive,{vcpus},{gb}"


FORMATS = [
    Format("neutral", read_neutral, "vm_id,arrival_s,departure_s,vcpus,memory_mib", neutral_row),
    Format("azure", read_azure, None, azure_row),
]


def write(tmp_path: Path, fmt: Format, rows: list[str], gz: bool = False) -> Path:
    text = "\n".join(([fmt.header] if fmt.header else []) + rows) + "\n"
    path = tmp_path / (f"{fmt.name}.csv.gz" if gz else f"{fmt.name}.csv")
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def line_of(fmt: Format, row_index: int) -> int:
    return row_index + (2 if fmt.header else 1)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_reader_returns_columns(tmp_path, fmt, gz):
    rows = [fmt.row("a", "0", "600", "2", "4096"), fmt.row("b", "300", "900", "1", "2048")]
    trace = fmt.read(write(tmp_path, fmt, rows, gz))
    assert trace.vm_ids == ["a", "b"]
    assert list(trace.arrival) == [0, 300]
    assert list(trace.departure) == [600, 900]
    assert list(trace.vcpus) == [2, 1]
    assert list(trace.memory_mib) == [4096, 2048]
    assert not trace.has_levels


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize(
    ("bad_row", "problem"),
    [
        (("x", "0", "600", "-2", "4096"), "must be"),
        (("x", "0", "600", "2", "-4096"), "must be"),
        (("x", "600", "0", "2", "4096"), "departure 0 is before arrival 600"),
        (("x", "zero", "600", "2", "4096"), "not a number"),
        (("a", "0", "600", "2", "4096"), "already used"),
    ],
    ids=["negative-vcpus", "negative-memory", "departure-before-arrival", "not-a-number", "duplicate-id"],
)
def test_reader_rejects_bad_rows_naming_file_and_line(tmp_path, fmt, bad_row, problem):
    rows = [fmt.row("a", "0", "600", "2", "4096"), fmt.row(*bad_row)]
    path = write(tmp_path, fmt, rows)
    with pytest.raises(TraceError, match=problem) as error:
        fmt.read(path)
    assert error.value.path == str(path)
    assert error.value.line == line_of(fmt, 1)
    assert str(error.value).startswith(f"{path}:{line_of(fmt, 1)}: ")


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_reader_rejects_missing_columns(tmp_path, fmt):
    rows = [fmt.row("a", "0", "600", "2", "4096"), "b,0,600"]
    with pytest.raises(TraceError, match="columns") as error:
        fmt.read(write(tmp_path, fmt, rows))
    assert error.value.line == line_of(fmt, 1)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_reader_reports_a_missing_file(tmp_path, fmt):
    with pytest.raises(TraceError, match="cannot open"):
        fmt.read(tmp_path / "absent.csv")


def test_neutral_reads_the_whole_azure_trace():
    trace = read_neutral(TRACES / "azure_v1_flavors.csv.gz")
    assert len(trace) == 410_276
    assert int(trace.arrival.min()) == 2_100_000
    assert int(trace.arrival.max()) == 2_591_100
    assert int((trace.departure == NO_DEPARTURE).sum()) == 23_311
    assert set(np.unique(trace.vcpus)) <= {1, 2, 4, 8, 16}


def test_neutral_reads_bitbrains_with_open_departures():
    trace = read_neutral(TRACES / "bitbrains_small_vms.csv")
    assert len(trace) == 50
    assert (trace.departure == NO_DEPARTURE).sum() >= 48


def test_neutral_ratio_column_and_round_trip(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("vm_id,arrival_s,departure_s,vcpus,memory_mib,ratio\na,0,,2,1024,2.0\nb,5,9,1,512,\n")
    trace = read_neutral(path)
    assert trace.ratio[0] == 2.0
    assert np.isnan(trace.ratio[1])
    full = trace.with_levels(np.array([2.0, 1.0]), "test")
    write_neutral(full, tmp_path / "back.csv.gz")
    again = read_neutral(tmp_path / "back.csv.gz")
    assert list(again.ratio) == [2.0, 1.0]
    assert list(again.departure) == [NO_DEPARTURE, 9]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "empty file"),
        ("vm,arrival\n", "header must be"),
        ("vm_id,arrival_s,departure_s,vcpus,memory_mib,ratio\na,0,,1,1,0.5\n", "ratio must be >= 1"),
    ],
    ids=["empty", "wrong-header", "ratio-below-one"],
)
def test_neutral_specific_errors(tmp_path, content, problem):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(TraceError, match=problem):
        read_neutral(path)


def test_azure_v2_buckets_map_to_documented_numbers(tmp_path):
    path = tmp_path / "vmtable.csv"
    path.write_text(
        "v1,s,d,0,300,50,10,40,Delay-insensitive,>24,>64\n"
        "v2,s,d,0,300,50,10,40,Unknown,2,4\n"
        "v3,s,d,0,300,50,10,40,Interactive,4,1.75\n"
    )
    trace = read_azure(path)
    assert list(trace.vcpus) == [32, 2, 4]
    assert list(trace.memory_mib) == [128 * 1024, 4 * 1024, 1792]


def test_detect_format_by_first_line(tmp_path):
    assert detect_format(TRACES / "azure_v1_flavors.csv.gz") == "neutral"
    table = tmp_path / "vmtable.csv"
    table.write_text(azure_row("a", "0", "300", "2", "2048") + "\n")
    assert detect_format(table) == "azure"
    assert read_trace(table).vcpus[0] == 2
    with pytest.raises(TraceError, match="unknown trace format"):
        read_trace(table, "parquet")


def test_neutral_with_only_a_header_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("vm_id,arrival_s,departure_s,vcpus,memory_mib\n")
    with pytest.raises(TraceError, match="no VMs"):
        read_neutral(path)


def test_huge_numbers_are_errors_not_crashes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("vm_id,arrival_s,departure_s,vcpus,memory_mib\na,0,,1,99999999999999999999\n")
    with pytest.raises(TraceError, match=r":2: memory_mib is too large"):
        read_neutral(path)


def test_a_csv_field_past_the_limit_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('vm_id,arrival_s,departure_s,vcpus,memory_mib\n"' + "x" * 200_000 + '",0,,1,1\n')
    with pytest.raises(TraceError, match="cannot read"):
        read_neutral(path)


def test_azure_memory_below_one_mib_is_an_error(tmp_path):
    path = tmp_path / "vmtable.csv"
    path.write_text("v1,s,d,0,300,50,10,40,Unknown,2,0.0001\n")
    with pytest.raises(TraceError, match=":1: vmmemory must be at least 1 MiB"):
        read_azure(path)


def test_partly_levelled_trace_keeps_its_levels_and_draws_the_rest(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("vm_id,arrival_s,departure_s,vcpus,memory_mib,ratio\na,0,,1,1,1.2345678\nb,0,,1,1,\n")
    trace = read_neutral(path)
    filled = assign_levels(trace, parse_mix("2.0=1"), seed=1, keep_recorded=True)
    assert list(filled.ratio) == [1.2345678, 2.0]
    assert "for the 1 VMs without one" in filled.level_note
    write_neutral(filled, tmp_path / "back.csv")
    assert read_neutral(tmp_path / "back.csv").ratio[0] == 1.2345678
