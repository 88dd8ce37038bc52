"""Controller benchmarks (issue 5).

    python -m benchmarks.bench_controller schedule [--hosts 10000] [--vms 1000]
    python -m benchmarks.bench_controller e2e [--agents 20] [--vms 1000] [--clients 8] [--database-url URL]
    python -m benchmarks.bench_controller bulk [--agents 20] [--vms 1000] [--database-url URL] [--runs N]
    python -m benchmarks.bench_controller register [--hosts 10000] [--clients 8] [--database-url URL]
        [--whole-topology]
    python -m benchmarks.bench_controller restart [--hosts 10000] [--runs 5] [--hosts-database FILE]
    python -m benchmarks.bench_controller heartbeat [--hosts 1000] [--beats 5] [--clients 8]
        [--database-url URL]

schedule: scheduling latency inside the controller with N registered hosts
(EPYC 7662-exp, SQLite file, pinned to one core): each create ranks every
`up` host with `progress`, reserves on the best under the host's lock
(replaying its VMs through the allocator), and records the VM and an event;
the agent is a stand-in that accepts at once, so only the controller's own
work is timed. Registration time is reported too.

e2e: end-to-end creates through the REST API: a `pinfold controller` process
and N `pinfold agent --driver sim` processes on loopback (EPYC 7662-exp
topology), C client threads posting creates, then deleting the same VMs;
throughput and p50/p99 latency of each as the clients see them, and the
controller's, the agents' and the machine's CPU a request, and the time the
hypervisor stole from the machine meanwhile. Everything shares this
machine's cores. `--database-url` of a PostgreSQL server: the
controller on a fresh database made on that server for the run.

bulk: one bulk create of N VMs (issue 16) on the same kind of cluster, timed
until its answer (every VM running on its agent), then the same VMs one by one
on a fresh cluster: the hosts each VM got are compared.

register: N host registrations through the REST API from C client threads,
with the enrolment token, to a fresh controller process, as EPYC agents send
them: by the topology's digest, and the 157 KB document after a 409 `unknown
topology` (the first host of the model); `--whole-topology`: the document in
every registration, as agents did before digests. Each says it beats once an
hour: none beats, and none is to be marked down during the run.

restart: exec of `pinfold controller` to its first 201 on a create, with N
hosts in its SQLite database (copied afresh for each run).

heartbeat: N hosts registered through the REST API (as `register`), then
`--beats` heartbeats from each, sent by C client threads with each host's own
credential: an idle EPYC host's beat as its agent sends it (SlackVM status,
vNodes, a monitor sample with each of its CPUs' share). The rate the
controller keeps, against what N hosts beating every 10 s (the default
period) would send.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import make_url

from benchmarks.common import EPYC_EXP, median, percentile, pin_to_one_core, process_cpu_s
from pinfold.agent.core import AgentSettings
from pinfold.agent.drivers.sim import SimDriver
from pinfold.agent.monitor import HostSample
from pinfold.agent.registration import heartbeat_document
from pinfold.agent.service import Agent
from pinfold.agent.store import Store
from pinfold.controller.database import connect, create
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore
from pinfold.model.defaults import HEARTBEAT_PERIOD_S
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


def wait_for(what: str, check: Any, timeout_s: float = 300) -> None:
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
#: the controller's port, the agents' after it (PINFOLD_BENCH_PORT: two benchmarks at once)
BASE_PORT = int(os.environ.get("PINFOLD_BENCH_PORT", "18400"))


@contextlib.contextmanager
def controller_process(data_dir: str, database_url: str | None = None) -> Iterator[str]:
    """A `pinfold controller` process on loopback, up; its URL. Stopped at the end."""
    url = f"http://127.0.0.1:{BASE_PORT}"
    database = ["--database-url", database_url] if database_url else []
    command = [
        sys.executable,
        "-m",
        "pinfold",
        "controller",
        "--data-dir",
        data_dir,
        "--port",
        str(BASE_PORT),
    ]
    process = subprocess.Popen([*command, *database], env=bench_env(), stdout=subprocess.DEVNULL)
    try:
        wait_for("the controller", lambda: httpx.get(f"{url}/healthz").status_code == 200)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


@contextlib.contextmanager
def fresh_controller(database_url: str | None) -> Iterator[str]:
    """A `controller_process` with a data directory and a database of its own; its URL."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        fresh_database(database_url) as url_of_db,
        controller_process(f"{tmp}/controller", url_of_db) as url,
    ):
        yield url


