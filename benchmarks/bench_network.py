"""Networked guests (issue 13): create to address and to the first TCP answer,
cold and from the warm pool, and the console's round trip.

    python -m benchmarks.bench_network [--rounds 3] [--network lab|own]   # as root

Everything runs in the network lab (tests/netlab.py, imported from the tests as
bench_pool imports the test guest): a private libvirtd in a network namespace,
so that the only traffic leaves for loopback or into that namespace. The agent
runs in this process on the lab's libvirtd and boots the demo guest of `pinfold
up` (TCG, 1 vCPU, 128 MiB, Debian's cloud kernel, the busybox initramfs with
`net shell`): DHCP, a page on port 8080, a shell on the serial console.

- network `lab` (default): an isolated lab network with dnsmasq's no-ping, as
  the tests use; `own`: the agent's own NAT network as `pinfold up` makes it.
- cold: `Agent.create` until `Agent.addresses` shows the lease (the agent's own
  path: libvirt's lease for the running domain), then until GET / answers from
  inside the namespace (a fresh connection each try, every 50 ms).
- pool: a member booted, took its lease and served its page, then was suspended;
  `Agent.create` hands it out, the same two clocks.
- console: `echo pinfold-$((40+2))-console` typed into the guest's shell over
  the agent's WebSocket, and over the controller's proxy to an agent (a local
  controller with one host on the lab), until the output comes back; median of
  ROUND_TRIPS after the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agent.guest import SHELL_MARKER
from tests.agent.test_console_lab import ANSWER, COMMAND
from tests.conftest import I7
from tests.netlab import NetLab
from tests.servers import serving

from benchmarks.common import poll
from pinfold.agent.api import create_app
from pinfold.agent.drivers.libvirt import LibvirtDriver
from pinfold.agent.networks import OwnNetwork
from pinfold.agent.pools import PoolSpec
from pinfold.agent.service import Agent, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.cli.demo_guest import NET_PORT, demo_guest
from pinfold.topology import Topology

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUND_TRIPS = 20
NETWORK = "benchnet"
ROOT = Path(__file__).resolve().parents[1]


def page(lab: NetLab, address: str) -> str | None:
    """The guest's page, or None while it does not answer yet."""
    try:
        return lab.http_get(address, NET_PORT, timeout_s=1.0)
    except OSError:
        return None


def address_of(agent: Agent, name: str) -> str:
    """The VM's first address, once the agent has learnt it."""
    return poll(lambda: next(iter(agent.addresses(name)), None))


def answering(lab: NetLab, address: str) -> None:
    """Once GET / on the guest answers, from inside the lab's namespace."""
    poll(lambda: page(lab, address), every_s=0.05)


def timed_create(agent: Agent, lab: NetLab, name: str) -> tuple[float, float]:
    """Seconds from `create` to the address, and to the first page."""
    started = time.perf_counter()
    agent.create(VMRequest(name, 1, 128, 2.0))
    address = address_of(agent, name)
    to_address = time.perf_counter() - started
    answering(lab, address)
    return to_address, time.perf_counter() - started


def pool_member(agent: Agent) -> Any:
    return next(vm for vm in agent.vms.values() if vm.pool)


def round_trip_s(ws: Any) -> float:
    started = time.perf_counter()
    ws.send(COMMAND)
    seen = b""
    while ANSWER not in seen:
        seen += ws.recv(timeout=30)
    return time.perf_counter() - started


