"""Agent monitoring overhead: the CPU share of one core the agent process
spends sampling at a 1 s period (issue 4).

    python -m benchmarks.bench_agent sim [--vms 50] [--seconds 30]
    python -m benchmarks.bench_agent libvirt [--guests 2] [--seconds 30]   # real QEMU guests (TCG, diskless)

The monitor samples per-CPU times, memory, every VM's bulk stats and the GPUs
(NVML, then nvidia-smi) each period; the process's own CPU time over the run,
divided by the wall time, is the overhead. Nothing else runs in the process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.common import TOPOLOGIES, process_cpu_s
from pinfold.agent.drivers import Driver, SimDriver
from pinfold.agent.monitor import GpuProbe, Monitor
from pinfold.agent.service import Agent, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.topology import Topology


def measure(agent: Agent, driver: Driver, seconds: float, period: float) -> dict[str, float]:
    monitor = Monitor([c.cpu_id for c in agent.topology.cpus], agent.vnode_layout, driver.stats, GpuProbe())
    process = psutil.Process()
    monitor.sample()
    cpu_before = process_cpu_s(process)
    wall_before = time.perf_counter()
    samples = 0
    while time.perf_counter() - wall_before < seconds:
        monitor.sample()
        samples += 1
        time.sleep(period)
    wall = time.perf_counter() - wall_before
    used = process_cpu_s(process) - cpu_before
    seen = len(monitor.latest.vms) if monitor.latest else 0
    return {
        "samples": samples,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(used, 3),
        "share_of_one_core": round(used / wall, 5),
        "vms_seen": seen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("driver", choices=["sim", "libvirt"])
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument(
        "--guests", type=int, default=2, help="libvirt: guests to start (and delete) for the run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.driver == "sim":
            driver: Driver = SimDriver()
            topology = Topology.load(TOPOLOGIES / "topology_EPYC-7662-exp.json")
            agent = Agent.open(
                topology, driver, Store(Path(tmp) / "agent.db"), AgentSettings(domain_type="qemu")
            )
            for i in range(args.vms):
                agent.create(VMRequest(f"vm{i}", 2, 1024, (1.0, 2.0, 3.0)[i % 3]))
        else:
            from pinfold.agent.drivers.libvirt import LibvirtDriver

            driver = LibvirtDriver("qemu:///system")
            agent = Agent.open(
                Topology.discover(), driver, Store(Path(tmp) / "agent.db"), AgentSettings(domain_type="qemu")
            )
            for i in range(args.guests):
                agent.create(VMRequest(f"pinfold-bench-{i}", 1, 128, 2.0))
        try:
            result = measure(agent, driver, args.seconds, args.period)
        finally:
            for name in [n for n in agent.vms if n.startswith("pinfold-bench-")]:
                agent.delete(name)
        result["driver"] = args.driver
        result["vms"] = args.vms if args.driver == "sim" else args.guests
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
