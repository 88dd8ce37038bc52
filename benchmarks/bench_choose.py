"""Choosing a host among 10,000 with the `progress` policy.

Target (issue 2): median under 1 ms per choice.

    python -m benchmarks.bench_choose [--hosts N] [--choices N] [--policy NAME] [--seed S]

Hosts are topology_EPYC-7662-exp.json machines, each given a random load of
1.0/2.0/3.0 VMs (0 to ~90% of its CPUs) so that the columns differ and some
hosts cannot take the candidate. Each timed call is one `Cluster.choose` on a
random request; the request is then deployed on the chosen host, so the state
moves between calls as it does in a controller. Reports median, p90 and p99.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from benchmarks.common import EPYC_EXP, median, percentile, pin_to_one_core
from pinfold.placement import POLICIES, Cluster, HostAllocator, PlacementError, VMSpec
from pinfold.topology import Topology

VCPUS = [1, 1, 1, 2, 2, 4, 8, 16]
RATIOS = [1.0, 2.0, 3.0]


def random_spec(rng: random.Random, name: str) -> VMSpec:
    vcpus = rng.choice(VCPUS)
    return VMSpec(name, vcpus, vcpus * rng.choice([1024, 2048, 4096]), rng.choice(RATIOS))


def build_cluster(hosts: int, rng: random.Random) -> Cluster:
    topology = Topology.load(EPYC_EXP)
    cluster = Cluster()
    counter = 0
    for h in range(hosts):
        allocator = HostAllocator(topology)
        target = rng.random() * 0.9 * allocator.usable_cpu_count
        while allocator.usable_cpu_count - allocator.free_cpu_count < target:
            counter += 1
            try:
                allocator.deploy(random_spec(rng, f"pre{counter}"))
            except PlacementError:
                break
        cluster.add_host(f"host{h:05d}", allocator)
    return cluster


def run(hosts: int, choices: int, policy: str, seed: int) -> dict[str, float | str]:
    rng = random.Random(seed)
    setup_start = time.perf_counter()
    cluster = build_cluster(hosts, rng)
    setup = time.perf_counter() - setup_start
    timings: list[float] = []
    placed = 0
    for i in range(choices):
        spec = random_spec(rng, f"req{i}")
        start = time.perf_counter()
        decision = cluster.choose(spec, policy=policy)
        timings.append(time.perf_counter() - start)
        if decision.host is not None:
            cluster.deploy_on(decision.host, spec)
            placed += 1
    ms = [t * 1000 for t in timings]
    return {
        "hosts": hosts,
        "policy": policy,
        "choices": choices,
        "placed": placed,
        "setup_seconds": round(setup, 1),
        "median_ms": round(median(ms), 4),
        "p90_ms": round(percentile(ms, 0.90), 4),
        "p99_ms": round(percentile(ms, 0.99), 4),
        "max_ms": round(max(ms), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--choices", type=int, default=2_000)
    parser.add_argument("--policy", default="progress", choices=list(POLICIES))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    core = pin_to_one_core()
    result = run(args.hosts, args.choices, args.policy, args.seed)
    result["core"] = core if core is not None else -1
    result["target_median_ms"] = 1.0
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
