"""The network lab (tests/netlab.py) works: real TCG guests with virtio NICs on
an isolated libvirt network inside the lab's namespace get DHCP leases that
libvirt matches to them by MAC, serve a page the test reaches over TCP, reach
each other, and the lab leaves nothing behind. Needs root, `ip netns` and
libvirt (CI has them and sets PINFOLD_REQUIRE_LIBVIRT=1: no skips there)."""

from __future__ import annotations

import fcntl
import functools
import os
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.agent.guest import NET_ADDRESS, NET_FETCHED, NET_PAGE, NET_PORT
from tests.netlab import (
    DNSMASQ_NS,
    NetLab,
    guest_xml,
    lab_session,
    lease_addresses,
    netlab,  # noqa: F401  (fixture)
    network_xml,
    random_mac,
    wait_until,
)

BOOT_TIMEOUT_S = 120.0
CMDLINE = "console=ttyS0 panic=-1 net"
SIOCGSKNS = 0x894C  # linux/sockios.h: a socket's network namespace, as a new fd


def serial_value(log: Path, marker: str) -> str | None:
    """The rest of the first serial console line starting with marker, once printed."""
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(marker + " "):
            return line.removeprefix(marker + " ").strip()
    return None


def try_get(lab: NetLab, address: str) -> str | None:
    """The guest's page, or None while it does not answer yet."""
    try:
        return lab.http_get(address, NET_PORT, timeout_s=2.0)
    except OSError:
        return None


def start_guest(
    lab: NetLab, name: str, kernel: Path, initrd: Path, tmp: Path, mac: str, cmdline: str
) -> object:
    xml = guest_xml(name, kernel, initrd, cmdline, tmp / f"{name}.log", [(mac, "labnet")])
    return lab.connection().createXML(xml, 0)


def test_network_xml_is_isolated_with_no_ping_and_fixed_hosts():
    network = ET.fromstring(network_xml("n", "10.213.9", {"52:54:00:00:00:01": "10.213.9.10"}, "pflx0"))
    assert network.find("forward") is None  # isolated: nothing leaves the bridge
    assert network.find("bridge").get("name") == "pflx0"  # type: ignore[union-attr]
    host = network.find("ip/dhcp/host")
    assert host is not None
    assert host.attrib == {"mac": "52:54:00:00:00:01", "ip": "10.213.9.10"}
    options = network.findall(f"{{{DNSMASQ_NS}}}options/{{{DNSMASQ_NS}}}option")
    assert [option.get("value") for option in options] == ["no-ping"]


def test_sockets_made_in_the_lab_live_in_its_namespace(netlab):  # noqa: F811
    lab_ns = os.stat(f"/run/netns/{netlab.netns}").st_ino
    with netlab.listen("127.0.0.1") as server:
        port = server.getsockname()[1]
        with netlab.connect("127.0.0.1", port) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"ping")
                assert accepted.recv(4) == b"ping"
            assert socket_netns(server) == lab_ns
            assert socket_netns(client) == lab_ns
    with socket.socket() as plain:
        assert socket_netns(plain) != lab_ns  # the test's own thread stayed where it was