def bench_env() -> dict[str, str]:
    return dict(os.environ, PINFOLD_CONTROLLER_ADMIN_TOKEN=ADMIN, PINFOLD_CONTROLLER_AGENT_TOKEN=AGENT_TOKEN,
                PINFOLD_AGENT_ENROLMENT_TOKEN=AGENT_TOKEN, PINFOLD_CONTROLLER_HEARTBEAT_PERIOD_S="5",
                PINFOLD_AGENT_MONITOR_PERIOD_S="5")  # fmt: skip


#: a registration's fields but its host, address and topology (`registration_bodies` fills them).
#: The hosts never beat: with their period an hour, the down-check marks none of them down
#: during a run (it did after 15 s, writing while the registrations were timed).
REGISTRATION_FIELDS = {
    "host_id": "",
    "address": "",
    "critical_size": 6,
    "reserved_memory_mib": 0,
    "agent_token": AGENT_TOKEN,
    "heartbeat_period_s": 3600,
}


#: an agent's requests to its controller before it has a credential
ENROLMENT_HEADERS = {"Authorization": f"Bearer {AGENT_TOKEN}", "Content-Type": "application/json"}


class Registrations:
    """Host i's registration as an EPYC agent sends it: by the topology's
    digest, and the document after a 409 `unknown topology` (the first host of
    the model); `whole_topology`: the document every time, as agents did
    before digests (the digest is not computed then: this also runs against
    sources before digests)."""

    def __init__(self, whole_topology: bool = False) -> None:
        topology = compact_topology()
        self.whole_topology = whole_topology
        self.whole = registration_bodies({**REGISTRATION_FIELDS, "topology": topology})
        self.first = (
            self.whole
            if whole_topology
            else registration_bodies(
                {**REGISTRATION_FIELDS, "topology_digest": slackvm_json.digest(topology)}
            )
        )

    def post(self, http: httpx.Client, i: int) -> httpx.Response:
        """Register host i (with the enrolment token); its 200 answer, else RuntimeError."""
        response = http.post("/api/v1/hosts", content=self.first(i))
        if (
            not self.whole_topology
            and response.status_code == 409
            and response.json()["error"] == "unknown topology"
        ):
            response = http.post("/api/v1/hosts", content=self.whole(i))
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {response.text[:300]}")
        return response


def register(
    hosts: int, clients: int, database_url: str | None = None, whole_topology: bool = False
) -> dict[str, Any]:
    """`hosts` registrations through the REST API, as agents send them (the
    EPYC 7662-exp topology by its digest, the 157 KB document when the
    controller does not hold it; `whole_topology`: the document every time),
    with the enrolment token, from `clients` threads, to a fresh `pinfold
    controller` process: the wall time and each registration's latency as
    its client saw it (both requests, when there are two)."""
    registrations = Registrations(whole_topology)
    with fresh_controller(database_url) as url, cpu_spent() as spent:
        timed = _phase(url, clients, hosts, registrations.post, ENROLMENT_HEADERS)
    return {
        "database": "postgresql" if database_url else "sqlite",
        "hosts": hosts,
        "clients": clients,
        "topology": "whole" if whole_topology else "digest",
        "body_kib": round(len(registrations.whole(0)) / 1024),
        **timed.summary("register", "registered"),
        **spent.per(len(timed.latencies), "registration"),
    }


