"""A real guest sees its cloud-init seed: the agent, on the network lab's
private libvirtd (tests/netlab.py), makes a TCG guest with SSH keys and user
data; the guest (tests/agent/guest.py, `cidata`) finds the read-only CD-ROM,
reads its label and prints the seed's meta-data and user-data on its serial
console; the seed goes with the VM, and a refused create leaves nothing.
Needs root and libvirt (CI sets PINFOLD_REQUIRE_LIBVIRT=1: no skips there)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.model.vm import MAX_USER_DATA_BYTES
from pinfold.topology import Topology
from tests.agent.guest import CIDATA_DEVICE, CIDATA_DONE, CIDATA_LABEL, CIDATA_META, CIDATA_USER
from tests.netlab import (
    NetLab,
    netlab,  # noqa: F401  (fixture)
    wait_until,
)

BOOT_TIMEOUT_S = 120.0
CMDLINE = "console=ttyS0 panic=-1 quiet cidata"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPJQep4eS/coYUOy+Uh+HQ/PXtPmYwjCkZNEkZnPROFW alice@laptop"
USER_DATA = "#cloud-config\nruncmd:\n  - echo hello\n"


def serial_lines(log: Path, marker: str) -> list[str]:
    """What follows `marker ` on each serial console line that starts with it."""
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [line.removeprefix(marker + " ") for line in lines if line.startswith(marker + " ")]


def finished(log: Path) -> bool:
    return log.exists() and CIDATA_DONE in log.read_text(errors="replace").splitlines()


def test_a_guest_sees_its_seed_attached_read_only_and_the_seed_goes_with_the_vm(
    netlab: NetLab,  # noqa: F811
    guest_kernel: Path,
    guest_initramfs: Path,
    tmp_path: Path,
) -> None:
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    driver = LibvirtDriver(netlab.uri)
    disks = tmp_path / "disks"
    settings = AgentSettings(
        domain_type="qemu", kernel=guest_kernel, initrd=guest_initramfs, cmdline=CMDLINE,
        serial_dir=tmp_path, disk_dir=disks, critical_size=0,
    )  # fmt: skip
    agent = Agent.open(Topology.discover(), driver, Store(tmp_path / "agent.db"), settings)
    name = "seeded"
    try:
        agent.create(VMRequest(name, 1, 128, 2.0, ssh_keys=(KEY,), user_data=USER_DATA))
        seed = disks / f"{name}.cidata.iso"
        assert seed.is_file()
        cdrom = ET.fromstring(netlab.connection().lookupByName(name).XMLDesc()).find(
            "devices/disk[@device='cdrom']"
        )
        assert cdrom is not None, "no CD-ROM in the running domain"
        assert cdrom.find("readonly") is not None
        assert cdrom.find("source").get("file") == str(seed)  # type: ignore[union-attr]

        log = tmp_path / f"{name}.log"
        wait_until(lambda: finished(log), BOOT_TIMEOUT_S, f"the guest to read its seed ({log})")
        assert serial_lines(log, CIDATA_DEVICE) == ["/dev/sr0"]
        assert serial_lines(log, CIDATA_LABEL) == ["cidata"]
        meta = json.loads("\n".join(serial_lines(log, CIDATA_META)))
        assert (meta["local-hostname"], meta["public-keys"]) == (name, [KEY])
        assert "\n".join(serial_lines(log, CIDATA_USER)) + "\n" == USER_DATA

        # too big: refused before anything is made, on real libvirt as on the sim driver
        with pytest.raises(AgentError, match="at most"):
            agent.create(VMRequest("big", 1, 128, 2.0, user_data="x" * (MAX_USER_DATA_BYTES + 1)))
        assert [domain.name() for domain in netlab.connection().listAllDomains()] == [name]
        assert sorted(p.name for p in disks.iterdir()) == [f"{name}.cidata.iso"]

        agent.delete(name)
        assert netlab.connection().listAllDomains() == []
        assert not seed.exists()
    finally:
        if name in agent.vms:
            agent.delete(name)
        agent.close()
        driver.close()
