"""SlackVM's offline mode, on pinfold's placement core: replay one host's
monitoring file and write it back with the vNode rows recomputed.

Order at each timestamp T, as SlackVM's own replay does: deploy the VMs whose
first cpu row is at T (in file order), remove those whose last cpu row was at
the timestamp before T, then write the rows of T:

1. `global cpu`, usage carried over, `config` = usable CPUs of the topology;
2. per cpu vNode, oldest level first: its `subset cpu` row (`config` = CPUs in
   the vNode, `val` = the input vNode's usage at T when recorded, `sb_unused` =
   floor((C*r - A) / r), `sb_dsc` = compact JSON of its CPU list and VM names),
   then the input `vm cpu` rows of its VMs;
3. `global mem` (carried over, `config` = usable MiB), `subset mem` (`config` =
   MiB allocated), then the input `vm mem` rows.

VMs the host refuses are reported and their rows left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pinfold.placement import DEFAULT_CRITICAL_SIZE, HostAllocator, PlacementError, VMSpec
from pinfold.sim.readers.slackvm import HEADER, NULL, MonitoringFile, MonitoringRow
from pinfold.topology import Topology

__all__ = ["HostReplay", "replay_monitoring"]


@dataclass
class HostReplay:
    """What the replay did, and per timestamp each level's vNode size and the
    usage the input recorded for it (NaN when none)."""

    timestamps: list[int]
    levels: list[float]
    sizes: npt.NDArray[np.int32]
    usage: npt.NDArray[np.float64]
    placed: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    rows_written: int = 0


def replay_monitoring(
    monitoring: MonitoringFile, topology: Topology, out_csv: Path, critical_size: int = DEFAULT_CRITICAL_SIZE
) -> HostReplay:
    host = HostAllocator(topology, critical_size=critical_size, report_pins=False)
    arriving: dict[int, list[str]] = {}
    leaving: dict[int, list[str]] = {}
    for uuid, vm in monitoring.vms.items():
        arriving.setdefault(vm.first, []).append(uuid)
        leaving.setdefault(vm.last, []).append(uuid)
    levels = sorted({vm.ratio for vm in monitoring.vms.values()})
    result = HostReplay(
        timestamps=monitoring.timestamps,
        levels=levels,
        sizes=np.zeros((len(monitoring.timestamps), len(levels)), dtype=np.int32),
        usage=np.full((len(monitoring.timestamps), len(levels)), np.nan),
    )
    placed: dict[str, str] = {}  # uuid -> name on the host
    order: list[float] = []  # levels in vNode creation order, as SlackVM writes them
    previous: int | None = None
    with out_csv.open("w", encoding="utf-8", newline="") as out:
        out.write("\t".join(HEADER) + "\n")
        for step, tmp in enumerate(monitoring.timestamps):
            for uuid in arriving.get(tmp, ()):
                vm = monitoring.vms[uuid]
                try:
                    host.deploy(VMSpec(vm.name, vm.vcpus, vm.memory_mib or 0, vm.ratio))
                except PlacementError as error:
                    result.rejected[vm.name] = str(error)
                    continue
                placed[uuid] = vm.name
                result.placed += 1
            for uuid in leaving.get(previous, ()) if previous is not None else ():
                if uuid in placed:
                    host.remove(placed.pop(uuid))
            order = [r for r in order if r in host.levels] + [r for r in host.levels if r not in order]
            lines = _rows_at(tmp, monitoring.rows[tmp], host, order, placed)
            out.writelines("\t".join(fields) + "\n" for fields in lines)
            result.rows_written += len(lines)
            _sample(result, step, host, monitoring.rows[tmp])
            previous = tmp
    return result


def _rows_at(
    tmp: int, rows: list[MonitoringRow], host: HostAllocator, order: list[float], placed: dict[str, str]
) -> list[tuple[str, ...]]:
    def carried(rec: str, res: str) -> Iterator[MonitoringRow]:
        return (r for r in rows if r["rec"] == rec and r["res"] == res)

    def vm_rows(res: str, ratio: float | None = None) -> list[tuple[str, ...]]:
        return [
            r.fields
            for r in carried("vm", res)
            if r["vm_uuid"] in placed and (ratio is None or float(r["sb_oc"]) == ratio)
        ]

    usage = {r["subset"]: r["val"] for r in carried("subset", "cpu")}
    out: list[tuple[str, ...]] = [
        _global_row(tmp, "cpu", next(carried("global", "cpu"), None), host.usable_cpu_count)
    ]
    names_by_level: dict[float, list[str]] = {}
    for name, spec in host.vms.items():
        names_by_level.setdefault(float(spec.ratio), []).append(name)
    for ratio in order:
        cpus, allocated = host.level_usage(ratio)
        subset = f"subset-{ratio}"
        description = {"cpus": host.vnode(ratio), "vms": names_by_level.get(ratio, [])}
        out.append(
            (str(tmp), "subset", "cpu", usage.get(subset, NULL), str(cpus), subset, NULL, NULL, str(ratio),
             str(math.floor((cpus * ratio - allocated) / ratio + 1e-9)), _compact(description))
        )  # fmt: skip
        out += vm_rows("cpu", ratio)
    out.append(_global_row(tmp, "mem", next(carried("global", "mem"), None), host.memory_usable_mib))
    memory_usage = next((r["val"] for r in carried("subset", "mem")), NULL)
    allocated_mib = host.memory_allocated_mib
    out.append(
        (str(tmp), "subset", "mem", memory_usage, str(allocated_mib), "subset-1", NULL, NULL, "1", "0",
         _compact({"mib": allocated_mib, "vms": list(host.vms)}))
    )  # fmt: skip
    out += vm_rows("mem")
    return out


def _global_row(tmp: int, res: str, row: MonitoringRow | None, capacity: int) -> tuple[str, ...]:
    value = row["val"] if row is not None else NULL
    return (str(tmp), "global", res, value, str(capacity), NULL, NULL, NULL, NULL, NULL, NULL)


def _compact(document: object) -> str:
    return json.dumps(document, separators=(",", ":"))


def _sample(result: HostReplay, step: int, host: HostAllocator, rows: list[MonitoringRow]) -> None:
    recorded = {r["subset"]: r["val"] for r in rows if r["rec"] == "subset" and r["res"] == "cpu"}
    for j, ratio in enumerate(result.levels):
        result.sizes[step, j] = host.level_usage(ratio)[0]
        value = recorded.get(f"subset-{ratio}", NULL)
        if value != NULL:
            result.usage[step, j] = float(value)
