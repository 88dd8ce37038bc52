"""One host under a steady random mix of 1.0/2.0/3.0 VMs near full.

Target (issue 2): at least 20,000 deploy-or-remove operations per second on one
core, on topology_EPYC-7662-exp.json (232 usable CPUs, 1,031,742 MiB).

    python -m benchmarks.bench_allocator [--ops N] [--seed S]

The host is first filled until deploys start failing; then each step removes
a random VM when the last deploy was refused or when more than 95% of the CPUs
or of the memory are allocated, and otherwise deploys a random one, so the host
stays near full. Refused deploys count as operations (they run every check);
the report gives both, and the mean CPU and memory allocation over the run.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from benchmarks.common import EPYC_EXP, pin_to_one_core
from pinfold.placement import HostAllocator, PlacementError, VMSpec
from pinfold.topology import Topology

VCPUS = [1, 1, 1, 2, 2, 4, 8, 16]
MIB_PER_VCPU = [1024, 2048, 4096]
RATIOS = [1.0, 2.0, 3.0]


def random_spec(rng: random.Random, name: str) -> VMSpec:
    vcpus = rng.choice(VCPUS)
    return VMSpec(name, vcpus, vcpus * rng.choice(MIB_PER_VCPU), rng.choice(RATIOS))


def run(ops: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    host = HostAllocator(Topology.load(EPYC_EXP))
    counter = 0
    refusals_in_a_row = 0
    while refusals_in_a_row < 20:
        counter += 1
        try:
            host.deploy(random_spec(rng, f"vm{counter}"))
            refusals_in_a_row = 0
        except PlacementError:
            refusals_in_a_row += 1
    names = list(host.vms)
    specs = [random_spec(rng, f"s{i}") for i in range(ops)]
    picks = [rng.random() for _ in range(ops)]
    deployed = removed = refused = repins = 0
    last_refused = False
    cpu_limit = 0.05 * host.usable_cpu_count
    mem_limit = 0.05 * host.memory_usable_mib
    cpu_sum = mem_sum = 0.0
    start = time.perf_counter()
    for i in range(ops):
        full = host.free_cpu_count < cpu_limit or host.memory_free_mib < mem_limit
        cpu_sum += host.free_cpu_count
        mem_sum += host.memory_free_mib
        if names and (last_refused or full):
            index = int(picks[i] * len(names))
            names[index], names[-1] = names[-1], names[index]
            change = host.remove(names.pop())
            removed += 1
            last_refused = False
        else:
            try:
                change = host.deploy(specs[i])
            except PlacementError:
                refused += 1
                last_refused = True
                continue
            names.append(specs[i].name)
            deployed += 1
            last_refused = False
        repins += len(change.repinned)
    elapsed = time.perf_counter() - start
    host.check_invariants()
    return {
        "ops": ops,
        "seconds": round(elapsed, 3),
        "ops_per_second": round(ops / elapsed),
        "deployed": deployed,
        "removed": removed,
        "refused": refused,
        "repinned_vms": repins,
        "vms_at_end": len(host),
        "free_cpus_at_end": host.free_cpu_count,
        "mean_cpu_allocated": round(1 - cpu_sum / ops / host.usable_cpu_count, 3),
        "mean_memory_allocated": round(1 - mem_sum / ops / host.memory_usable_mib, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    core = pin_to_one_core()
    result = run(args.ops, args.seed)
    result["core"] = core if core is not None else -1
    result["target_ops_per_second"] = 20_000
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
