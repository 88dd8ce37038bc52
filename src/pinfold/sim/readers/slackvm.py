"""SlackVM's monitoring CSV: the file its local scheduler writes every few
seconds and replays in its offline mode (`--load`).

Tab-separated, no quoting, literal `None` for null, header
`tmp rec res val config subset vm_uuid vm_cmn sb_oc sb_unused sb_dsc`:

| rec | res | config | val | other columns |
|---|---|---|---|---|
| global | cpu, mem | usable CPUs, MB of the host | host use (fraction) | None |
| subset | cpu | CPUs in the vNode | vNode use (cores) | `subset-<ratio>`, sb_oc, sb_unused, sb_dsc |
| subset | mem | MB in the pool | memory use (fraction) | `subset-1` |
| vm | cpu | the VM's vCPUs | use (fraction of its vCPUs) | subset, vm_uuid, vm_cmn, sb_oc (level) |
| vm | mem | the VM's memory (MB) | use (fraction) | subset, vm_uuid, vm_cmn |

`tmp` is whole seconds since the scheduler started. As SlackVM reads it, a VM
arrives at the timestamp of its first cpu row and leaves after the timestamp of
its last one; its vCPUs and level come from its cpu rows, its memory (MB, read
as MiB, as SlackVM does everywhere) from its mem rows. In the neutral `Trace`,
the departure is the next timestamp of the file (the one at which SlackVM
removes it), or none when its last row is at the last timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pinfold.sim.readers._common import open_text, parse_float, parse_int
from pinfold.sim.trace import NO_DEPARTURE, Trace, TraceError

__all__ = ["HEADER", "MonitoringFile", "MonitoringRow", "read_monitoring", "read_slackvm"]

HEADER = ["tmp", "rec", "res", "val", "config", "subset", "vm_uuid", "vm_cmn", "sb_oc", "sb_unused", "sb_dsc"]
NULL = "None"
RECORDS = ("global", "subset", "vm")
RESOURCES = ("cpu", "mem")


@dataclass(frozen=True, slots=True)
class MonitoringRow:
    """One row, fields as text (`None` kept literal), with its line number."""

    line: int
    fields: tuple[str, ...]

    def __getitem__(self, column: str) -> str:
        return self.fields[_INDEX[column]]

    @property
    def tmp(self) -> int:
        return int(self.fields[0])


_INDEX = {name: i for i, name in enumerate(HEADER)}


@dataclass
class _VM:
    uuid: str
    name: str
    first_line: int
    first: int
    last: int
    vcpus: int
    ratio: float
    memory_mib: int | None = None


@dataclass
class MonitoringFile:
    """Every row of a monitoring file grouped by timestamp, and the VMs it
    records in order of first appearance."""

    path: str
    timestamps: list[int]
    rows: dict[int, list[MonitoringRow]]
    vms: dict[str, _VM] = field(default_factory=dict)

    def trace(self) -> Trace:
        """The recorded VMs as a neutral trace (see the module docstring)."""
        following = {t: self.timestamps[i + 1] for i, t in enumerate(self.timestamps[:-1])}
        vms = list(self.vms.values())
        trace = Trace.from_columns(
            [vm.name for vm in vms],
            [vm.first for vm in vms],
            [following.get(vm.last, NO_DEPARTURE) for vm in vms],
            [vm.vcpus for vm in vms],
            [vm.memory_mib or 0 for vm in vms],
            [vm.ratio for vm in vms],
            source=self.path,
        )
        trace = trace.with_levels(trace.ratio, "levels from the trace (sb_oc of each VM's cpu rows)")
        return replace(trace, departures_first=False)


def read_monitoring(path: str | Path) -> MonitoringFile:
    rows: dict[int, list[MonitoringRow]] = {}
    vms: dict[str, _VM] = {}
    names: dict[str, str] = {}
    memory: dict[str, tuple[int, int]] = {}  # uuid -> (MiB, line)
    with open_text(path) as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        if header != HEADER:
            raise TraceError(
                path, 1, "header must be the 11 tab-separated SlackVM columns " + " ".join(HEADER)
            )
        for line, text in enumerate(handle, start=2):
            text = text.rstrip("\r\n")
            if not text:
                continue
            fields = tuple(text.split("\t"))
            if len(fields) != len(HEADER):
                raise TraceError(
                    path, line, f"expected {len(HEADER)} tab-separated columns, got {len(fields)}"
                )
            row = MonitoringRow(line, fields)
            tmp = parse_int(row["tmp"], "tmp", path, line, minimum=0)
            _check_row(row, path)
            rows.setdefault(tmp, []).append(row)
            if row["rec"] == "vm":
                _record_vm(vms, names, memory, row, tmp, path)
    for uuid, (_, line) in memory.items():
        if uuid not in vms:
            raise TraceError(path, line, f"vm {uuid} has mem rows but no cpu row")
    for vm in vms.values():
        if vm.uuid not in memory:
            raise TraceError(path, vm.first_line, f"vm {vm.uuid} has cpu rows but no mem row")
        vm.memory_mib = memory[vm.uuid][0]
    if not vms:
        raise TraceError(path, None, "no vm rows: nothing to replay")
    return MonitoringFile(str(path), sorted(rows), rows, vms)


def read_slackvm(path: str | Path) -> Trace:
    return read_monitoring(path).trace()


def _check_row(row: MonitoringRow, path: str | Path) -> None:
    if row["rec"] not in RECORDS:
        raise TraceError(path, row.line, f"rec must be one of {', '.join(RECORDS)}, got {row['rec']!r}")
    if row["res"] not in RESOURCES:
        raise TraceError(path, row.line, f"res must be cpu or mem, got {row['res']!r}")
    if row["val"] != NULL:
        parse_float(row["val"], "val", path, row.line)


def _record_vm(
    vms: dict[str, _VM],
    names: dict[str, str],
    memory: dict[str, tuple[int, int]],
    row: MonitoringRow,
    tmp: int,
    path: str | Path,
) -> None:
    uuid, name = row["vm_uuid"], row["vm_cmn"]
    if uuid == NULL:
        raise TraceError(path, row.line, "vm row without vm_uuid")
    name = uuid if name == NULL else name
    if names.setdefault(name, uuid) != uuid:
        raise TraceError(path, row.line, f"vm name {name!r} is used by two uuids")
    if row["res"] == "cpu":
        vcpus = parse_int(row["config"], "config (vCPUs)", path, row.line, minimum=1)
        ratio = parse_float(row["sb_oc"], "sb_oc (level)", path, row.line, minimum=1.0)
        vm = vms.get(uuid)
        if vm is None:
            vms[uuid] = _VM(uuid, name, row.line, tmp, tmp, vcpus, ratio)
            return
        vm.first, vm.last = min(vm.first, tmp), max(vm.last, tmp)
        vm.vcpus, vm.ratio = vcpus, ratio  # the last row wins, as in SlackVM
        return
    megabytes = parse_float(row["config"], "config (memory MB)", path, row.line)
    if megabytes <= 0:
        raise TraceError(path, row.line, f"memory must be > 0 MB, got {row['config']}")
    memory[uuid] = (round(megabytes), memory.get(uuid, (0, row.line))[1])
