"""Controller benchmarks (issue 5).

    python -m benchmarks.bench_controller schedule [--hosts 10000] [--vms 1000]
    python -m benchmarks.bench_controller e2e [--agents 20] [--vms 1000] [--clients 8]
        [--database-url URL | --postgres-server URL]
    python -m benchmarks.bench_controller bulk [--agents 20] [--vms 1000] [--database-url URL]

schedule: scheduling latency inside the controller with N registered hosts
(EPYC 7662-exp, SQLite file, pinned to one core): each create ranks every
`up` host with `progress`, reserves on the best under the host's lock
(replaying its VMs through the allocator), and records the VM and an event;
the agent is a stand-in that accepts at once, so only the controller's own
work is timed. Registration time is reported too.

e2e: end-to-end creates through the REST API: a `pinfold controller` process
and N `pinfold agent --driver sim` processes on loopback (EPYC 7662-exp
topology), C client threads posting creates, then deleting the same VMs;
throughput and p50/p99 latency of each as the clients see them. Everything
shares this machine's cores. `--postgres-server URL`: the controller on a
fresh PostgreSQL database made on that server for the run.

bulk: one bulk create of N VMs (issue 16) on the same kind of cluster, timed
until its answer (every VM running on its agent), then the same VMs one by one
on a fresh cluster: the hosts each VM got are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
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

    def create_many(self, requests: list[Any]) -> list[dict[str, Any]]:
        return [{"pinning": []} for _ in requests]


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


ADMIN, AGENT_TOKEN = "bench-admin-token-0123456789", "bench-agent-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
#: the controller's port, its agents' the next ones (another port: two benchmarks side by side)
BASE_PORT = int(os.environ.get("PINFOLD_BENCH_PORT", "18400"))


@contextlib.contextmanager
def cluster(agents: int, database_url: str | None = None) -> Iterator[str]:
    """A `pinfold controller` process and `agents` sim agents on loopback, all
    registered and up; the controller's URL. Everything stops at the end."""
    controller_url = f"http://127.0.0.1:{BASE_PORT}"
    env = dict(os.environ, PINFOLD_CONTROLLER_ADMIN_TOKEN=ADMIN, PINFOLD_CONTROLLER_AGENT_TOKEN=AGENT_TOKEN,
               PINFOLD_AGENT_ENROLMENT_TOKEN=AGENT_TOKEN, PINFOLD_CONTROLLER_HEARTBEAT_PERIOD_S="5",
               PINFOLD_AGENT_MONITOR_PERIOD_S="5")  # fmt: skip
    python = [sys.executable, "-m", "pinfold"]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            database = ["--database-url", database_url] if database_url else []
            command = [*python, "controller", "--data-dir", f"{tmp}/controller", "--port", str(BASE_PORT)]
            processes.append(subprocess.Popen([*command, *database], env=env, stdout=subprocess.DEVNULL))
            wait_for("the controller", lambda: httpx.get(f"{controller_url}/healthz").status_code == 200)
            for i in range(agents):
                command = [*python, "agent", "--driver", "sim", "--topology", str(EPYC_EXP)]
                command += ["--data-dir", f"{tmp}/a{i}", "--port", str(BASE_PORT + 1 + i)]
                command += ["--host-id", f"h{i:02d}", "--controller-url", controller_url]
                processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))

            def all_up() -> bool:
                hosts = httpx.get(f"{controller_url}/api/v1/hosts", headers=AUTH).json()
                return sum(1 for h in hosts if h["state"] == "up") == agents

            wait_for("the agents to register", all_up, timeout_s=600)
            yield controller_url
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)


def end_to_end(agents: int, vms: int, clients: int, database_url: str | None = None) -> dict[str, Any]:
    """`vms` creates from `clients` threads, then the same VMs deleted the
    same way; each phase's throughput and latency as the clients see them."""
    with cluster(agents, database_url) as controller_url:
        creates = _phase(controller_url, clients, vms, _create)
        deletes = _phase(controller_url, clients, vms, _delete)
    return {
        "database": "postgresql" if database_url else "sqlite",
        "agents": agents,
        "clients": clients,
        "vms": vms,
        **creates.summary("create", "created"),
        **deletes.summary("delete", "deleted"),
    }


def _create(http: httpx.Client, i: int) -> bool:
    body = {"name": f"vm{i}", "vcpus": (1, 2, 4)[i % 3], "memory_mib": 2048, "ratio": LEVELS[i % 3]}
    response = http.post("/api/v1/vms", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"{response.status_code} {response.text[:120]}")
    return True


def _delete(http: httpx.Client, i: int) -> bool:
    response = http.delete(f"/api/v1/vms/vm{i}")
    if response.status_code != 204:
        raise RuntimeError(f"{response.status_code} {response.text[:120]}")
    return True