def round_trips(ws: Any) -> dict[str, float]:
    first = round_trip_s(ws)
    times = [round_trip_s(ws) for _ in range(ROUND_TRIPS)]
    return {
        "first_ms": round(first * 1000, 1),
        "median_ms": round(statistics.median(times) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
    }


def wait_for_shell(log: Callable[[], bytes]) -> None:
    poll(lambda: SHELL_MARKER.encode() in log(), every_s=0.1)


def create_to_answer(lab: NetLab, tmp: Path, settings: AgentSettings, rounds: int) -> dict[str, Any]:
    pool = PoolSpec(name="bench", size=1, vcpus=1, memory_mib=128, ratio=2.0, warmup_s=3600)
    driver = LibvirtDriver(lab.uri)
    agent = Agent.open(Topology.discover(), driver, Store(tmp / "agent.db"), replace_pools(settings, (pool,)))
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    try:
        for round_ in range(rounds):
            cold.append(timed_create(agent, lab, f"cold-{round_}"))
            agent.delete(f"cold-{round_}")
            agent.tend_pools(0.0)  # a member boots, takes its lease, serves its page ...
            member = pool_member(agent).domain  # a pool member is no user VM: ask the hypervisor
            answering(lab, poll(lambda: next(iter(driver.addresses(member)), None)))  # noqa: B023
            agent.tend_pools(pool.warmup_s)  # ... and waits suspended
            warm.append(timed_create(agent, lab, f"warm-{round_}"))
            agent.delete(f"warm-{round_}")
        return {
            "cold_address_s": [round(a, 2) for a, _ in cold],
            "cold_tcp_s": [round(t, 2) for _, t in cold],
            "pool_address_s": [round(a, 3) for a, _ in warm],
            "pool_tcp_s": [round(t, 3) for _, t in warm],
        }
    finally:
        for vm in list(agent.vms.values()):
            agent._delete(vm)  # pool members too (as bench_pool)
        agent.close()
        driver.close()


def replace_pools(settings: AgentSettings, pools: tuple[PoolSpec, ...]) -> AgentSettings:
    from dataclasses import replace

    return replace(settings, pools=pools)


def console_through_agent(lab: NetLab, tmp: Path, settings: AgentSettings) -> dict[str, float]:
    from websockets.sync.client import connect

    driver = LibvirtDriver(lab.uri)
    agent = Agent.open(Topology.discover(), driver, Store(tmp / "console.db"), settings)
    try:
        vm = agent.create(VMRequest("shell-a", 1, 128, 2.0))
        log = settings.serial_dir / f"{vm.domain}.log"  # type: ignore[operator]
        wait_for_shell(lambda: log.read_bytes() if log.exists() else b"")
        with serving(create_app(agent, TOKEN)) as url:
            ws_url = f"{url.replace('http://', 'ws://')}/api/v1/vms/shell-a/console?mode=write"
            with connect(ws_url, additional_headers=AUTH, open_timeout=30) as ws:
                return round_trips(ws)
    finally:
        if agent.find("shell-a") is not None:
            agent.delete("shell-a")
        agent.close()
        driver.close()


def console_through_controller(lab: NetLab, tmp: Path, settings: AgentSettings) -> dict[str, float]:
    from tests.controller.cluster import ADMIN_AUTH, LocalCluster
    from websockets.sync.client import connect

    driver = LibvirtDriver(lab.uri)
    cluster = LocalCluster(tmp, f"sqlite:///{tmp / 'controller.db'}", Topology.load(I7))
    try:
        cluster.add_host("lab", driver=driver, settings=settings, topology=Topology.discover())
        body = {"name": "shell-c", "vcpus": 1, "memory_mib": 128, "ratio": 2.0}
        created = cluster.http.post("/api/v1/vms", json=body)
        assert created.status_code == 201, created.text
        wait_for_shell(lambda: cluster.http.get("/api/v1/vms/shell-c/console/log").content)
        ws_url = f"{cluster.url.replace('http://', 'ws://')}/api/v1/vms/shell-c/console?mode=write"
        with connect(ws_url, additional_headers=ADMIN_AUTH, open_timeout=30) as ws:
            result = round_trips(ws)
        cluster.http.delete("/api/v1/vms/shell-c")
        return result
    finally:
        cluster.close()
        driver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--network", choices=("lab", "own"), default="lab")
    args = parser.parse_args()
    lab = NetLab.start()
    try:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            guest = demo_guest(tmp, ROOT / ".cache" / "guest")  # the tests' kernel (scripts/guest-kernel)
            own = None
            if args.network == "lab":
                lab.define_network(NETWORK, "10.213.9")
            else:
                import ipaddress

                own = OwnNetwork(NETWORK, ipaddress.IPv4Network("10.213.9.0/24"))
            (tmp / "consoles").mkdir()
            settings = AgentSettings(
                domain_type="qemu", kernel=guest.kernel, initrd=guest.initrd, cmdline=guest.cmdline,
                serial_dir=tmp / "consoles", critical_size=0, reserved_memory_mib=0,
                default_network=NETWORK, own_network=own,
            )  # fmt: skip
            result: dict[str, Any] = {"rounds": args.rounds, "network": args.network}
            result.update(create_to_answer(lab, tmp, settings, args.rounds))
            for key in ("cold_address_s", "cold_tcp_s", "pool_address_s", "pool_tcp_s"):
                result[key.replace("_s", "_median_s")] = round(statistics.median(result[key]), 3)
            result["console_agent"] = console_through_agent(lab, tmp, settings)
            result["console_controller"] = console_through_controller(lab, tmp, settings)
            print(json.dumps(result, indent=1))
    finally:
        lab.close()


if __name__ == "__main__":
    main()