def heartbeat(hosts: int, beats: int, clients: int, database_url: str | None = None) -> dict[str, Any]:
    """`hosts` hosts enrolled through the REST API, then `beats` heartbeats
    from each (host i's beats spread over the run, never two at once), from
    `clients` threads: the rate and each beat's latency as its client saw it."""
    if hosts < clients:
        raise ValueError("--hosts at least --clients: one host's beats are never sent at once")
    body = idle_heartbeat()
    registrations = Registrations()
    credentials: dict[int, str] = {}

    def enrol(http: httpx.Client, i: int) -> None:
        credentials[i] = registrations.post(http, i).json()["credential"]

    def beat(http: httpx.Client, n: int) -> None:
        i = n % hosts
        response = http.post(
            f"/api/v1/hosts/h{i:05d}/heartbeat",
            content=body,
            headers={"Authorization": f"Bearer {credentials[i]}"},
        )
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {response.text[:300]}")

    with fresh_controller(database_url) as url:
        enrolled = _phase(url, clients, hosts, enrol, ENROLMENT_HEADERS)
        if enrolled.failures:
            raise RuntimeError(f"registration failed: {enrolled.failures[:3]}")
        with cpu_spent() as spent:
            timed = _phase(url, clients, hosts * beats, beat, {"Content-Type": "application/json"})
    summary = timed.summary("heartbeat", "beats")
    return {
        "database": "postgresql" if database_url else "sqlite",
        "hosts": hosts,
        "clients": clients,
        "body_kib": round(len(body) / 1024, 1),
        **summary,
        "hosts_at_default_period": round(summary["heartbeats_per_s"] * HEARTBEAT_PERIOD_S),
        **spent.per(summary["beats"], "beat"),
    }


class CpuSpent:
    """The CPU seconds spent over a block (`cpu_spent`): the controller's, its
    event loop's (its main thread: uvicorn reading requests, FastAPI routing
    and validating them, the answers written; the rest is its worker threads
    doing the work), the agents' and the whole machine's; and the time the
    hypervisor gave the machine's cores to other tenants (`stolen_s`: not the
    machine's own work, so not in `machine_s`; it tells a noisy sitting)."""

    controller_s = loop_s = agents_s = machine_s = stolen_s = 0.0
    agents = False

    def per(self, requests: int, what: str) -> dict[str, float]:
        """Each's milliseconds a request."""
        done = max(1, requests)
        spent = {"controller": self.controller_s, "controller_loop": self.loop_s}
        spent |= {"agents": self.agents_s} if self.agents else {}
        spent["machine"] = self.machine_s
        per = {f"{who}_cpu_ms_per_{what}": round(seconds / done * 1000, 2) for who, seconds in spent.items()}
        return per | {f"stolen_ms_per_{what}": round(self.stolen_s / done * 1000, 2)}


@contextlib.contextmanager
def cpu_spent() -> Iterator[CpuSpent]:
    """What the controller (this process's child running `pinfold controller`),
    the agents beside it (if any) and the machine spent over the block, in CPU
    seconds: a rate moves ±15-30 % between identical runs on this shared
    machine, the CPU a request much less."""
    children = psutil.Process().children()
    (controller,) = [p for p in children if "controller" in p.cmdline()]
    agents = [p for p in children if "agent" in p.cmdline()]
    spent = CpuSpent()
    spent.agents = bool(agents)
    before = (process_cpu_s(controller), main_thread_cpu_s(controller), _cpu_s(agents), *_machine_seconds())
    yield spent
    after = (process_cpu_s(controller), main_thread_cpu_s(controller), _cpu_s(agents), *_machine_seconds())
    spent.controller_s, spent.loop_s, spent.agents_s, spent.machine_s, spent.stolen_s = (
        b - a for a, b in zip(before, after, strict=True)
    )


def _cpu_s(processes: list[psutil.Process]) -> float:
    return sum(map(process_cpu_s, processes))


def main_thread_cpu_s(process: psutil.Process) -> float:
    """A process's main thread's CPU time so far (its id is the process's)."""
    return next(float(t.user_time + t.system_time) for t in process.threads() if t.id == process.pid)


