"""VM groups for a replay: the side file of `pinfold simulate --groups`.

CSV `vm_id,group,policy` (plain or .gz), one line per VM in a group: the
trace's VM, its group's name, and the group's policy (Nova's: affinity,
anti-affinity, soft-affinity, soft-anti-affinity), the same on every line of a
group. A VM is in at most one group; VMs the file does not name are in none.
The replay hands each VM's group to `Cluster.choose` as a `GroupRule`, the
controller's own rule (docs/simulator.md, "VM groups").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pinfold.placement import GroupPolicy
from pinfold.sim.readers._common import headed_rows, open_text
from pinfold.sim.trace import Trace, TraceError

__all__ = ["HEADER", "TraceGroups", "read_groups"]

HEADER = ["vm_id", "group", "policy"]


@dataclass(frozen=True)
class TraceGroups:
    """`group_of`: trace index -> group name; `policies`: group -> policy."""

    group_of: dict[int, str] = field(default_factory=dict)
    policies: dict[str, GroupPolicy] = field(default_factory=dict)


def read_groups(path: str | Path, trace: Trace) -> TraceGroups:
    """The groups of `trace`'s VMs; `TraceError` (file and line) for a bad
    header, an unknown VM or policy, a VM named twice, or a group given two
    policies."""
    index = {vm_id: i for i, vm_id in enumerate(trace.vm_ids)}
    groups = TraceGroups()
    with open_text(path) as handle:
        for line, row in headed_rows(handle, path, HEADER):
            vm_id, name, policy_text = (cell.strip() for cell in row)
            vm = index.get(vm_id)
            if vm is None:
                raise TraceError(path, line, f"vm_id {vm_id!r} is not in the trace")
            if vm in groups.group_of:
                raise TraceError(path, line, f"{vm_id} is in group {groups.group_of[vm]} already")
            if not name:
                raise TraceError(path, line, "group: empty")
            if policy_text not in GroupPolicy._value2member_map_:
                valid = ", ".join(p.value for p in GroupPolicy)
                raise TraceError(path, line, f"policy {policy_text!r}: one of {valid}")
            policy = groups.policies.setdefault(name, GroupPolicy(policy_text))
            if policy.value != policy_text:
                raise TraceError(path, line, f"group {name} is {policy.value}, not {policy_text}")
            groups.group_of[vm] = name
    return groups
