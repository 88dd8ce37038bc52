"""kill -9 of either agent at each step of a live migration, on real libvirt
(the two private daemons of tests/migrationlab.py; both agents are real
daemons, subprocesses with their HTTP APIs on loopback). After the restart
there is exactly one running copy of the guest, and both stores agree with
their hypervisors: the source's row exactly when the guest runs there, the
target's exactly when it runs there. The controller's part is played by the
test (prepare, send, commit, or abort when the send failed). One guest at a
time. Needs root, `ip netns` and libvirt (CI: PINFOLD_REQUIRE_LIBVIRT=1)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from pinfold.agent.drivers import Driver
from pinfold.agent.reconcile import Action
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.topology import Topology
from tests.agent.conftest import guest_initramfs, guest_kernel  # noqa: F401  (fixtures)
from tests.agent.test_crash import Daemon
from tests.agent.test_migration import KEY, prepare_body
from tests.agent.test_migration_lab import counting
from tests.migrationlab import CMDLINE, LabHost, MigrationLab, migration_lab  # noqa: F401  (fixture)
from tests.netlab import wait_until

NAME = "moving"
TIMEOUT_S = 120.0


def agent_args(host: LabHost, kernel: Path, initrd: Path) -> list[str]:
    """A lab host's agent: its daemon, the test guest, migration on loopback
    (TOML-only settings written as JSON writes strings, never pasted in)."""
    config = host.root / "agent.toml"
    settings = {
        "kernel": str(kernel), "initrd": str(initrd), "cmdline": CMDLINE, "peer_libvirt_uri": host.peer_uri,
        "migration_address": "127.0.0.1",
    }  # fmt: skip
    config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return [
        "--config", str(config), "--libvirt-uri", host.uri, "--critical-size", "0",
        "--reserved-memory-mib", "0",
    ]  # fmt: skip


@dataclass
class Side:
    """One host's agent daemon, started again after a kill."""

    host: LabHost
    args: list[str]
    daemon: Daemon | None = None

    def start(self, crash_at: str | None = None) -> Daemon:
        self.daemon = Daemon(self.host.data, crash_at=crash_at, args=self.args)
        return self.daemon

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        assert self.daemon is not None
        return httpx.request(
            method, self.daemon.url + path, json=body, headers=self.daemon.auth, timeout=TIMEOUT_S
        )

    def killed(self) -> None:
        """The daemon was killed (at its crash point): wait for it, and start it again."""
        assert self.daemon is not None
        assert self.daemon.process.wait(timeout=30) == -signal.SIGKILL
        self.start()

    def create_guest(self, **more: Any) -> None:
        """The test guest (1 vCPU, 128 MiB), made here."""
        made = self.call("POST", "/api/v1/vms", {"name": NAME, "vcpus": 1, "memory_mib": 128, **more})
        assert made.status_code == 201, made.text

    def seeds(self) -> list[str]:
        """The cloud-init seeds in this host's disk directory (half written ones too)."""
        return sorted(path.name for path in (self.host.data / "disks").glob("*.iso"))

    def vms(self) -> dict[str, dict[str, Any]]:
        return {vm["name"]: vm for vm in self.call("GET", "/api/v1/vms").json()}

    def running_domains(self) -> set[str]:
        return {d.name() for d in self.host.connection.listAllDomains() if d.isActive()}

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()


@pytest.fixture
def sides(migration_lab, guest_kernel, guest_initramfs):  # noqa: F811
    lab: MigrationLab = migration_lab
    made = [Side(host, agent_args(host, guest_kernel, guest_initramfs)) for host in lab.hosts.values()]
    try:
        yield made
    finally:
        for side in made:
            side.stop()


def prepare(source: Side, target: Side) -> httpx.Response:
    """As the controller prepares: the source's view of the guest, and its seed if it has one."""
    assert source.daemon is not None
    daemon = source.daemon
    with httpx.Client(base_url=daemon.url, timeout=TIMEOUT_S) as client:
        body = prepare_body(client, source.host.name, NAME, daemon.auth)
    return target.call("POST", "/api/v1/migrations", body)


def send(source: Side, target: Side, prepared: dict[str, Any]) -> httpx.Response:
    body = {"target": target.host.name, **{k: prepared[k] for k in ("cpus", "libvirt_uri", "migrate_uri")}}
    return source.call("POST", f"/api/v1/vms/{NAME}/migrate", body)


def one_running_copy(source: Side, target: Side) -> Side:
    """Exactly one host runs the guest, and each store says so; that host."""
    where = [side for side in (source, target) if NAME in side.running_domains()]
    assert len(where) == 1, f"running on {[side.host.name for side in where]}"
    for side in (source, target):
        vms = side.vms()
        if side is where[0]:
            assert vms[NAME]["state"] == "running"
        else:
            assert NAME not in vms
            assert NAME not in {d.name() for d in side.host.connection.listAllDomains()}
    return where[0]