def _machine_seconds() -> tuple[float, float]:
    """The machine's CPU time spent busy, every core summed, and the time
    stolen from it. Busy is neither idle, iowait nor steal (the hypervisor
    running other tenants: it counted as this machine's work before), nor
    guest time (Linux counts it in user already)."""
    times = psutil.cpu_times()
    stolen = float(getattr(times, "steal", 0.0))
    not_busy = times.idle + getattr(times, "iowait", 0.0) + stolen
    doubled = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return float(sum(times) - not_busy - doubled), stolen


def idle_heartbeat() -> bytes:
    """An idle EPYC 7662-exp host's heartbeat, made by the agent's own code:
    a sim agent's SlackVM status and vNodes and a monitor sample of that host
    (every CPU 5 % busy, no VM, no GPU)."""
    topology = Topology.load(EPYC_EXP)
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent.open(topology, SimDriver(), Store(Path(tmp) / "agent.db"), AgentSettings())
        try:
            beat = heartbeat_document(agent, None)
        finally:
            agent.store.close()
    sample = HostSample(
        time=0.0,
        cpu={cpu.cpu_id: 0.05 for cpu in topology.cpus},
        host_cpu=0.05,
        memory_total_mib=topology.memory_total_mib,
        memory_available_mib=topology.memory_total_mib * 0.95,
        vms={},
        vnodes={},
    )
    return json.dumps({**beat, "usage": sample.to_dict()}).encode()


def registration_bodies(fields: dict[str, Any]) -> Callable[[int], bytes]:
    """Host i's registration body, `fields` encoded once with its host id and address set."""
    head, _, tail = json.dumps(fields).encode().partition(b'"host_id": ""')

    def body(i: int) -> bytes:
        address = f"http://10.0.{i // 250}.{i % 250}:8099"
        return (
            head
            + f'"host_id": "h{i:05d}"'.encode()
            + tail.replace(b'"address": ""', f'"address": "{address}"'.encode(), 1)
        )

    return body


