"""kill -9 of the controller in the middle of a burst of creates: after a
restart on the same database, the clients' retries (the same requests: creates
are idempotent by name) end with every VM created exactly once, on one agent,
and the directory and the agents agreeing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.controller.cluster import ADMIN, ADMIN_AUTH, AGENT, PERIOD_S, Host, start_host
from tests.servers import free_port, wait_for_health

VMS = 48  # 1 vCPU each, a third per level: 30 of the 40 CPUs of five hosts
THREADS = 6


class ControllerProcess:
    def __init__(self, tmp_path: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.command = [sys.executable, "-m", "pinfold", "controller", "--port", str(port)]
        self.command += ["--data-dir", str(tmp_path / "controller")]
        self.env = dict(
            os.environ,
            PINFOLD_CONTROLLER_ADMIN_TOKEN=ADMIN,
            PINFOLD_CONTROLLER_AGENT_TOKEN=AGENT,
            PINFOLD_CONTROLLER_HEARTBEAT_PERIOD_S=str(PERIOD_S),
            PINFOLD_CONTROLLER_AGENT_TIMEOUT_S="2",
            PINFOLD_CONTROLLER_STALE_AFTER_S="3",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL)
        wait_for_health(self.url, self.process, "the controller")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def controller(tmp_path) -> Iterator[ControllerProcess]:
    process = ControllerProcess(tmp_path, free_port())
    process.start()
    yield process
    process.stop()


def test_kill_9_during_a_burst_of_creates_loses_and_doubles_nothing(tmp_path, controller, i7):
    hosts: list[Host] = [start_host(tmp_path, i7, f"h{i}", controller.url) for i in range(5)]
    bodies = {f"vm{i}": {"name": f"vm{i}", "vcpus": 1, "memory_mib": 256, "ratio": (1.0, 2.0, 3.0)[i % 3]}
              for i in range(VMS)}  # fmt: skip
    confirmed: dict[str, str] = {}  # name -> host, once the controller said running
    lock = threading.Lock()

    def create(name: str) -> None:
        with httpx.Client(base_url=controller.url, timeout=30) as http:
            try:
                response = http.post("/api/v1/vms", json=bodies[name], headers=ADMIN_AUTH)
            except httpx.HTTPError:
                return  # the controller died under this request: retried below
            if response.status_code in (200, 201) and response.json()["state"] == "running":
                with lock:
                    confirmed[name] = response.json()["host"]

    def burst(names: list[str]) -> None:
        for name in names:
            create(name)

    try:
        names = list(bodies)
        threads = [threading.Thread(target=burst, args=(names[i::THREADS],)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(confirmed) < VMS // 4:
            assert time.monotonic() < deadline, "the burst did not get going"
            time.sleep(0.01)
        controller.kill()
        killed_at = len(confirmed)
        for thread in threads:
            thread.join()
        assert killed_at < VMS, "the kill came too late to cut the burst"
        controller.start()
        # the clients retry whatever they were not told was running
        deadline = time.monotonic() + 90
        while len(confirmed) < VMS:
            assert time.monotonic() < deadline, f"still not running: {sorted(set(bodies) - set(confirmed))}"
            for name in sorted(set(bodies) - set(confirmed)):
                create(name)
            time.sleep(0.2)
        time.sleep(4 * PERIOD_S)  # heartbeats settle anything left

        listed = httpx.get(f"{controller.url}/api/v1/vms", headers=ADMIN_AUTH).json()
        directory = {vm["name"]: vm for vm in listed}
        assert set(directory) == set(bodies)
        assert {vm["state"] for vm in directory.values()} == {"running"}
        placements: dict[str, list[str]] = {}
        for host in hosts:
            for vm in host.agent.user_vms():
                placements.setdefault(vm.spec.name, []).append(host.host_id)
            host.agent.allocator.check_invariants()
        assert placements == {
            name: [vm["host"]] for name, vm in directory.items()
        }  # each once, where it says
        assert confirmed == {name: vm["host"] for name, vm in directory.items()}
    finally:
        for host in hosts:
            host.stop()
            host.agent.store.close()


BULK = 60  # 1 vCPU at level 3 each: fits the five hosts


def test_kill_9_during_a_bulk_create_loses_and_doubles_nothing(tmp_path, controller, i7):
    """The controller dies while its agents are creating a bulk's VMs; after a
    restart the same bulk request, sent again until it answers, ends with
    every VM once, on the host the directory says, and running."""
    hosts: list[Host] = [start_host(tmp_path, i7, f"h{i}", controller.url) for i in range(5)]
    body = {"name": "b{n}", "count": BULK, "vcpus": 1, "memory_mib": 128, "ratio": 3.0}

    def made() -> int:
        return sum(len(host.agent.user_vms()) for host in hosts)

    def send() -> httpx.Response | None:
        try:
            return httpx.post(f"{controller.url}/api/v1/vms", json=body, headers=ADMIN_AUTH, timeout=60)
        except httpx.HTTPError:
            return None  # the controller died under it

    answered: list[httpx.Response | None] = []
    try:
        sender = threading.Thread(target=lambda: answered.append(send()))
        sender.start()
        deadline = time.monotonic() + 60
        while made() < 1:
            assert time.monotonic() < deadline, "the bulk did not reach the agents"
            time.sleep(0.002)
        controller.kill()
        sender.join()
        # each agent gets its share in one call, which it finishes after the controller died:
        # what the kill cut is the controller's record of them (its answer never came)
        assert answered == [None], "the kill came too late to cut the bulk"
        controller.start()
        deadline = time.monotonic() + 90
        while True:  # the client retries the same bulk (stale reservations are finished)
            answer = send()
            if answer is not None and answer.status_code in (200, 201):
                vms = answer.json()["vms"]
                if all(vm["state"] == "running" for vm in vms):
                    break
            assert time.monotonic() < deadline, answer.text if answer is not None else "no answer"
            time.sleep(0.5)
        directory = {vm["name"]: vm["host"] for vm in vms}
        assert set(directory) == {f"b{n}" for n in range(BULK)}
        placements: dict[str, list[str]] = {}
        for host in hosts:
            for vm in host.agent.user_vms():
                placements.setdefault(vm.spec.name, []).append(host.host_id)
            host.agent.allocator.check_invariants()
        assert placements == {name: [host] for name, host in directory.items()}
    finally:
        for host in hosts:
            host.stop()
            host.agent.store.close()
