"""The assembled RAPID endpoint: what it reports to the DS about this host."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from pinfold.agent.config import AgentConfig
from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.endpoint import RapidEndpoint
from pinfold.rapid.openstack_backend import OpenStackBackend
from pinfold.rapid.settings import RapidSettings


def test_the_ds_hears_the_cpus_the_agent_places_on_not_the_machines_cores(tmp_path, epyc):
    """The DS admits a start when vcpu / cpunums fits the free share: with the
    machine's cores (2 here) it refused what a simulated EPYC host (or one
    with CPUs kept for the host) could serve, or admitted what it could not."""
    topology = epyc.with_exclusions([0, 1, 2, 3])
    assert len(topology.usable_cpus) != psutil.cpu_count(logical=True)
    settings = AgentSettings(domain_type="qemu", disk_dir=tmp_path / "disks")
    agent = Agent.open(topology, SimDriver(), Store(tmp_path / "agent.db"), settings)
    config = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1")
    endpoint = RapidEndpoint(agent, config, RapidSettings(listen="127.0.0.1"), monitor=None)
    try:
        assert endpoint.usage().cpu_cores == len(topology.usable_cpus)
    finally:
        endpoint.server.stop()
        endpoint.state.close()
        agent.store.close()


def test_on_openstack_the_per_vm_figures_are_novas_not_the_agents_monitor(tmp_path, epyc, openstack_lab):
    """The agent's monitor samples its own domains, never a cloud's servers: with
    openStackSupport the SLAM's CPU and memory queries read the back-end's
    figures (Nova's diagnostics), with the agent's monitor without it."""
    settings = AgentSettings(domain_type="qemu", disk_dir=tmp_path / "disks")
    agent = Agent.open(epyc, SimDriver(), Store(tmp_path / "agent.db"), settings)
    keys = openstack_lab.rapid_keys()
    config = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1", openstack=keys, openstack_support=True)
    endpoint = RapidEndpoint(agent, config, RapidSettings(listen="127.0.0.1"), monitor=None)
    backend = endpoint.backend
    try:
        assert isinstance(backend, OpenStackBackend)
        assert endpoint.vmm.vm_usage == backend.vm_usage
    finally:
        endpoint.server.stop()
        endpoint.state.close()
        if isinstance(backend, OpenStackBackend):
            backend.cloud.close()
        agent.store.close()


@pytest.mark.parametrize(
    ("simulated", "network", "script", "said"),
    [
        (False, "", None, "every start answers ERROR"),
        (False, "", Path("/opt/rapid/getIp.sh"), "only from ipShellPath"),
        (False, "default", None, None),
        (True, "", None, None),  # the sim driver shows its simulated address with or without a NIC
        (False, "bridge:br0", Path("/opt/rapid/getIp.sh"), None),  # the script reads the site's DHCP
        (False, "bridge:br0", None, "only from a guest agent"),
    ],
)
def test_an_agent_whose_rapid_vms_would_get_no_nic_says_so(simulated, network, script, said):
    """RAPID's VMs get their NIC on the agent's `default_network` (RAPID's
    template had one NIC on the default network); without it, on libvirt,
    no lease can give their address and each start waits `ip_wait_s` for nothing."""
    from pinfold.agent.daemon import rapid_address_notice

    bridge = network.removeprefix("bridge:") if network.startswith("bridge:") else ""
    config = AgentConfig(default_network="" if bridge else network, default_bridge=bridge)
    rapid = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1", ip_script=script)
    notice = rapid_address_notice(config, rapid, simulated)
    if said is None:
        assert notice is None
    else:
        assert notice is not None
        assert said in notice
        assert ("br0" if bridge else "default_network") in notice
