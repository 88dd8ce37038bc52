"""The agent's networks: the NAT network it may make and own, the NICs a
create gets (asked for, else one on the default network), and their MACs.

A MAC is chosen once, when the VM is made, in QEMU's locally administered
52:54:00 range, unique among the agent's VMs, and stored with the VM
(`store`): a domain made again at start (`reconcile`) gets the same one, so
the guest keeps its DHCP lease and its address. The network XML is built
with ElementTree, never pasted.
"""

from __future__ import annotations

import ipaddress
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from pinfold.model.errors import PinfoldError
from pinfold.model.vm import MAX_NICS, NETWORK_PATTERN, NIC, nic_problem

__all__ = [
    "NetworkInfo",
    "NicRefusedError",
    "OwnNetwork",
    "nat_network_xml",
    "network_info_from_xml",
    "random_mac",
    "resolve_nics",
]

#: QEMU's own prefix (locally administered, unicast): what libvirt itself picks from
MAC_PREFIX = "52:54:00"


@dataclass(frozen=True)
class NetworkInfo:
    """A network the hypervisor has: its bridge, its IPv4 subnet ("" for
    none) and whether it is started."""

    name: str
    bridge: str
    subnet: str
    active: bool


@dataclass(frozen=True)
class OwnNetwork:
    """The NAT network with DHCP the agent makes at start when it is missing
    (settings `own_network`): its name and IPv4 subnet; the host takes the
    subnet's first address, DHCP hands out the rest."""

    name: str
    subnet: ipaddress.IPv4Network

    def __post_init__(self) -> None:
        if not re.fullmatch(NETWORK_PATTERN, self.name):
            raise ValueError(f"own_network name {self.name!r}: use 1-63 letters, digits, '.', '_', '-'")
        if self.subnet.prefixlen > 29:
            raise ValueError(f"own_network subnet {self.subnet}: too small for DHCP (at most /29)")


class NicRefusedError(PinfoldError):
    """A NIC the agent will not make, with its `ErrorCode`."""


def random_mac(taken: Collection[str]) -> str:
    """A MAC in 52:54:00 that is not in `taken` (lower-case)."""
    while True:
        mac = MAC_PREFIX + "".join(f":{byte:02x}" for byte in os.urandom(3))
        if mac not in taken:
            return mac


def resolve_nics(
    asked: tuple[NIC, ...],
    default: NIC | None,
    networks: Iterable[NetworkInfo],
    bridge_exists: Callable[[str], bool],
    taken: Collection[str],
) -> tuple[NIC, ...]:
    """The NICs a VM gets: those asked for, else the `default` one (on the
    default network or bridge; none for None), each with its MAC (the one asked for, lower-case,
    else a new one). NicRefusedError for a malformed NIC, a network or bridge the
    host does not have, a network not started, or a MAC `taken` (or asked twice)."""
    wanted = asked or ((default,) if default is not None else ())
    if len(wanted) > MAX_NICS:
        raise NicRefusedError("invalid request", f"nics: at most {MAX_NICS}")
    known = {network.name: network for network in networks}
    used = set(taken)
    made: list[NIC] = []
    for nic in wanted:
        problem = nic_problem(nic)
        if problem is not None:
            raise NicRefusedError("invalid request", problem)
        _check_source(nic, known, bridge_exists)
        mac = nic.mac.lower() or random_mac(used)
        if mac in used:
            raise NicRefusedError("mac in use", f"{mac} is the MAC of another NIC on this host")
        used.add(mac)
        made.append(NIC(network=nic.network, bridge=nic.bridge, mac=mac))
    return tuple(made)


def _check_source(nic: NIC, known: dict[str, NetworkInfo], bridge_exists: Callable[[str], bool]) -> None:
    if nic.bridge:
        if not bridge_exists(nic.bridge):
            raise NicRefusedError("unknown network", f"no bridge {nic.bridge!r} on this host")
        return
    network = known.get(nic.network)
    if network is None:
        names = ", ".join(sorted(known)) or "none"
        raise NicRefusedError("unknown network", f"no network {nic.network!r} on this host (it has: {names})")
    if not network.active:
        raise NicRefusedError("invalid", f"network {nic.network!r} is not started")


#: libvirt's namespace for options passed to a network's dnsmasq
DNSMASQ_NAMESPACE = "http://libvirt.org/schemas/network/dnsmasq/1.0"
ET.register_namespace("dnsmasq", DNSMASQ_NAMESPACE)


def nat_network_xml(name: str, subnet: ipaddress.IPv4Network) -> str:
    """A libvirt NAT network on `subnet`: the host at its first address, DHCP
    over the others (libvirt names the bridge). dnsmasq is told `no-ping`:
    by default it pings each address before offering it, about 3 s a lease
    (measured: a cold address took 13 s here against 7 s with it), and only
    the agent's own guests live on this network, so nothing else can hold one."""
    hosts = list(subnet.hosts())
    network = ET.Element("network")
    ET.SubElement(network, "name").text = name
    ET.SubElement(network, "forward", mode="nat")
    ip = ET.SubElement(network, "ip", address=str(hosts[0]), netmask=str(subnet.netmask))
    ET.SubElement(ET.SubElement(ip, "dhcp"), "range", start=str(hosts[1]), end=str(hosts[-1]))
    options = ET.SubElement(network, f"{{{DNSMASQ_NAMESPACE}}}options")
    ET.SubElement(options, f"{{{DNSMASQ_NAMESPACE}}}option", value="no-ping")
    return ET.tostring(network, encoding="unicode")


def network_info_from_xml(document: str, active: bool) -> NetworkInfo:
    """A libvirt network's name, bridge and first IPv4 subnet, from its XML."""
    network = ET.fromstring(document)
    bridge = network.find("bridge")
    subnet = ""
    for ip in network.iterfind("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        mask = ip.get("netmask") or ip.get("prefix") or "24"
        subnet = str(ipaddress.IPv4Interface(f"{ip.get('address')}/{mask}").network)
        break
    name = network.findtext("name") or ""
    return NetworkInfo(name, bridge.get("name", "") if bridge is not None else "", subnet, active)
