"""kill -9 of the real agent daemon during a create with a NIC and a
cloud-init seed, in the network lab (tests/netlab.py: the agent as a
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


@pytest.mark.parametrize("point", POINTS)
def test_kill_during_a_create_with_a_nic_and_a_seed(netlab, guest_kernel, guest_initramfs, tmp_path, point):  # noqa: F811
    netlab.define_network("crashnet", "10.213.9")
    networks = sorted(n.name() for n in netlab.connection().listAllNetworks())
    data_dir = tmp_path / "data"
    args = agent_args(netlab, tmp_path, guest_kernel, guest_initramfs)
    daemon = Daemon(data_dir, crash_at=point, args=args)
    with pytest.raises(httpx.HTTPError):
        daemon.create(NAME, ssh_keys=[KEY])
    assert daemon.process.wait(timeout=30) == -signal.SIGKILL
    daemon = Daemon(data_dir, args=args)
    try:
        vms = {vm["name"]: vm for vm in httpx.get(daemon.url + "/api/v1/vms").json()}
        domains = {d.name(): d for d in netlab.connection().listAllDomains()}
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
            assert (
                httpx.delete(daemon.url + f"/api/v1/vms/{NAME}", headers=daemon.auth, timeout=30).status_code
                == 204
            )
        # nothing left, whichever way it went: no ISO, no MAC kept (deleted, or never made)
        assert seeds(data_dir) == []
        assert stored_macs(data_dir) == []
        assert netlab.connection().listAllDomains() == []
        assert sorted(n.name() for n in netlab.connection().listAllNetworks()) == networks
        assert reservations(netlab) == []
    finally:
        daemon.stop()
