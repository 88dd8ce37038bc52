"""The Azure Public Dataset `vmtable.csv` layout, V1 (2017) and V2 (2019).

No header; eleven columns: vmid, subscriptionid, deploymentid, vmcreated,
vmdeleted, maxcpu, avgcpu, p95maxcpu, vmcategory, vmcorecount, vmmemory.
Times are seconds, memory is GB (GiB in practice: 1.75, 3.5, 7 ...), read as
`round(GB * 1024)` MiB.

V2 records core count and memory as buckets. A plain bucket value ("2", "8",
"64") is taken as it stands (each bucket's upper edge); an open bucket ">N"
(">24" cores, ">64" GB) becomes the next power of two above N (32 cores,
128 GB). Every VM of the table has a deletion time; a VM still alive when
the table ends carries the table's last time and is removed there.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pinfold.sim.readers._common import Columns, csv_rows, open_text, parse_float, parse_int
from pinfold.sim.trace import Trace, TraceError

__all__ = ["bucket_value", "read_azure"]

COLUMNS = 11
MIB_PER_GB = 1024


def bucket_value(text: str, what: str, path: str | Path, line: int) -> float:
    """A V1 number or a V2 bucket, as a number (see the module docstring)."""
    text = text.strip()
    if text.startswith(">"):
        bound = parse_float(text[1:], what, path, line, minimum=0)
        return float(2 ** math.floor(math.log2(bound) + 1)) if bound >= 1 else 1.0
    return parse_float(text, what, path, line)


def read_azure(path: str | Path) -> Trace:
    columns = Columns(path)
    with open_text(path) as handle:
        reader = csv.reader(handle)
        for line, row in csv_rows(reader, path, COLUMNS, "vmtable "):
            created = parse_int(row[3], "vmcreated", path, line, minimum=0)
            deleted = parse_int(row[4], "vmdeleted", path, line, minimum=0)
            cores = bucket_value(row[9], "vmcorecount", path, line)
            memory_gb = bucket_value(row[10], "vmmemory", path, line)
            if cores < 1 or not cores.is_integer():
                raise TraceError(path, line, f"vmcorecount must be a whole number >= 1, got {row[9]!r}")
            if round(memory_gb * MIB_PER_GB) < 1:
                raise TraceError(path, line, f"vmmemory must be at least 1 MiB, got {row[10]!r} GB")
            columns.add(
                line, row[0].strip(), created, deleted, int(cores), round(memory_gb * MIB_PER_GB), math.nan
            )
    return columns.trace("no VMs in the table")
