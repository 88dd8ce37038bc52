"""Warm pool against cold create: time until a real guest runs (issue 4).

    python -m benchmarks.bench_pool [--rounds 3]     # as root, libvirt up (scripts/libvirt-up)

Cold: `Agent.create` defines and starts a QEMU guest (TCG, 1 vCPU, 128 MiB,
Debian's cloud kernel and the tests' busybox initramfs); the clock stops when
the guest prints its boot marker on the serial console. Pool: a member has
booted and been suspended beforehand; `Agent.create` hands it out (rename,
resume) and the clock stops at the first tick the guest prints after the call
(the guest prints one every 20 ms, so that is the resolution).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.agent.guest import MARKER, TICK, build_initramfs

from pinfold.agent.drivers.libvirt import LibvirtDriver
from pinfold.agent.pools import PoolSpec
from pinfold.agent.service import Agent, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.topology import Topology

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the guest did not answer")
        time.sleep(0.005)


def guest_files(tmp: Path) -> tuple[Path, Path]:
    kernel = Path(subprocess.run([str(ROOT / "scripts" / "guest-kernel")], capture_output=True, text=True,
                                 check=True).stdout.split()[-1])  # fmt: skip
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("busybox is missing: run scripts/libvirt-up")
    release = kernel.name.removeprefix("vmlinuz-")
    modules = kernel.parent.parent / "lib" / "modules" / release
    return kernel, build_initramfs(Path(busybox), tmp / "initramfs.cpio", modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        kernel, initrd = guest_files(tmp)
        pool = PoolSpec(name="bench", size=1, vcpus=1, memory_mib=128, ratio=2.0, warmup_s=3600)
        settings = AgentSettings(
            domain_type="qemu", kernel=kernel, initrd=initrd, cmdline="console=ttyS0 tick", serial_dir=tmp,
            pools=(pool,),
        )  # fmt: skip
        agent = Agent.open(
            Topology.discover(), LibvirtDriver("qemu:///system"), Store(tmp / "agent.db"), settings
        )

        def printed(domain: str, text: str, offset: int = 0) -> Callable[[], bool]:
            log = tmp / f"{domain}.log"
            return lambda: log.exists() and text in log.read_text(errors="replace")[offset:]

        cold: list[float] = []
        warm: list[float] = []
        returned: list[float] = []  # when the hand-out call returned
        try:
            for round_ in range(args.rounds):
                started = time.perf_counter()
                vm = agent.create(VMRequest(f"pinfold-bench-cold-{round_}", 1, 128, 1.0))
                wait_for(printed(vm.domain, MARKER))
                cold.append(time.perf_counter() - started)
                agent.delete(vm.spec.name)

                agent.tend_pools(0.0)  # a member boots ...
                member = next(vm for vm in agent.vms.values() if vm.pool)
                wait_for(printed(member.domain, MARKER))
                agent.tend_pools(pool.warmup_s)  # ... and waits suspended
                time.sleep(0.5)
                before = (tmp / f"{member.domain}.log").stat().st_size
                started = time.perf_counter()
                vm = agent.create(VMRequest(f"pinfold-bench-warm-{round_}", 1, 128, 2.0))
                assert vm.domain == member.domain, "not handed out from the pool"
                returned.append(time.perf_counter() - started)
                wait_for(printed(vm.domain, TICK, before))
                warm.append(time.perf_counter() - started)
                agent.delete(vm.spec.name)
        finally:
            for vm in list(agent.vms.values()):
                agent._delete(vm)
        result = {
            "rounds": args.rounds,
            "cold_s": [round(t, 3) for t in cold],
            "pool_s": [round(t, 3) for t in warm],
            "cold_median_s": round(statistics.median(cold), 3),
            "pool_median_s": round(statistics.median(warm), 3),
            "pool_call_s": [round(t, 3) for t in returned],
            "speedup": round(statistics.median(cold) / statistics.median(warm), 1),
        }
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
