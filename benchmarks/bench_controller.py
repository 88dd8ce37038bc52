"""Controller benchmarks (issue 5).

    python -m benchmarks.bench_controller schedule [--hosts 10000] [--vms 1000]
    python -m benchmarks.bench_controller e2e [--agents 20] [--vms 1000] [--clients 8] [--database-url URL]

schedule: scheduling latency inside the controller with N registered hosts
(EPYC 7662-exp, SQLite file, pinned to one core): each create ranks every
`up` host with `progress`, reserves on the best under the host's lock
(replaying its VMs through the allocator), and records the VM and an event;
the agent is a stand-in that accepts at once, so only the controller's own
work is timed. Registration time is reported too.

e2e: end-to-end creates through the REST API: a `pinfold controller` process
and N `pinfold agent --driver sim` processes on loopback (EPYC 7662-exp
topology), C client threads posting creates; throughput and p50/p99 latency
as the clients see them. Everything shares this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import EPYC_EXP, median, percentile, pin_to_one_core
from pinfold.controller.database import connect
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore
from pinfold.topology import Topology, slackvm_json

LEVELS = (1.0, 2.0, 3.0)


class AcceptingAgent:
    """Stands in for an agent that creates at once (the schedule benchmark
    times the controller alone)."""

    def create(self, *args: Any) -> dict[str, Any]:
        return {"pinning": []}


def compact_topology() -> dict[str, Any]:
    return slackvm_json.to_dict(Topology.load(EPYC_EXP), distances=False)  # as agents register it


def schedule(hosts: int, vms: int) -> dict[str, Any]:
    core = pin_to_one_core()
    topology = compact_topology()
    agent = AcceptingAgent()
    with tempfile.TemporaryDirectory() as tmp:
        store = ControllerStore(connect(f"sqlite:///{Path(tmp) / 'controller.db'}"))
        controller = Controller(store, lambda host: agent, heartbeat_period_s=3600)  # type: ignore[arg-type,return-value]
        started = time.perf_counter()
        for i in range(hosts):
            controller.register(f"h{i:05d}", f"http://10.0.{i // 250}.{i % 250}:8099", topology, 6, 0)
        registration_s = time.perf_counter() - started
        from pinfold.model.vm import VMRequest

        latencies = []
        for i in range(vms):
            request = VMRequest(f"vm{i}", (1, 2, 4, 8)[i % 4], 2048 * (1 + i % 3), LEVELS[i % 3])
            started = time.perf_counter()
            controller.create(request)
            latencies.append(time.perf_counter() - started)
        choose = []
        eligible = controller.schedulable_hosts()
        for i in range(200):
            request = VMRequest(f"probe{i}", 2, 4096, LEVELS[i % 3])
            started = time.perf_counter()
            controller.scheduler.choose(request.spec, "progress", eligible)
            choose.append(time.perf_counter() - started)
        used = {vm.host_id for vm in store.vms()}
        store.engine.dispose()
    return {
        "hosts": hosts,
        "vms": vms,
        "core": core,
        "registration_s": round(registration_s, 1),
        "create_p50_ms": round(median(latencies) * 1000, 2),
        "create_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "choose_p50_ms": round(median(choose) * 1000, 2),
        "choose_p99_ms": round(percentile(choose, 0.99) * 1000, 2),
        "hosts_used": len(used),
    }


def wait_for(what: str, check: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def end_to_end(agents: int, vms: int, clients: int, database_url: str | None = None) -> dict[str, Any]:
    admin, agent_token = "bench-admin-token-0123456789", "bench-agent-token-0123456789"
    base = 18400
    controller_url = f"http://127.0.0.1:{base}"
    env = dict(os.environ, PINFOLD_CONTROLLER_ADMIN_TOKEN=admin, PINFOLD_CONTROLLER_AGENT_TOKEN=agent_token,
               PINFOLD_AGENT_ENROLMENT_TOKEN=agent_token, PINFOLD_CONTROLLER_HEARTBEAT_PERIOD_S="5",
               PINFOLD_AGENT_MONITOR_PERIOD_S="5")  # fmt: skip
    python = [sys.executable, "-m", "pinfold"]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            database = ["--database-url", database_url] if database_url else []
            processes.append(subprocess.Popen(
                [*python, "controller", "--data-dir", f"{tmp}/controller", "--port", str(base), *database],
                env=env, stdout=subprocess.DEVNULL,
            ))  # fmt: skip
            wait_for("the controller", lambda: httpx.get(f"{controller_url}/healthz").status_code == 200)
            for i in range(agents):
                command = [*python, "agent", "--driver", "sim", "--topology", str(EPYC_EXP)]
                command += [
                    "--data-dir",
                    f"{tmp}/a{i}",
                    "--port",
                    str(base + 1 + i),
                    "--host-id",
                    f"h{i:02d}",
                ]
                command += ["--controller-url", controller_url]
                processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))

            def all_up() -> bool:
                auth = {"Authorization": f"Bearer {admin}"}
                hosts = httpx.get(f"{controller_url}/api/v1/hosts", headers=auth).json()
                return sum(1 for h in hosts if h["state"] == "up") == agents

            wait_for("the agents to register", all_up)
            latencies: list[float] = []
            failures: list[str] = []
            lock = threading.Lock()
            names = iter(range(vms))

            def client() -> None:
                with httpx.Client(base_url=controller_url, timeout=120,
                                  headers={"Authorization": f"Bearer {admin}"}) as http:  # fmt: skip
                    while True:
                        with lock:
                            i = next(names, None)
                        if i is None:
                            return
                        body = {"name": f"vm{i}", "vcpus": (1, 2, 4)[i % 3], "memory_mib": 2048,
                                "ratio": LEVELS[i % 3]}  # fmt: skip
                        started = time.perf_counter()
                        response = http.post("/api/v1/vms", json=body)
                        elapsed = time.perf_counter() - started
                        with lock:
                            if response.status_code == 201:
                                latencies.append(elapsed)
                            else:
                                failures.append(f"{response.status_code} {response.text[:120]}")

            threads = [threading.Thread(target=client) for _ in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
    return {
        "database": "postgresql" if database_url else "sqlite",
        "agents": agents,
        "clients": clients,
        "vms": vms,
        "created": len(latencies),
        "failed": len(failures),
        "first_failures": failures[:3],
        "wall_s": round(wall, 2),
        "creates_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(median(latencies) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["schedule", "e2e"])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--database-url", help="e2e: the controller's database (default: SQLite in a temp dir)"
    )
    args = parser.parse_args()
    if args.mode == "schedule":
        result = schedule(args.hosts, args.vms)
    else:
        result = end_to_end(args.agents, args.vms, args.clients, args.database_url)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