@pytest.mark.parametrize(
    ("point", "then", "runs_on"),
    [("migrate:marked", "abort", "source"), ("migrate:sent", "commit", "target")],
    ids=["after-marking", "after-sending"],
)
def test_the_source_killed_during_its_send(sides, point, then, runs_on):
    """Killed once the VM is marked (nothing sent: the controller aborts, the
    guest stays) or once libvirt sent it (the controller commits, it left)."""
    source, target = sides
    source.start(point)
    target.start()
    source.create_guest()
    prepared = prepare(source, target).json()
    with pytest.raises(httpx.HTTPError):
        send(source, target, prepared)
    source.killed()
    if then == "abort":
        assert target.call("DELETE", f"/api/v1/migrations/{NAME}").status_code == 204
    else:
        assert target.call("POST", f"/api/v1/migrations/{NAME}/commit").status_code == 200
    assert one_running_copy(source, target) is {"source": source, "target": target}[runs_on]


@pytest.mark.parametrize(
    "point", ["incoming:seeded", "incoming:stored"], ids=["after-seeding", "after-storing"]
)
def test_the_target_killed_while_preparing_drops_its_reservation_and_seed(sides, point):
    """A guest with a cloud-init seed: the target killed once it wrote the
    seed (no row yet: the start removes a seed of no VM) or once it stored
    its reservation (the start drops it, its seed too)."""
    source, target = sides
    source.start()
    target.start(point)
    source.create_guest(ssh_keys=[KEY])
    with pytest.raises(httpx.HTTPError):
        prepare(source, target)
    target.killed()
    assert one_running_copy(source, target) is source
    assert target.call("GET", "/api/v1/host").json()["vnodes"] == {}
    assert (source.seeds(), target.seeds()) == ([f"{NAME}.cidata.iso"], [])


def test_the_target_killed_while_committing_keeps_the_guest(sides):
    source, target = sides
    source.start()
    target.start("incoming:arrived")
    source.create_guest()
    prepared = prepare(source, target).json()
    assert send(source, target, prepared).status_code == 200
    with pytest.raises(httpx.HTTPError):
        target.call("POST", f"/api/v1/migrations/{NAME}/commit")
    target.killed()
    assert one_running_copy(source, target) is target


class Watched:
    """The real driver, noting when a start asks whether a guest is still leaving
    and is told yes (the test then lets the migration finish)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.waiting = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    def migrating_out(self, name: str) -> bool:
        leaving = bool(self.driver.migrating_out(name))
        if leaving:
            self.waiting.set()
        return leaving


def test_the_source_killed_while_libvirt_migrates_forgets_the_guest_that_leaves(sides):
    """The kill comes while the guest's memory is being copied: the source's
    daemon carries the migration through (peer to peer), and the restarted
    source agent must not keep a row for the guest that is leaving: its
    start waits for the migration to end, then finds the guest gone."""
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    source, target = sides
    source.start()
    target.start()
    source.create_guest()
    counting(source.host.data / "consoles" / f"{NAME}.log")
    domain = source.host.connection.lookupByName(NAME)
    domain.migrateSetMaxSpeed(1, 0)  # MiB/s: it never converges, until the test lets it
    prepared = prepare(source, target).json()
    sender = threading.Thread(target=lambda: _ignore_errors(lambda: send(source, target, prepared)))
    sender.start()
    wait_until(lambda: domain.jobInfo()[0] != 0 and domain.jobInfo()[4] > 0, 60, "the migration's copy")
    assert source.daemon is not None
    source.daemon.process.send_signal(signal.SIGKILL)
    sender.join(TIMEOUT_S)
    assert source.daemon.process.wait(timeout=30) == -signal.SIGKILL
    source.daemon = None
    # started again (in this process, to see it wait), while the migration still runs
    driver = Watched(LibvirtDriver(source.host.uri))
    settings = AgentSettings(domain_type="qemu", disk_dir=source.host.data / "disks",
                             serial_dir=source.host.data / "consoles")  # fmt: skip
    started: dict[str, Agent] = {}
    topology = Topology.discover()

    def start_again() -> None:
        store = Store(source.host.data / "agent.db")
        started["agent"] = Agent.open(topology, cast(Driver, driver), store, settings)

    restart = threading.Thread(target=start_again)
    restart.start()
    assert driver.waiting.wait(60), "the start did not find the guest still leaving"
    domain.migrateSetMaxSpeed(1024, 0)  # now it converges
    restart.join(TIMEOUT_S)
    agent = started["agent"]
    try:
        assert [(step.action, step.name) for step in agent.report] == [(Action.LEFT, NAME)]
        assert agent.find(NAME) is None
        assert agent.vnode_layout() == {}
        assert target.call("POST", f"/api/v1/migrations/{NAME}/commit").status_code == 200
        assert NAME not in {d.name() for d in source.host.connection.listAllDomains()}
        assert NAME in target.running_domains()
        assert target.vms()[NAME]["state"] == "running"
    finally:
        agent.close()
        driver.driver.close()


def _ignore_errors(call: Any) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()