class _Timed:
    """One phase's latencies (of the requests that succeeded), failures and wall time."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.wall = 0.0

    def summary(self, verb: str, done: str) -> dict[str, Any]:
        ok = self.latencies or [float("nan")]
        return {
            done: len(self.latencies),
            f"{verb}_failed": len(self.failures),
            f"{verb}_first_failures": self.failures[:3],
            f"{verb}_wall_s": round(self.wall, 2),
            f"{verb}s_per_s": round(len(self.latencies) / self.wall, 1),
            f"{verb}_p50_ms": round(median(ok) * 1000, 1),
            f"{verb}_p99_ms": round(percentile(ok, 0.99) * 1000, 1),
        }


def _phase(url: str, clients: int, vms: int, one: Any) -> _Timed:
    """`one(http, i)` for i in range(vms), from `clients` threads each with
    its own kept-alive connection; a request that raises is a failure."""
    timed = _Timed()
    lock = threading.Lock()
    numbers = iter(range(vms))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120, headers=AUTH) as http:
            while True:
                with lock:
                    i = next(numbers, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    one(http, i)
                except (RuntimeError, httpx.HTTPError) as error:
                    with lock:
                        timed.failures.append(str(error))
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    timed.latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    timed.wall = time.perf_counter() - started
    return timed


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `server_url`, dropped
    at the end (each run starts from nothing, as the tests' databases do)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"pinfold_bench_{uuid.uuid4().hex[:12]}"
    quoted = admin.dialect.identifier_preparer.quote_identifier(name)
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {quoted}")
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        admin.dispose()


def bulk(agents: int, vms: int, database_url: str | None = None, compare: bool = True) -> dict[str, Any]:
    """One bulk create of `vms` VMs, timed until its answer (each VM running on
    its agent: the controller answers once the agents have created them, and
    the directory is read to check); then the same VMs one by one on a fresh
    cluster, to compare the hosts each VM landed on."""
    size = {"vcpus": 2, "memory_mib": 2048, "ratio": 1.0}
    with cluster(agents, database_url) as url, httpx.Client(base_url=url, timeout=600, headers=AUTH) as http:
        started = time.perf_counter()
        response = http.post("/api/v1/vms", json={"name": "vm{n}", "count": vms, **size})
        wall = time.perf_counter() - started
        answer = response.json()
        listed = http.get("/api/v1/vms").json()
        running = sum(1 for vm in listed if vm["state"] == "running")
        in_bulk = {vm["name"]: vm["host"] for vm in listed}
    timed = {"status": response.status_code, "running": running, "bulk_s": round(wall, 2)}
    if not compare:
        return {"agents": agents, "vms": vms, **timed, "hosts_used_bulk": len(set(in_bulk.values()))}
    with cluster(agents, database_url) as url, httpx.Client(base_url=url, timeout=120, headers=AUTH) as http:
        names = [f"vm{n}" for n in range(vms)]
        started = time.perf_counter()
        singles = [http.post("/api/v1/vms", json={"name": name, **size}) for name in names]
        one_by_one_s = time.perf_counter() - started
        assert all(r.status_code in (201, 409) for r in singles), [
            r.text for r in singles if r.status_code >= 400
        ]
        one_by_one = {vm["name"]: vm["host"] for vm in http.get("/api/v1/vms").json()}
    return {
        "database": "postgresql" if database_url else "sqlite",
        "agents": agents,
        "vms": vms,
        "status": response.status_code,
        "created": answer.get("created"),
        "refused": answer.get("refused"),
        "running": running,
        "bulk_s": round(wall, 2),
        "vms_per_s": round(running / wall, 1),
        "one_by_one_s": round(one_by_one_s, 2),
        "hosts_used_bulk": len(set(in_bulk.values())),
        "hosts_used_one_by_one": len(set(one_by_one.values())),
        "vms_per_host_bulk": per_host(in_bulk),
        "vms_per_host_one_by_one": per_host(one_by_one),
        # the agents register in a different order on each cluster: equal ranks break ties differently
        "same_host_for_each_vm": in_bulk == one_by_one,
    }


def per_host(placements: dict[str, str]) -> list[int]:
    """How many VMs each used host got, most first (comparable across clusters)."""
    counts: dict[str, int] = {}
    for host in placements.values():
        counts[host] = counts.get(host, 0) + 1
    return sorted(counts.values(), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["schedule", "e2e", "bulk"])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-compare", action="store_true", help="bulk: skip the one-by-one creates")
    parser.add_argument(
        "--database-url", help="e2e: the controller's database (default: SQLite in a temp dir)"
    )
    parser.add_argument(
        "--postgres-server",
        help="e2e: a PostgreSQL URL on whose server a fresh database is made for the run, and dropped",
    )
    args = parser.parse_args()
    if args.postgres_server and args.mode == "e2e":
        with fresh_database(args.postgres_server) as url:
            print(json.dumps(end_to_end(args.agents, args.vms, args.clients, url), indent=1))
        return
    if args.mode == "schedule":
        result = schedule(args.hosts, args.vms)
    elif args.mode == "bulk":
        result = bulk(args.agents, args.vms, args.database_url, not args.no_compare)
    else:
        result = end_to_end(args.agents, args.vms, args.clients, args.database_url)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
