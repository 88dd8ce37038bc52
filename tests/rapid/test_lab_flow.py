"""RAPID on real libvirt with real addresses, in the network lab
(tests/netlab.py: a private libvirtd in a network namespace). The agent's VMs
get a NIC on its default network, a lab network with DHCP; RAPID's VMM makes
its helpers and, for a SLAM's start, a user VM, and waits for each guest's
lease (no `ipShellPath` script: the address can only come from libvirt). The
SLAM's answer and the helpers' registrations at the DS carry the address each
guest took, as the guest itself prints it on its serial console.

Traffic rule: the DS, the SLAM, the AS's registration and the VMM's server
are all on loopback in the main namespace; nothing connects to a guest's
address (the start flow never does: the AS connects to the VMM, not the
other way; only a flavor change calls the AS, which this test leaves out).
At most two guests run at once: the helpers are paused before the user VM
boots. Needs root, `ip netns` and libvirt (CI: PINFOLD_REQUIRE_LIBVIRT=1)."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.protocol import OK, Op
from pinfold.topology import Topology
from tests.agent.conftest import guest_initramfs, guest_kernel  # noqa: F401  (fixtures)
from tests.agent.guest import NET_ADDRESS
from tests.agent.test_netlab import BOOT_TIMEOUT_S, CMDLINE, serial_value
from tests.netlab import NetLab, netlab, wait_until  # noqa: F401  (fixture)
from tests.rapid.peers import FakeDS, FakeSLAM, as_register, start_vm
from tests.rapid.rig import guest_vmm

if TYPE_CHECKING:  # libvirt-python may be missing: the lab then skips
    from pinfold.agent.drivers.libvirt import LibvirtDriver

SUBNET = ipaddress.ip_network("10.213.8.0/24")
HELPERS = ("rapid-helper-1", "rapid-helper-2")


def guest_address(tmp: Path, name: str) -> str:
    """The address the guest says it took (its serial console's line)."""
    return wait_until(lambda: serial_value(tmp / f"{name}.log", NET_ADDRESS), 30, f"{name}'s address line")


def lab_agent(lab: NetLab, tmp: Path, kernel: Path, initrd: Path) -> tuple[Agent, LibvirtDriver]:
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    settings = AgentSettings(
        domain_type="qemu", kernel=kernel, initrd=initrd, cmdline=CMDLINE, serial_dir=tmp,
        critical_size=0, reserved_memory_mib=0, default_network="rapidnet",
    )  # fmt: skip
    driver = LibvirtDriver(lab.uri)
    return Agent.open(Topology.discover(), driver, Store(tmp / "agent.db"), settings), driver


def test_the_slam_start_answers_with_the_guests_lab_address_and_helpers_register_theirs(
    netlab,  # noqa: F811
    guest_kernel,  # noqa: F811
    guest_initramfs,  # noqa: F811
    tmp_path,
):
    netlab.define_network("rapidnet", "10.213.8")
    agent, driver = lab_agent(netlab, tmp_path, guest_kernel, guest_initramfs)
    slam = FakeSLAM()
    ds = FakeDS(slam.port)
    config = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1", ds_port=ds.port)  # no ipShellPath
    vmm, server = guest_vmm(
        agent, config, as_wait_s=BOOT_TIMEOUT_S, ip_wait_s=BOOT_TIMEOUT_S, recheck_period_s=600
    )
    try:
        assert vmm.registered.wait(60)
        ds.wait_for(lambda got: len(ds.of(Op.HELPER_NOTIFY_DS)) == 2, timeout_s=2 * BOOT_TIMEOUT_S)
        for slot, name in enumerate(HELPERS, start=1):
            (row,) = ds.of_user(-slot).values()
            assert row.ip == guest_address(tmp_path, name)  # the DS has the address the guest took
            assert ipaddress.ip_address(row.ip) in SUBNET
            agent.suspend(name)  # two guests at most run at once: the user VM is the third

        answer: list[object] = []
        request = threading.Thread(target=lambda: answer.append(start_vm(server.port, 42, memory_mb=128)))
        request.start()
        ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == 42 for m in got), BOOT_TIMEOUT_S)
        address = guest_address(tmp_path, "rapid-user-42")
        assert as_register(server.port, address) == (OK, 42)  # the guest's AS, as it would (from loopback)
        request.join(timeout=60)
        assert answer == [(OK, 42, address)]
        assert ipaddress.ip_address(address) in SUBNET
        assert agent.addresses("rapid-user-42") == [address]
        nics = agent.nic_addresses("rapid-user-42")
        assert [(nic.network, found) for nic, found in nics] == [("rapidnet", [address])]
    finally:
        server.stop()
        vmm.stop()
        for name in (*HELPERS, "rapid-user-42"):
            if name in agent.vms:
                agent.delete(name)
        vmm.state.close()
        agent.close()
        driver.close()
        ds.stop()
        slam.stop()
    assert netlab.connection().listAllDomains() == []
