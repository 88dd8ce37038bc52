"""The agent's NICs and networks on real libvirt, in the network lab
(tests/netlab.py: a private libvirtd in a network namespace; traffic only to
loopback and into that namespace): a VM made through the agent's API gets a
lease, its address shows in the API and is the one the guest took, a TCP
connection reaches the page it serves, its MAC survives a restart of the
agent, bad NICs are refused with nothing defined, and the agent's own NAT
network is made at start and reported. Needs root, `ip netns` and libvirt
(CI sets PINFOLD_REQUIRE_LIBVIRT=1: no skips there)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from pinfold.agent.api import create_app
from pinfold.agent.networks import OwnNetwork
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.topology import Topology
from tests.agent.guest import NET_ADDRESS, NET_PAGE
from tests.agent.test_netlab import BOOT_TIMEOUT_S, CMDLINE, serial_value, try_get
from tests.netlab import NetLab, netlab, wait_until  # noqa: F401  (fixture)
from tests.servers import serving

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def lab_agent(
    lab: NetLab, tmp: Path, kernel: Path, initrd: Path, **settings: Any
) -> Iterator[tuple[Agent, httpx.Client]]:
    """An agent on the lab's libvirtd (TCG guests booting the test kernel
    with a network), its API served on loopback; closed on the way out."""
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    driver = LibvirtDriver(lab.uri)
    values: dict[str, Any] = {
        "domain_type": "qemu", "kernel": kernel, "initrd": initrd, "cmdline": CMDLINE, "serial_dir": tmp,
        "critical_size": 0, "reserved_memory_mib": 0, **settings,
    }  # fmt: skip
    agent = Agent.open(Topology.discover(), driver, Store(tmp / "agent.db"), AgentSettings(**values))
    try:
        with serving(create_app(agent, TOKEN)) as url, httpx.Client(base_url=url, timeout=10) as http:
            yield agent, http
    finally:
        agent.close()
        driver.close()


def first_address(http: httpx.Client, name: str) -> str | None:
    nics = http.get(f"/api/v1/vms/{name}").json()["nics"]
    return nics[0]["addresses"][0] if nics and nics[0]["addresses"] else None


def domain_macs(lab: NetLab, name: str) -> list[str]:
    from pinfold.agent.domain import DomainSpec

    return [nic.mac for nic in DomainSpec.from_xml(lab.connection().lookupByName(name).XMLDesc(0)).nics]


def test_an_agent_vm_on_a_lab_network_gets_its_address_serves_tcp_and_keeps_its_mac(
    netlab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
    tmp_path,
    capfd,
):
    netlab.define_network("labnet", "10.213.5")
    with lab_agent(netlab, tmp_path, guest_kernel, guest_initramfs, default_network="labnet") as (_, http):
        started = time.monotonic()
        created = http.post("/api/v1/vms", json={"name": "web", "vcpus": 1, "memory_mib": 128}, headers=AUTH)
        assert created.status_code == 201, created.text
        (nic,) = created.json()["nics"]
        assert (nic["network"], nic["mac"][:8]) == ("labnet", "52:54:00")
        address = wait_until(
            lambda: first_address(http, "web"), BOOT_TIMEOUT_S, "the VM's address in the API"
        )
        to_address = time.monotonic() - started
        assert ipaddress.ip_address(address) in ipaddress.ip_network("10.213.5.0/24")
        assert http.get("/api/v1/vms/web").json()["addresses"] == [address]
        printed = wait_until(lambda: serial_value(tmp_path / "web.log", NET_ADDRESS), 30, "the guest's line")
        assert printed == address  # what the guest took is what the agent shows
        page = wait_until(lambda: try_get(netlab, address), BOOT_TIMEOUT_S, "the guest's page")
        to_tcp = time.monotonic() - started
        assert page == f"{NET_PAGE} {address}\n"
    assert domain_macs(netlab, "web") == [nic["mac"]]
    with lab_agent(netlab, tmp_path, guest_kernel, guest_initramfs, default_network="labnet") as (_, http):
        shown = http.get("/api/v1/vms/web").json()
        assert [n["mac"] for n in shown["nics"]] == [nic["mac"]]  # kept by the store, not chosen again
        assert shown["nics"][0]["addresses"] == [address]  # the lease matched to the running domain
        assert http.delete("/api/v1/vms/web", headers=AUTH).status_code == 204
    assert netlab.connection().listAllDomains() == []
    # asking a guest without qemu-guest-agent is routine: not a line on stderr at every poll
    assert "libvirt:" not in capfd.readouterr().err
    print(
        f"netlab agent timings: create to address {to_address:.2f} s, to the first TCP answer {to_tcp:.2f} s"
    )


def test_bad_nics_are_refused_with_nothing_defined_and_the_own_network_is_made(
    netlab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
    tmp_path,
):
    own = OwnNetwork("pfown", ipaddress.IPv4Network("10.213.6.0/24"))
    with lab_agent(netlab, tmp_path, guest_kernel, guest_initramfs, own_network=own) as (_, http):
        network = netlab.connection().networkLookupByName("pfown")
        assert network.isActive()
        assert network.autostart()
        assert "value='no-ping'" in network.XMLDesc(0)  # libvirt kept the dnsmasq option (leases at once)
        networks = {n["name"]: n for n in http.get("/api/v1/host").json()["networks"]}
        assert networks["pfown"]["owned"] is True
        assert networks["pfown"]["subnet"] == "10.213.6.0/24"
        assert networks["pfown"]["active"] is True
        body = {"name": "web", "vcpus": 1, "memory_mib": 128, "nics": [{"network": "pfown"}]}
        created = http.post("/api/v1/vms", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        mac = created.json()["nics"][0]["mac"]
        refusals = [
            ({"network": "nowhere"}, 422, "unknown network"),
            ({"bridge": "pfl-nope"}, 422, "unknown network"),
            ({"network": "pfown", "mac": "52:54:00:00:00"}, 422, "invalid request"),
            ({"network": "pfown", "mac": mac.upper()}, 409, "mac in use"),
        ]
        for nic, status, code in refusals:
            answer = http.post("/api/v1/vms", json={**body, "name": "bad", "nics": [nic]}, headers=AUTH)
            assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
        assert [d.name() for d in netlab.connection().listAllDomains()] == ["web"]  # nothing defined
        assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["web"]
        address = wait_until(lambda: first_address(http, "web"), BOOT_TIMEOUT_S, "an address on pfown")
        assert ipaddress.ip_address(address) in own.subnet  # the agent's network hands out leases
        assert http.delete("/api/v1/vms/web", headers=AUTH).status_code == 204
    uuid = network.UUIDString()
    with lab_agent(netlab, tmp_path, guest_kernel, guest_initramfs, own_network=own) as (agent, _):
        assert netlab.connection().networkLookupByName("pfown").UUIDString() == uuid  # not made again
        assert [n["owned"] for n in agent.networks() if n["name"] == "pfown"] == [True]
