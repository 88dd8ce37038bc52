"""Builds monitoring files in SlackVM's layout (as its local scheduler writes
them: tab-separated, `None` for null, rows per timestamp in the order global
cpu, per vNode its subset row then its VM rows, global mem, subset mem, VM mem
rows). No recorded SlackVM file is public, so tests make their own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pinfold.sim.readers.slackvm import HEADER

N = "None"


@dataclass(frozen=True)
class RecordedVM:
    uuid: str
    name: str
    vcpus: int
    memory_mb: int
    ratio: float
    first: int
    last: int


def write_monitoring(path: Path, vms: list[RecordedVM], timestamps: list[int], host_cpus: int = 8) -> Path:
    lines = ["\t".join(HEADER)]
    for t in timestamps:
        alive = [vm for vm in vms if vm.first <= t <= vm.last]
        lines.append("\t".join([str(t), "global", "cpu", "0.25", str(host_cpus), N, N, N, N, N, N]))
        for ratio in sorted({vm.ratio for vm in alive}):
            members = [vm for vm in alive if vm.ratio == ratio]
            cores = sum(vm.vcpus for vm in members)
            usage = f"{0.3 * cores:.4f}"
            dsc = json.dumps({"res_list": [], "consumer_list": [{"name": vm.name} for vm in members]})
            lines.append(
                "\t".join(
                    [
                        str(t),
                        "subset",
                        "cpu",
                        usage,
                        str(cores),
                        f"subset-{ratio}",
                        N,
                        N,
                        str(ratio),
                        "0",
                        dsc,
                    ]
                )
            )
            for vm in members:
                lines.append(
                    "\t".join(
                        [
                            str(t),
                            "vm",
                            "cpu",
                            "0.3",
                            str(vm.vcpus),
                            f"subset-{ratio}",
                            vm.uuid,
                            vm.name,
                            str(ratio),
                            N,
                            N,
                        ]
                    )
                )
        total = sum(vm.memory_mb for vm in alive)
        lines.append("\t".join([str(t), "global", "mem", "0.4", "31776", N, N, N, N, N, N]))
        lines.append(
            "\t".join([str(t), "subset", "mem", "0.4", str(total), "subset-1", N, N, "1", "0", "{}"])
        )
        for vm in alive:
            lines.append(
                "\t".join(
                    [str(t), "vm", "mem", "0.5", str(vm.memory_mb), "subset-1", vm.uuid, vm.name, "1", N, N]
                )
            )
    path.write_text("\n".join(lines) + "\n")
    return path


def sample_vms() -> list[RecordedVM]:
    """Five VMs on an 8-CPU host over timestamps 0..60 step 15."""
    return [
        RecordedVM("u-a", "vm-a", 2, 2048, 1.0, 0, 60),
        RecordedVM("u-b", "vm-b", 2, 2048, 2.0, 0, 30),
        RecordedVM("u-c", "vm-c", 1, 1024, 2.0, 15, 60),
        RecordedVM("u-d", "vm-d", 1, 1024, 3.0, 30, 45),
        RecordedVM("u-e", "vm-e", 4, 4096, 2.0, 45, 60),
    ]


TIMESTAMPS = [0, 15, 30, 45, 60]
