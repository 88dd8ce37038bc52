"""Bridged NICs on a real guest, in the network lab (tests/netlab.py: a private
libvirtd in a network namespace). The lab makes a Linux bridge of its own with
a dnsmasq serving DHCP on it (what an operator's `br0` with the site's DHCP
server is: no libvirt network, so libvirt knows no lease). A VM made through
the agent's API with a NIC on that bridge takes the address dnsmasq leases to
its MAC, and a TCP connection from the namespace reaches its page. The agent
learns no address for it (no libvirt lease, and the busybox guest runs no
qemu-guest-agent): RAPID's `ipShellPath` script is the source left, tested in
tests/rapid/test_lab_flow.py. A bridge the daemon does not have, or an
interface that is not a bridge, is refused with 422 `unknown network` and
nothing defined or stored. Traffic goes only into the lab's namespace; needs
root, `ip netns`, dnsmasq and libvirt (CI: PINFOLD_REQUIRE_LIBVIRT=1)."""

from __future__ import annotations

import ipaddress

import pytest

from tests.agent.guest import NET_ADDRESS, NET_PAGE
from tests.agent.test_netlab import BOOT_TIMEOUT_S, serial_value, try_get
from tests.agent.test_netlab_agent import AUTH, lab_agent
from tests.netlab import lab_session, netlab, pids_in_netns, wait_until  # noqa: F401  (fixture)


def test_a_vm_on_a_lab_bridge_takes_dnsmasqs_lease_and_serves_tcp_and_missing_bridges_are_refused(
    netlab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
    tmp_path,
):
    bridge = netlab.add_bridge("10.213.9")
    with lab_agent(netlab, tmp_path, guest_kernel, guest_initramfs) as (agent, http):
        body = {"name": "bridged", "vcpus": 1, "memory_mib": 128, "nics": [{"bridge": bridge.name}]}
        created = http.post("/api/v1/vms", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        (nic,) = created.json()["nics"]
        assert (nic["bridge"], nic["network"]) == (bridge.name, None)
        address = wait_until(lambda: bridge.leased(nic["mac"]), BOOT_TIMEOUT_S, "dnsmasq's lease for the VM")
        assert ipaddress.ip_address(address) in ipaddress.ip_network("10.213.9.0/24")
        printed = wait_until(
            lambda: serial_value(tmp_path / "bridged.log", NET_ADDRESS), 30, "the guest's line"
        )
        assert printed == address  # what the guest took is what dnsmasq leased to its MAC
        page = wait_until(lambda: try_get(netlab, address), BOOT_TIMEOUT_S, "the guest's page")
        assert page == f"{NET_PAGE} {address}\n"
        shown = http.get("/api/v1/vms/bridged").json()["nics"]
        # no libvirt lease on a bridge and no guest agent in this guest: nothing to show
        assert shown == [{"network": None, "bridge": bridge.name, "mac": nic["mac"], "addresses": []}]

        refusals = ["pfl-nope", "lo"]  # no such interface; an interface that is not a bridge
        for name in refusals:
            answer = http.post(
                "/api/v1/vms", json={**body, "name": "bad", "nics": [{"bridge": name}]}, headers=AUTH
            )
            assert (answer.status_code, answer.json()["error"]) == (422, "unknown network"), answer.text
        assert [d.name() for d in netlab.connection().listAllDomains()] == ["bridged"]  # nothing defined
        assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["bridged"]  # nor stored
        assert set(agent.store.macs()) == {nic["mac"]}  # no MAC kept for a refused NIC
        assert http.delete("/api/v1/vms/bridged", headers=AUTH).status_code == 204
    assert netlab.connection().listAllDomains() == []


def test_only_a_uri_without_host_or_remote_transport_is_local():
    pytest.importorskip("libvirt")
    from pinfold.agent.drivers.libvirt import is_local_uri

    local = ["qemu:///system", "qemu+unix:///system?socket=/tmp/pfl-x/run/libvirt-sock", "qemu:///session"]
    remote = ["qemu+ssh://root@edge-1/system", "qemu+tcp://10.0.0.5/system", "qemu://edge-1/system"]
    assert [is_local_uri(uri) for uri in local + remote] == [True] * 3 + [False] * 3


def test_a_lab_bridge_and_its_dnsmasq_are_gone_after_the_lab():
    with lab_session() as lab:
        bridge = lab.add_bridge("10.213.9")
        (server,) = lab.dhcp_servers
        assert server.poll() is None  # dnsmasq serves, in the lab's namespace
        # the pid is `ip netns exec`'s until it has entered the namespace and exec'd dnsmasq
        wait_until(lambda: server.pid in pids_in_netns(lab.netns_inode) or None, 30, "dnsmasq in the lab")
        assert bridge.name in lab.bridges
    assert lab.leftovers() == []
    assert server.returncode is not None  # stopped and reaped
