"""Helpers shared by the trace readers: opening plain or gzipped text, and
parsing fields with errors that name the file and line."""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pinfold.sim.trace import Trace, TraceError

__all__ = ["MAX_INT", "Columns", "csv_rows", "open_text", "parse_float", "parse_int"]

#: Largest integer a trace field may hold (traces are stored as int64 columns).
MAX_INT = 2**62


@contextmanager
def open_text(path: str | Path) -> Iterator[IO[str]]:
    """Open a trace file, gunzipping when the name ends in .gz."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            handle: IO[str] = gzip.open(path, "rt", encoding="utf-8", newline="")  # noqa: SIM115
        else:
            handle = open(path, encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise TraceError(path, None, f"cannot open: {exc.strerror or exc}") from None
    try:
        yield handle
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceError(path, None, f"cannot read: {exc}") from None
    finally:
        handle.close()


def parse_int(text: str, what: str, path: str | Path, line: int, minimum: int | None = None) -> int:
    """An integer field; "12.0" is accepted as 12, "12.5" is not."""
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise TraceError(path, line, f"{what} is not a number: {text!r}") from None
        if not math.isfinite(number) or not number.is_integer():
            raise TraceError(path, line, f"{what} is not an integer: {text!r}") from None
        value = int(number)
    if minimum is not None and value < minimum:
        raise TraceError(path, line, f"{what} must be >= {minimum}, got {value}")
    if value > MAX_INT:
        raise TraceError(path, line, f"{what} is too large: {text!r}")
    return value


def parse_float(text: str, what: str, path: str | Path, line: int, minimum: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(path, line, f"{what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise TraceError(path, line, f"{what} is not finite: {text!r}")
    if minimum is not None and value < minimum:
        raise TraceError(path, line, f"{what} must be >= {minimum:g}, got {value:g}")
    return value


def headed_rows(handle: IO[str], path: str | Path, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    """`csv_rows` of a CSV whose first line must be exactly `header` (a side
    file's: usage samples, VM groups); else the error names the header wanted."""
    reader = csv.reader(handle)
    found = [name.strip() for name in next(reader, [])]
    if found != header:
        raise TraceError(path, 1, f"header must be {','.join(header)}, got {','.join(found) or 'nothing'}")
    yield from csv_rows(reader, path, len(header), "")


def csv_rows(reader: Any, path: str | Path, width: int, what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty row, refusing rows of the wrong width."""
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != width:
            raise TraceError(path, line, f"expected {width} {what}columns, got {len(row)}")
        yield line, row


class Columns:
    """Accumulates parsed rows, refusing duplicate VM ids."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.vm_ids: list[str] = []
        self.arrival: list[int] = []
        self.departure: list[int] = []
        self.vcpus: list[int] = []
        self.memory_mib: list[int] = []
        self.ratio: list[float] = []
        self._seen: dict[str, int] = {}

    def add(
        self, line: int, vm_id: str, arrival: int, departure: int, vcpus: int, memory: int, ratio: float
    ) -> None:
        if not vm_id:
            raise TraceError(self.path, line, "empty vm id")
        first = self._seen.setdefault(vm_id, line)
        if first != line:
            raise TraceError(self.path, line, f"vm id {vm_id!r} already used on line {first}")
        if departure >= 0 and departure < arrival:
            raise TraceError(self.path, line, f"departure {departure} is before arrival {arrival}")
        self.vm_ids.append(vm_id)
        self.arrival.append(arrival)
        self.departure.append(departure)
        self.vcpus.append(vcpus)
        self.memory_mib.append(memory)
        self.ratio.append(ratio)

    def trace(self, if_empty: str) -> Trace:
        """The rows read as a Trace; TraceError(if_empty) when there were none."""
        if not self.vm_ids:
            raise TraceError(self.path, None, if_empty)
        return Trace.from_columns(
            self.vm_ids,
            self.arrival,
            self.departure,
            self.vcpus,
            self.memory_mib,
            self.ratio,
            source=str(self.path),
        )
