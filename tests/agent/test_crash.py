"""kill -9 of the real agent daemon (libvirt driver, real QEMU domains)
between any two steps of a create or a delete; after a restart nothing is
lost or leaked and no CPU is in two vNodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import libvirt_or_skip
from tests.servers import free_port

PREFIX = "pinfold-crash-"


class Daemon:
    def __init__(self, data_dir: Path, crash_at: str | None = None, args: Sequence[str] = ()) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.pop("PINFOLD_AGENT_CRASH_AT", None)
        if crash_at:
            env["PINFOLD_AGENT_CRASH_AT"] = crash_at
        command = [sys.executable, "-m", "pinfold", "agent", "--driver", "libvirt", "--domain-type", "qemu",
                   "--port", str(self.port), "--data-dir", str(data_dir), *args]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the agent did not come up: {self.process.communicate()[0]}")
            time.sleep(0.2)
        token = (data_dir / "agent.token").read_text().strip()
        self.auth = {"Authorization": f"Bearer {token}"}

    def create(self, name: str, ratio: float = 1.0, **extra: Any) -> httpx.Response:
        body = {"name": name, "vcpus": 1, "memory_mib": 64, "ratio": ratio, **extra}
        return httpx.post(self.url + "/api/v1/vms", json=body, headers=self.auth, timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.communicate(timeout=30)


def domains() -> set[str]:
    conn = libvirt_or_skip("qemu:///system")
    try:
        return {d.name() for d in conn.listAllDomains() if d.name().startswith(PREFIX)}  # type: ignore[attr-defined]
    finally:
        conn.close()  # type: ignore[attr-defined]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    libvirt_or_skip("qemu:///system")
    yield tmp_path / "data"
    conn = libvirt_or_skip("qemu:///system")
    for domain in conn.listAllDomains():  # type: ignore[attr-defined]
        if domain.name().startswith(PREFIX):
            if domain.isActive():
                domain.destroy()
            domain.undefine()
    conn.close()  # type: ignore[attr-defined]


def check_consistent(daemon: Daemon) -> dict[str, Any]:
    vms = {vm["name"]: vm for vm in httpx.get(daemon.url + "/api/v1/vms").json()}
    host = httpx.get(daemon.url + "/api/v1/host").json()
    cpus = [cpu for vnode in host["vnodes"].values() for cpu in vnode]
    assert len(cpus) == len(set(cpus)), "a CPU is in two vNodes"
    assert domains() == set(vms), "store and hypervisor disagree"
    return vms


@pytest.mark.parametrize("point", ["create:stored", "create:made"])
def test_kill_during_a_create(data_dir, point):
    daemon = Daemon(data_dir, crash_at=point)
    name = PREFIX + "c"
    with pytest.raises(httpx.HTTPError):
        daemon.create(name)
    assert daemon.process.wait(timeout=30) == -signal.SIGKILL
    daemon = Daemon(data_dir)
    try:
        vms = check_consistent(daemon)
        assert vms[name]["state"] == "running"  # the stored create was carried through
        assert domains() == {name}
    finally:
        daemon.stop()


@pytest.mark.parametrize("point", ["batch:stored", "batch:made"])
def test_kill_during_a_batch(data_dir, point):
    """A batch stores its VMs together, then makes them: killed after the
    store (none made) or after the first is made, the next start makes the
    others and every VM of the batch runs, each on its own vNode's CPUs."""
    daemon = Daemon(data_dir, crash_at=point)
    names = [PREFIX + "b1", PREFIX + "b2"]
    body = {"vms": [{"name": name, "vcpus": 1, "memory_mib": 64, "ratio": 2.0} for name in names]}
    with pytest.raises(httpx.HTTPError):
        httpx.post(daemon.url + "/api/v1/vm-batches", json=body, headers=daemon.auth, timeout=30)
    assert daemon.process.wait(timeout=30) == -signal.SIGKILL
    assert len(domains()) == (0 if point == "batch:stored" else 1)
    daemon = Daemon(data_dir)
    try:
        vms = check_consistent(daemon)
        assert {name: vm["state"] for name, vm in vms.items()} == dict.fromkeys(names, "running")
        assert vms[names[0]]["pinning"] == vms[names[1]]["pinning"]  # one 2:1 vNode, both on it
    finally:
        daemon.stop()


@pytest.mark.parametrize("point", ["deletions:marked", "deletions:unmade"])
def test_kill_during_a_batch_of_deletes(data_dir, point):
    """A batch of deletes marks its VMs together, then removes their domains:
    killed after the marks (none removed) or after the first domain is
    removed, the next start finishes every delete of the batch and keeps the
    VM outside it."""
    daemon = Daemon(data_dir)
    names = [PREFIX + "x1", PREFIX + "x2"]
    keep = PREFIX + "keep"
    for vm in (*names, keep):
        response = daemon.create(vm, ratio=2.0)
        assert response.status_code == 201, response.text
    daemon.stop()
    daemon = Daemon(data_dir, crash_at=point)
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            daemon.url + "/api/v1/vm-deletions", json={"names": names}, headers=daemon.auth, timeout=30
        )
    assert daemon.process.wait(timeout=30) == -signal.SIGKILL
    assert len(domains()) == (3 if point == "deletions:marked" else 2)
    daemon = Daemon(data_dir)
    try:
        vms = check_consistent(daemon)
        assert set(vms) == {keep}
    finally:
        daemon.stop()


@pytest.mark.parametrize("point", ["delete:marked", "delete:unmade"])
def test_kill_during_a_delete(data_dir, point):
    daemon = Daemon(data_dir)
    name = PREFIX + "d"
    keep = PREFIX + "keep"
    for vm in (name, keep):
        response = daemon.create(vm, ratio=2.0)
        assert response.status_code == 201, response.text
    daemon.stop()
    daemon = Daemon(data_dir, crash_at=point)
    with pytest.raises(httpx.HTTPError):
        httpx.delete(daemon.url + f"/api/v1/vms/{name}", headers=daemon.auth, timeout=30)
    assert daemon.process.wait(timeout=30) == -signal.SIGKILL
    daemon = Daemon(data_dir)
    try:
        vms = check_consistent(daemon)
        assert set(vms) == {keep}  # the marked delete was finished, the other VM kept
    finally:
        daemon.stop()