class StandInAgent(BaseHTTPRequestHandler):
    """An agent that makes every VM at once (the restart benchmark's hosts all point here)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        answer = json.dumps({"name": body.get("name", ""), "state": "running", "pinning": [0]}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def hosts_database(path: Path, hosts: int, agent_url: str) -> None:
    """A controller's SQLite database holding `hosts` EPYC hosts, all at
    `agent_url`, registered in-process (their heartbeats not due for a day)."""
    topology = compact_topology()
    store = ControllerStore(connect(f"sqlite:///{path}"))
    controller = Controller(store, lambda host: AcceptingAgent(), heartbeat_period_s=3600)  # type: ignore[arg-type,return-value]
    for i in range(hosts):
        controller.register(f"h{i:05d}", agent_url, topology, 6, 0, heartbeat_period_s=86400)
    store.engine.dispose()


def restart(hosts: int, runs: int, database: Path | None = None) -> dict[str, Any]:
    """From exec of `pinfold controller` to its first 201 on a create, with
    `hosts` hosts in its SQLite database (a copy, afresh for each run; made
    first, or `database` when given), every host pointing at one stand-in
    agent on loopback. Also the time to its first /healthz answer."""
    server = ThreadingHTTPServer(("127.0.0.1", BASE_PORT + 1), StandInAgent)  # the same in every database
    threading.Thread(target=server.serve_forever, daemon=True).start()
    agent_url = f"http://127.0.0.1:{server.server_address[1]}"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        source = database or Path(tmp) / "hosts.db"
        if database is None or not database.exists():
            hosts_database(source, hosts, agent_url)
        for run in range(runs):
            data_dir = Path(tmp) / f"run{run}"
            data_dir.mkdir()
            shutil.copy(source, data_dir / "controller.db")
            url = f"sqlite:///{data_dir / 'controller.db'}"
            command = [sys.executable, "-m", "pinfold", "controller", "--data-dir", str(data_dir),
                       "--port", str(BASE_PORT), "--database-url", url]  # fmt: skip
            body = {"name": f"first{run}", "vcpus": 1, "memory_mib": 512}
            started = time.perf_counter()
            process = subprocess.Popen(command, env=bench_env(), stdout=subprocess.DEVNULL)
            healthy = created = None
            try:
                with httpx.Client(timeout=30, headers=AUTH) as http:
                    while created is None:
                        with contextlib.suppress(httpx.TransportError):
                            if (
                                healthy is None
                                and http.get(f"http://127.0.0.1:{BASE_PORT}/healthz").is_success
                            ):
                                healthy = time.perf_counter() - started
                            if healthy is not None:
                                response = http.post(f"http://127.0.0.1:{BASE_PORT}/api/v1/vms", json=body)
                                assert response.status_code == 201, response.text[:300]
                                created = time.perf_counter() - started
                        if process.poll() is not None:
                            raise RuntimeError("the controller exited")
                        time.sleep(0.01)
            finally:
                process.terminate()
                process.wait(timeout=60)
            results.append({"healthz_s": round(healthy or 0, 2), "first_201_s": round(created, 2)})
    server.shutdown()
    return {
        "hosts": hosts,
        "runs": results,
        "first_201_median_s": median([r["first_201_s"] for r in results]),
        "load_average": os.getloadavg(),
    }


@contextlib.contextmanager
def cluster(agents: int, database_url: str | None = None) -> Iterator[str]:
    """A `pinfold controller` process and `agents` sim agents on loopback, all
    registered and up; the controller's URL. Everything stops at the end."""
    env = bench_env()
    python = [sys.executable, "-m", "pinfold"]
    processes: list[subprocess.Popen[bytes]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        controller_process(f"{tmp}/controller", database_url) as controller_url,
    ):
        try:
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
    with fresh_database(database_url) as url_of_db, cluster(agents, url_of_db) as controller_url:
        with cpu_spent() as creating:
            creates = _phase(controller_url, clients, vms, _create)
        with cpu_spent() as deleting:
            deletes = _phase(controller_url, clients, vms, _delete)
    return {
        "database": "postgresql" if database_url else "sqlite",
        "agents": agents,
        "clients": clients,
        "vms": vms,
        **creates.summary("create", "created"),
        **creating.per(len(creates.latencies), "create"),
        **deletes.summary("delete", "deleted"),
        **deleting.per(len(deletes.latencies), "delete"),
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


def _phase(url: str, clients: int, vms: int, one: Any, headers: dict[str, str] = AUTH) -> _Timed:
    """`one(http, i)` for i in range(vms), from `clients` threads each with
    its own kept-alive connection (sending `headers`); a request that raises
    is a failure. What this process holds is left out of its collector's
    passes meanwhile: a full pass over it (52-69 ms here) stopped every
    client thread at once, and was counted in the latency of each request
    in flight, the controller's as much as a pause of its own (issue 16)."""
    timed = _Timed()
    lock = threading.Lock()
    numbers = iter(range(vms))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
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
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        gc.unfreeze()
    timed.wall = time.perf_counter() - started
    return timed


@contextlib.contextmanager
def fresh_database(server_url: str | None) -> Iterator[str | None]:
    """`server_url` itself, or for PostgreSQL an empty database made on that
    server for one cluster and dropped after it (two clusters must not share
    their VMs)."""
    if not server_url or not server_url.startswith("postgresql"):
        yield server_url
        return
    admin = create(server_url).execution_options(isolation_level="AUTOCOMMIT")
    name = f"pinfold_bench_{uuid.uuid4().hex}"
    quoted = admin.dialect.identifier_preparer.quote_identifier(name)
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {quoted}")
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        admin.dispose()


def server_timing(header: str) -> dict[str, float]:
    """A Server-Timing header's steps, in seconds: `reserve;dur=12.5, ...`."""
    steps = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, duration = part.partition(";dur=")
        steps[name] = round(float(duration) / 1000, 3)
    return steps


def bulk(agents: int, vms: int, database_url: str | None = None, compare: bool = True) -> dict[str, Any]:
    """One bulk create of `vms` VMs, timed until its answer (each VM running on
    its agent: the controller answers once the agents have created them, and
    the directory is read to check), with the controller's own time for each
    step (its Server-Timing header); then the same VMs one by one on a fresh
    cluster, to compare the hosts each VM landed on. A PostgreSQL URL names
    the server: each cluster gets a fresh database on it."""
    size = {"vcpus": 2, "memory_mib": 2048, "ratio": 1.0}
    with (
        fresh_database(database_url) as url_of_db,
        cluster(agents, url_of_db) as url,
        httpx.Client(base_url=url, timeout=600, headers=AUTH) as http,
    ):
        started = time.perf_counter()
        response = http.post("/api/v1/vms", json={"name": "vm{n}", "count": vms, **size})
        wall = time.perf_counter() - started
        answer = response.json()
        listed = http.get("/api/v1/vms").json()
        running = sum(1 for vm in listed if vm["state"] == "running")
        in_bulk = {vm["name"]: vm["host"] for vm in listed}
    timed = {
        "database": "postgresql" if database_url else "sqlite",
        "status": response.status_code,
        "running": running,
        "bulk_s": round(wall, 2),
        "steps_s": server_timing(response.headers.get("server-timing", "")),
    }
    if not compare:
        return {"agents": agents, "vms": vms, **timed, "hosts_used_bulk": len(set(in_bulk.values()))}
    with (
        fresh_database(database_url) as url_of_db,
        cluster(agents, url_of_db) as url,
        httpx.Client(base_url=url, timeout=120, headers=AUTH) as http,
    ):
        names = [f"vm{n}" for n in range(vms)]
        started = time.perf_counter()
        singles = [http.post("/api/v1/vms", json={"name": name, **size}) for name in names]
        one_by_one_s = time.perf_counter() - started
        assert all(r.status_code in (201, 409) for r in singles), [
            r.text for r in singles if r.status_code >= 400
        ]
        one_by_one = {vm["name"]: vm["host"] for vm in http.get("/api/v1/vms").json()}
    return {
        "agents": agents,
        "vms": vms,
        **timed,
        "created": answer.get("created"),
        "refused": answer.get("refused"),
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
    parser.add_argument("mode", choices=["schedule", "e2e", "bulk", "register", "restart", "heartbeat"])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--beats", type=int, default=5, help="heartbeat: this many from each host")
    parser.add_argument("--no-compare", action="store_true", help="bulk: skip the one-by-one creates")
    parser.add_argument(
        "--whole-topology",
        action="store_true",
        help="register: the document in every registration, not its digest",
    )
    parser.add_argument("--runs", type=int, default=1, help="bulk, restart: this many runs, and their median")
    parser.add_argument(
        "--hosts-database", type=Path, help="restart: the SQLite file of hosts (made if missing, then reused)"
    )
    parser.add_argument(
        "--database-url",
        help="e2e, bulk, register, heartbeat: a PostgreSQL server's URL, on which each cluster gets a fresh "
        "database (default: SQLite in a temp dir)",
    )
    args = parser.parse_args()
    if args.mode == "schedule":
        result = schedule(args.hosts, args.vms)
    elif args.mode == "bulk":
        runs = [bulk(args.agents, args.vms, args.database_url, not args.no_compare) for _ in range(args.runs)]
        result = (
            runs[0]
            if args.runs == 1
            else {"runs": runs, "bulk_s_median": median([r["bulk_s"] for r in runs])}
        )
    elif args.mode == "restart":
        result = restart(args.hosts, args.runs, args.hosts_database)
    elif args.mode == "register":
        result = register(args.hosts, args.clients, args.database_url, args.whole_topology)
    elif args.mode == "heartbeat":
        hosts = args.hosts if "--hosts" in sys.argv else 1000
        result = heartbeat(hosts, args.beats, args.clients, args.database_url)
    else:
        result = end_to_end(args.agents, args.vms, args.clients, args.database_url)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