def socket_netns(sock: socket.socket) -> int:
    """The inode of the network namespace a socket lives in (ioctl SIOCGSKNS)."""
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_a_guest_gets_a_lease_serves_tcp_and_the_lab_leaves_nothing(guest_kernel, guest_initramfs, tmp_path):
    with lab_session() as lab:
        lab.define_network("labnet", "10.213.0")
        bridge = lab.bridges[0]
        shown = subprocess.run(
            ["ip", "-n", lab.netns, "link", "show", bridge], capture_output=True, check=False
        )
        assert shown.returncode == 0  # the bridge lives in the lab's namespace
        mac = random_mac()
        started = time.monotonic()
        domain = start_guest(lab, "lab-a", guest_kernel, guest_initramfs, tmp_path, mac, CMDLINE)
        addresses = wait_until(lambda: lease_addresses(domain, mac), BOOT_TIMEOUT_S, "a lease")
        to_lease = time.monotonic() - started
        page = wait_until(lambda: try_get(lab, addresses[0]), BOOT_TIMEOUT_S, "the guest's page")
        to_tcp = time.monotonic() - started
        assert len(addresses) == 1
        assert addresses[0].startswith("10.213.0.")
        assert 100 <= int(addresses[0].rsplit(".", 1)[1]) <= 199  # from the DHCP range
        assert page == f"{NET_PAGE} {addresses[0]}\n"
        assert serial_value(tmp_path / "lab-a.log", NET_ADDRESS) == addresses[0]  # what the guest took
        url = f"http://{addresses[0]}:{NET_PORT}/"
        fetched = subprocess.run(
            lab.command("busybox", "wget", "-q", "-O", "-", url), capture_output=True, text=True
        )
        assert fetched.stdout == page  # a process run in the namespace reaches the guest too
        print(f"netlab timings: {lab.timings} boot_to_lease_s={to_lease:.2f} boot_to_tcp_s={to_tcp:.2f}")
    assert lab.leftovers() == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab.netns not in listed
    assert not Path("/sys/class/net", bridge).exists()


def test_two_guests_reach_each_other(netlab, guest_kernel, guest_initramfs, tmp_path):  # noqa: F811
    mac_a, mac_b = random_mac(), random_mac()
    fixed = "10.213.1.10"  # A's address is known before B boots, so B can fetch A's page
    netlab.define_network("labnet", "10.213.1", hosts={mac_a: fixed})
    started = time.monotonic()
    a = start_guest(netlab, "lab-a", guest_kernel, guest_initramfs, tmp_path, mac_a, CMDLINE)
    b_cmdline = f"{CMDLINE} netfetch={fixed}"
    b = start_guest(netlab, "lab-b", guest_kernel, guest_initramfs, tmp_path, mac_b, b_cmdline)
    b_log = tmp_path / "lab-b.log"
    fetched = wait_until(lambda: serial_value(b_log, NET_FETCHED), BOOT_TIMEOUT_S, "B's fetch of A's page")
    to_fetch = time.monotonic() - started
    assert fetched == f"{NET_PAGE} {fixed}"  # B, a guest, got A's page over the bridge
    assert wait_until(lambda: lease_addresses(a, mac_a), BOOT_TIMEOUT_S, "A's lease") == [fixed]
    b_addresses = wait_until(lambda: lease_addresses(b, mac_b), BOOT_TIMEOUT_S, "B's lease")
    assert b_addresses != [fixed]
    assert b_addresses[0].startswith("10.213.1.")
    assert lease_addresses(b, mac_a) == []  # matched per domain by MAC, not from the bare lease list
    for address in (fixed, b_addresses[0]):
        page = wait_until(
            functools.partial(try_get, netlab, address), BOOT_TIMEOUT_S, f"the page of {address}"
        )
        assert page == f"{NET_PAGE} {address}\n"
    print(f"netlab timings: two guests, boot to B's fetch of A's page {to_fetch:.2f} s")


def boot_then_fail(labs: list[NetLab], kernel: Path, initrd: Path, tmp: Path) -> None:
    with lab_session() as lab:
        labs.append(lab)
        lab.define_network("labnet", "10.213.2")
        start_guest(lab, "lab-a", kernel, initrd, tmp, random_mac(), CMDLINE)
        wait_until(lambda: (tmp / "lab-a.log").exists(), BOOT_TIMEOUT_S, "QEMU to start")
        raise RuntimeError("the test failed")  # with QEMU, dnsmasq and both daemons running


def test_the_lab_is_torn_down_when_the_test_fails(guest_kernel, guest_initramfs, tmp_path):
    labs: list[NetLab] = []
    with pytest.raises(RuntimeError, match="the test failed"):
        boot_then_fail(labs, guest_kernel, guest_initramfs, tmp_path)
    assert labs[0].leftovers() == []
