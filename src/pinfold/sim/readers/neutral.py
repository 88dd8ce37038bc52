"""The neutral CSV of ../shared/data/traces: `vm_id,arrival_s,departure_s,
vcpus,memory_mib[,ratio]`, plain or gzipped. An empty departure means the VM
outlives the trace; an empty or absent ratio means "no level recorded"."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pinfold.sim.readers._common import Columns, csv_rows, open_text, parse_float, parse_int
from pinfold.sim.trace import NO_DEPARTURE, Trace, TraceError

__all__ = ["HEADER", "read_neutral"]

HEADER = ["vm_id", "arrival_s", "departure_s", "vcpus", "memory_mib"]
LEVEL_COLUMNS = ("ratio", "level")


def read_neutral(path: str | Path) -> Trace:
    columns = Columns(path)
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceError(path, 1, "empty file: expected the header " + ",".join(HEADER))
        header = [name.strip() for name in header]
        if header[:5] != HEADER or len(header) > 6 or (len(header) == 6 and header[5] not in LEVEL_COLUMNS):
            raise TraceError(path, 1, f"header must be {','.join(HEADER)}[,ratio], got {','.join(header)}")
        width = len(header)
        for line, row in csv_rows(reader, path, width, ""):
            arrival = parse_int(row[1], "arrival_s", path, line, minimum=0)
            departure = parse_int(row[2], "departure_s", path, line, minimum=0) if row[2] else NO_DEPARTURE
            ratio = math.nan
            if width == 6 and row[5].strip():
                ratio = parse_float(row[5], "ratio", path, line, minimum=1.0)
            columns.add(
                line,
                row[0].strip(),
                arrival,
                departure,
                parse_int(row[3], "vcpus", path, line, minimum=1),
                parse_int(row[4], "memory_mib", path, line, minimum=1),
                ratio,
            )
    return columns.trace("no VMs after the header")


def write_neutral(trace: Trace, path: str | Path) -> None:
    """Write the neutral CSV (gzipped when the name ends in .gz), with a ratio
    column when the trace has levels."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        with_levels = trace.has_levels
        writer.writerow([*HEADER, "ratio"] if with_levels else HEADER)
        for i, vm_id in enumerate(trace.vm_ids):
            departure = int(trace.departure[i])
            row = [vm_id, int(trace.arrival[i]), "" if departure == NO_DEPARTURE else departure,
                   int(trace.vcpus[i]), int(trace.memory_mib[i])]  # fmt: skip
            if with_levels:
                row.append(repr(float(trace.ratio[i])))
            writer.writerow(row)
