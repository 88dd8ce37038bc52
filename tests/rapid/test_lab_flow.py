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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.protocol import OK, Op
from pinfold.rapid.server import RapidServer
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


def lab_agent(
    lab: NetLab,
    tmp: Path,
    kernel: Path,
    initrd: Path,
    default_network: str = "rapidnet",
    default_bridge: str = "",
) -> tuple[Agent, LibvirtDriver]:
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    settings = AgentSettings(
        domain_type="qemu", kernel=kernel, initrd=initrd, cmdline=CMDLINE, serial_dir=tmp,
        critical_size=0, reserved_memory_mib=0, default_network=default_network,
        default_bridge=default_bridge,
    )  # fmt: skip
    driver = LibvirtDriver(lab.uri)
    return Agent.open(Topology.discover(), driver, Store(tmp / "agent.db"), settings), driver


@contextmanager
def rapid_in_lab(
    agent: Agent, driver: LibvirtDriver, ip_script: Path | None = None
) -> Iterator[tuple[RapidServer, FakeDS]]:
    """RAPID's VMM over the lab agent, registered at a fake DS (and SLAM) and
    with its two helpers made; on the way out everything stopped, the VMs
    deleted and the agent and its driver closed."""
    slam = FakeSLAM()
    ds = FakeDS(slam.port)
    config = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1", ds_port=ds.port, ip_script=ip_script)
    vmm, server = guest_vmm(
        agent, config, as_wait_s=BOOT_TIMEOUT_S, ip_wait_s=BOOT_TIMEOUT_S, recheck_period_s=600
    )
    try:
        assert vmm.registered.wait(60)
        ds.wait_for(lambda got: len(ds.of(Op.HELPER_NOTIFY_DS)) == 2, timeout_s=2 * BOOT_TIMEOUT_S)
        yield server, ds
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


def test_the_slam_start_answers_with_the_guests_lab_address_and_helpers_register_theirs(
    netlab,  # noqa: F811
    guest_kernel,  # noqa: F811
    guest_initramfs,  # noqa: F811
    tmp_path,
):
    netlab.define_network("rapidnet", "10.213.8")
    agent, driver = lab_agent(netlab, tmp_path, guest_kernel, guest_initramfs)
    with rapid_in_lab(agent, driver) as (server, ds):  # no ipShellPath
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
    assert netlab.connection().listAllDomains() == []


# RAPID's ipShellPath as a site would write one for a bridge whose DHCP server is its own:
# the domain's MAC from libvirt, its address from that server's lease file. RAPID runs
# `sh script <domain>` with nothing else, so the URI and the lease file are read from
# files beside the script (nothing is pasted into it).
IP_SCRIPT = """here=$(dirname "$0")
mac=$(virsh -q -c "$(cat "$here/uri")" domiflist "$1" | awk 'NF { print $NF; exit }')
[ -n "$mac" ] && awk -v mac="$mac" '$2 == mac { print $3; exit }' "$(cat "$here/leases")"
"""


def test_on_a_bridge_the_address_comes_from_rapids_ip_shell_path_script(
    netlab,  # noqa: F811
    guest_kernel,  # noqa: F811
    guest_initramfs,  # noqa: F811
    tmp_path,
):
    bridge = netlab.add_bridge("10.213.10")
    script_dir = tmp_path / "ipshell"
    script_dir.mkdir()
    (script_dir / "uri").write_text(netlab.uri)
    (script_dir / "leases").write_text(str(bridge.leases))
    (script_dir / "vmip.sh").write_text(IP_SCRIPT)
    agent, driver = lab_agent(
        netlab, tmp_path, guest_kernel, guest_initramfs, default_network="", default_bridge=bridge.name
    )
    with rapid_in_lab(agent, driver, ip_script=script_dir / "vmip.sh") as (_, ds):
        for slot, name in enumerate(HELPERS, start=1):
            (row,) = ds.of_user(-slot).values()
            assert row.ip == guest_address(tmp_path, name)  # the DS has the address the guest took
            ((nic, _),) = agent.nic_addresses(name)
            assert nic.bridge == bridge.name  # the agent's default bridge
            assert row.ip == bridge.leased(nic.mac)  # dnsmasq's lease of the VM's MAC, through the script
            assert agent.addresses(name) == []  # libvirt knew none: it came from ipShellPath
    assert netlab.connection().listAllDomains() == []
