"""IPv6 on a real guest, in the network lab (tests/netlab.py): a lab network with
an IPv6 /64 and DHCPv6 beside its IPv4 DHCP, a guest that takes both (`net net6`:
udhcpc, then ISC dhclient -6, as busybox has no udhcpc6). libvirt 9.0 records the
client's MAC with a DHCPv6 lease (dnsmasq reads it from the client's DUID), so the
agent's lease lookup by MAC finds the IPv6 address too: the API shows it on the
NIC, after the IPv4 one, and a TCP connection over IPv6 from the lab's namespace
reaches the guest's page. Needs root, `ip netns`, libvirt and dhclient (CI:
PINFOLD_REQUIRE_LIBVIRT=1, scripts/libvirt-up installs isc-dhcp-client)."""

from __future__ import annotations

import ipaddress

from pinfold.cli.demo_guest import NET6_ADDRESS, NET_PAGE
from tests.agent.test_netlab import BOOT_TIMEOUT_S, serial_value, try_get
from tests.agent.test_netlab_agent import AUTH, lab_agent
from tests.netlab import netlab, wait_until  # noqa: F401  (fixture)

PREFIX = "fd00:213:12::"


def test_a_guest_on_a_dual_stack_network_shows_its_ipv6_lease_on_its_nic_and_serves_tcp_over_ipv6(
    netlab,  # noqa: F811
    guest_kernel,
    guest_initramfs6,
    tmp_path,
):
    netlab.define_network("dual", "10.213.12", ipv6=PREFIX)
    settings = {"default_network": "dual", "cmdline": "console=ttyS0 panic=-1 net net6"}
    with lab_agent(netlab, tmp_path, guest_kernel, guest_initramfs6, **settings) as (_, http):
        created = http.post("/api/v1/vms", json={"name": "v6", "vcpus": 1, "memory_mib": 128}, headers=AUTH)
        assert created.status_code == 201, created.text

        def both() -> list[str] | None:
            (nic,) = http.get("/api/v1/vms/v6").json()["nics"]
            return nic["addresses"] if len(nic["addresses"]) == 2 else None

        v4, v6 = wait_until(both, BOOT_TIMEOUT_S, "an IPv4 and an IPv6 address on the VM's NIC")
        assert ipaddress.ip_address(v4) in ipaddress.ip_network("10.213.12.0/24")
        assert ipaddress.ip_address(v6) in ipaddress.ip_network(f"{PREFIX}/64")
        printed = wait_until(
            lambda: serial_value(tmp_path / "v6.log", NET6_ADDRESS), 30, "the guest's v6 line"
        )
        assert ipaddress.ip_address(printed) == ipaddress.ip_address(v6)  # what the guest took
        assert http.get("/api/v1/vms/v6").json()["addresses"] == [v4]  # the flat list stays IPv4 (RAPID's)
        page = wait_until(lambda: try_get(netlab, v6), BOOT_TIMEOUT_S, "the guest's page over IPv6")
        assert page.startswith(NET_PAGE)
        assert http.delete("/api/v1/vms/v6", headers=AUTH).status_code == 204
    assert netlab.connection().listAllDomains() == []
