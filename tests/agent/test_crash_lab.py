"""kill -9 of the real agent daemon during a create (and a delete) of a VM
with a NIC and a cloud-init seed, in the network lab (tests/netlab.py: the agent as a
subprocess on the lab's private libvirtd). After the kill at each crash point
of a create and a restart, there is exactly the VM (its domain running, with
its seed ISO attached and the NIC whose MAC the store keeps) or nothing (no
domain, no ISO, no stored MAC); never a leaked network or a lease
reservation (the agent adds no `<host>` entry to a network). The agent's
HTTP API is on loopback; no traffic goes to a guest. Needs root, `ip netns`
and libvirt (CI: PINFOLD_REQUIRE_LIBVIRT=1)."""

from __future__ import annotations

import json
import signal
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pinfold.agent.domain import DomainSpec
from pinfold.agent.seed import PARTIAL, SUFFIX
from tests.agent.conftest import guest_initramfs, guest_kernel  # noqa: F401  (fixtures)
from tests.agent.test_crash import Daemon
from tests.agent.test_netlab import CMDLINE
from tests.netlab import NetLab, netlab  # noqa: F401  (fixture)

NAME = "crashy"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinfoldCrashTestKeyOnly0000000000000000 crash@test"
#: where a create can be cut: before the VM is stored (its seed written), once stored,
#: with the domain defined but not started, and once made
#: (with whether the VM is there after the restart: a stored create is carried through)
POINTS = {"create:seeded": False, "create:stored": True, "create:defined": True, "create:made": True}


def agent_args(lab: NetLab, tmp: Path, kernel: Path, initrd: Path) -> list[str]:
    """The agent's settings: the lab's libvirtd, its network as the default, the
    test guest (kernel, initrd and command line are TOML-only settings: each a
    TOML basic string, written as JSON writes a string, never pasted in)."""
    config = tmp / "agent.toml"
    boot = {"kernel": str(kernel), "initrd": str(initrd), "cmdline": CMDLINE}
    config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in boot.items()))
    return [
        "--config", str(config), "--libvirt-uri", lab.uri, "--default-network", "crashnet",
        "--critical-size", "0", "--reserved-memory-mib", "0",
    ]  # fmt: skip


def stored_macs(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "agent.db") as db:
        return [mac for (mac,) in db.execute("SELECT mac FROM nics")]


def seeds(data_dir: Path) -> list[str]:
    disks = data_dir / "disks"
    found = [*disks.glob(f"*{SUFFIX}"), *disks.glob(f"{PARTIAL}*")] if disks.is_dir() else []
    return sorted(path.name for path in found)


def reservations(lab: NetLab) -> list[str]:
    """The `<host>` entries of every network of the lab (DHCP reservations)."""
    found = []
    for network in lab.connection().listAllNetworks():
        for host in ET.fromstring(network.XMLDesc(0)).iter("host"):
            found.append(f"{network.name()}: {host.attrib}")
    return found


@dataclass
class Setup:
    """A lab with its network, the agent's data dir and its arguments, and the
    lab's networks before anything ran (a crash must leave them as they were)."""

    lab: NetLab
    data_dir: Path
    args: list[str]
    networks: list[str]

    def daemon(self, crash_at: str | None = None) -> Daemon:
        return Daemon(self.data_dir, crash_at=crash_at, args=self.args)

    def killed(self, crash_at: str, call: Callable[[Daemon], object]) -> Daemon:
        """An agent killed at `crash_at` during `call`, then restarted."""
        daemon = self.daemon(crash_at)
        with pytest.raises(httpx.HTTPError):
            call(daemon)
        assert daemon.process.wait(timeout=30) == -signal.SIGKILL
        return self.daemon()

    def assert_nothing_left(self) -> None:
        """No domain, ISO or stored MAC; the networks as they were, none with a `<host>` entry."""
        assert seeds(self.data_dir) == []
        assert stored_macs(self.data_dir) == []
        assert self.lab.connection().listAllDomains() == []
        assert sorted(n.name() for n in self.lab.connection().listAllNetworks()) == self.networks
        assert reservations(self.lab) == []


@pytest.fixture
def setup(netlab, guest_kernel, guest_initramfs, tmp_path) -> Setup:  # noqa: F811
    netlab.define_network("crashnet", "10.213.9")
    networks = sorted(n.name() for n in netlab.connection().listAllNetworks())
    return Setup(
        netlab, tmp_path / "data", agent_args(netlab, tmp_path, guest_kernel, guest_initramfs), networks
    )


def delete(daemon: Daemon) -> httpx.Response:
    return httpx.delete(daemon.url + f"/api/v1/vms/{NAME}", headers=daemon.auth, timeout=30)


@pytest.mark.parametrize("point", POINTS)
def test_kill_during_a_create_with_a_nic_and_a_seed(setup, point):
    data_dir = setup.data_dir
    daemon = setup.killed(point, lambda d: d.create(NAME, ssh_keys=[KEY]))
    try:
        vms = {vm["name"]: vm for vm in httpx.get(daemon.url + "/api/v1/vms").json()}
        domains = {d.name(): d for d in setup.lab.connection().listAllDomains()}
        assert set(domains) == set(vms), "store and hypervisor disagree"
        assert set(vms) == ({NAME} if POINTS[point] else set())
        if vms:  # exactly the VM: running, its seed attached, its stored MAC on its NIC
            assert vms[NAME]["state"] == "running"
            spec = DomainSpec.from_xml(domains[NAME].XMLDesc(0))
            assert spec.seed is not None
            assert spec.seed.name == f"{NAME}{SUFFIX}"
            assert seeds(data_dir) == [spec.seed.name]
            assert [(nic.network, nic.mac) for nic in spec.nics] == [
                ("crashnet", m) for m in stored_macs(data_dir)
            ]
            assert [nic["mac"] for nic in vms[NAME]["nics"]] == stored_macs(data_dir)
            assert len(stored_macs(data_dir)) == 1
            assert delete(daemon).status_code == 204
        setup.assert_nothing_left()  # deleted, or never made
    finally:
        daemon.stop()


@pytest.mark.parametrize("point", ["delete:marked", "delete:unmade"])
def test_kill_during_a_delete_of_a_vm_with_a_nic_and_a_seed(setup, point):
    """The restart finishes the delete: the seed and the stored MAC go with the domain."""
    daemon = setup.daemon()
    created = daemon.create(NAME, ssh_keys=[KEY])
    assert created.status_code == 201, created.text
    daemon.stop()
    assert (len(seeds(setup.data_dir)), len(stored_macs(setup.data_dir))) == (1, 1)
    daemon = setup.killed(point, delete)
    try:
        assert httpx.get(daemon.url + "/api/v1/vms").json() == []
        setup.assert_nothing_left()
    finally:
        daemon.stop()
