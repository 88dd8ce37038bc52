"""The agent's networks and NICs on the sim driver (the same code paths the
libvirt driver takes, tests/agent/test_netlab_agent.py runs them on real
libvirt): the default network, NICs asked for, MACs chosen, stored and kept,
bad NICs refused with nothing defined or stored, the agent's own network, and
the API's views, over a real server on loopback."""

from __future__ import annotations

import ipaddress
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from pinfold.agent.api import create_app
from pinfold.agent.drivers import SimDriver
from pinfold.agent.networks import (
    NetworkInfo,
    NicRefusedError,
    OwnNetwork,
    nat_network_xml,
    network_info_from_xml,
    resolve_nics,
)
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.model.vm import NIC
from tests.servers import serving

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OWN = OwnNetwork("pinfold-own", ipaddress.IPv4Network("10.77.0.0/24"))


def open_agent(tmp_path: Path, topology, driver: SimDriver, **settings: object) -> Agent:
    values: dict[str, object] = {"domain_type": "qemu", **settings}
    return Agent.open(topology, driver, Store(tmp_path / "agent.db"), AgentSettings(**values))  # type: ignore[arg-type]


def stored_macs(tmp_path: Path) -> list[str]:
    db = sqlite3.connect(tmp_path / "agent.db")
    try:
        return [mac for (mac,) in db.execute("SELECT mac FROM nics ORDER BY domain, position")]
    finally:
        db.close()


def test_a_vm_gets_a_nic_on_the_default_network_with_a_stable_mac(tmp_path, i7):
    driver = SimDriver(networks=["default"])
    agent = open_agent(tmp_path, i7, driver, default_network="default")
    vm = agent.create(VMRequest("web", 1, 256))
    (nic,) = vm.nics
    assert nic.network == "default"
    assert nic.mac.startswith("52:54:00:")
    assert driver.info("web").spec.nics == (nic,)  # type: ignore[union-attr]  # in the domain
    assert stored_macs(tmp_path) == [nic.mac]
    agent.close()
    again = Agent.open(i7, driver, Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    assert again.find("web").nics == (nic,)  # type: ignore[union-attr]  # kept, not chosen again
    again.close()


def test_a_vm_gets_its_nic_on_the_default_bridge_and_a_missing_one_is_refused(tmp_path, i7):
    """An operator's `br0` served by the site's DHCP (RAPID's hosts): the NIC a VM
    asking none gets; the bridge is checked as one asked for is."""
    agent = open_agent(tmp_path, i7, SimDriver(bridges=["br0"]), default_bridge="br0")
    (nic,) = agent.create(VMRequest("web", 1, 256)).nics
    assert (nic.bridge, nic.network, nic.mac[:8]) == ("br0", "", "52:54:00")
    agent.close()
    other = open_agent(tmp_path / "other", i7, SimDriver(), default_bridge="br0")
    with pytest.raises(AgentError) as refused:
        other.create(VMRequest("web", 1, 256))
    assert refused.value.code == "unknown network"
    other.close()


def test_without_a_default_network_a_vm_has_no_nic_as_before(tmp_path, i7):
    agent = open_agent(tmp_path, i7, SimDriver(networks=["default"]))
    assert agent.create(VMRequest("web", 1, 256)).nics == ()
    assert agent.nic_addresses("web") == []
    assert agent.addresses("web") == ["198.51.100.1"]  # the sim's address, as before
    agent.close()


def test_nics_asked_for_are_made_with_their_macs(tmp_path, i7):
    driver = SimDriver(networks=["default", "lab"], bridges=["br0"])
    agent = open_agent(tmp_path, i7, driver, default_network="default")
    asked = (NIC(network="lab", mac="02:00:00:AA:00:01"), NIC(bridge="br0"))
    vm = agent.create(VMRequest("web", 1, 256, nics=asked))
    assert vm.nics[0] == NIC(network="lab", mac="02:00:00:aa:00:01")
    assert vm.nics[1].bridge == "br0"
    assert vm.nics[1].mac.startswith("52:54:00:")
    addresses = agent.nic_addresses("web")
    assert addresses == [(vm.nics[0], ["198.51.100.1"]), (vm.nics[1], [])]  # simulated, on the first NIC
    agent.close()


@pytest.mark.parametrize(
    ("nics", "code"),
    [
        ((NIC(network="nowhere"),), "unknown network"),
        ((NIC(bridge="br9"),), "unknown network"),
        ((NIC(network="default", mac="52:54:00:00:00"),), "invalid request"),
        ((NIC(network="default", mac="01:00:5e:00:00:01"),), "invalid request"),
        ((NIC(network="default", bridge="br0"),), "invalid request"),
        ((NIC(network="default", mac="52:54:00:00:00:01"),) * 2, "mac in use"),
        ((NIC(network="default", mac="52:54:00:00:00:07"),), "mac in use"),  # the first VM's
        ((NIC(network="default"),) * 9, "invalid request"),
    ],
)
def test_bad_nics_are_refused_with_nothing_defined_or_stored(tmp_path, i7, nics, code):
    driver = SimDriver(networks=["default"])
    agent = open_agent(tmp_path, i7, driver)
    agent.create(VMRequest("first", 1, 256, nics=(NIC(network="default", mac="52:54:00:00:00:07"),)))
    with pytest.raises(AgentError) as refused:
        agent.create(VMRequest("web", 1, 256, nics=nics))
    assert refused.value.code == code
    assert [g.name for g in driver.guests()] == ["first"]
    assert agent.find("web") is None
    assert stored_macs(tmp_path) == ["52:54:00:00:00:07"]
    assert agent.snapshot().pins.keys() == {"first"}
    agent.close()


def test_a_stopped_network_is_refused(tmp_path, i7):
    with pytest.raises(NicRefusedError, match="not started") as refused:
        resolve_nics((NIC(network="n"),), None, [NetworkInfo("n", "br", "", False)], lambda _: False, ())
    assert refused.value.code == "invalid"


def test_chosen_macs_avoid_those_taken():
    taken = {f"52:54:00:00:00:{i:02x}" for i in range(256)}
    made = resolve_nics((NIC(network="n"),) * 8, None, [NetworkInfo("n", "br", "", True)], bool, taken)
    macs = [nic.mac for nic in made]
    assert len(set(macs)) == 8
    assert not taken & set(macs)


def test_the_own_network_is_made_once_owned_and_reported(tmp_path, i7):
    driver = SimDriver(networks=["default"])
    agent = open_agent(tmp_path, i7, driver, own_network=OWN)
    assert {n.name: n.subnet for n in driver.networks()} == {"default": "", "pinfold-own": "10.77.0.0/24"}
    shown = {n["name"]: n for n in agent.networks()}
    assert shown["pinfold-own"]["owned"] is True
    assert shown["default"]["owned"] is False
    agent.close()
    again = open_agent(tmp_path, i7, driver, own_network=OWN)  # it exists: not made again
    assert [n.name for n in driver.networks()] == ["default", "pinfold-own"]
    again.close()


def test_a_network_of_that_name_the_agent_did_not_make_is_not_its_own(tmp_path, i7):
    driver = SimDriver(networks=["pinfold-own"])
    agent = open_agent(tmp_path, i7, driver, own_network=OWN)
    assert agent.networks() == [
        {"name": "pinfold-own", "bridge": "sim-pinfold-own", "subnet": None, "active": True, "owned": False,
         "default": False}
    ]  # fmt: skip
    agent.close()


def test_a_stopped_own_network_is_started(tmp_path, i7):
    driver = SimDriver()
    open_agent(tmp_path, i7, driver, own_network=OWN).close()
    driver._networks["pinfold-own"] = NetworkInfo("pinfold-own", "b", "10.77.0.0/24", False)
    open_agent(tmp_path, i7, driver, own_network=OWN).close()
    assert [n.active for n in driver.networks()] == [True]


def test_nat_network_xml_and_reading_networks_back():
    network = ET.fromstring(nat_network_xml("own", ipaddress.IPv4Network("10.77.0.0/24")))
    assert network.find("forward").get("mode") == "nat"  # type: ignore[union-attr]
    assert network.find("ip").attrib == {"address": "10.77.0.1", "netmask": "255.255.255.0"}  # type: ignore[union-attr]
    assert network.find("ip/dhcp/range").attrib == {"start": "10.77.0.2", "end": "10.77.0.254"}  # type: ignore[union-attr]
    # dnsmasq pings each address before offering it (about 3 s a lease): the agent's own
    # network holds only the agent's guests, so it offers at once
    dnsmasq = "{http://libvirt.org/schemas/network/dnsmasq/1.0}"
    options = [o.get("value") for o in network.iterfind(f"{dnsmasq}options/{dnsmasq}option")]
    assert options == ["no-ping"]
    libvirts = (
        "<network><name>default</name><bridge name='virbr0' stp='on'/>"
        "<ip family='ipv6' address='fd00::1' prefix='64'/><ip address='192.168.122.1' prefix='24'/></network>"
    )
    assert network_info_from_xml(libvirts, True) == NetworkInfo("default", "virbr0", "192.168.122.0/24", True)


@pytest.mark.parametrize("subnet", ["10.0.0.0/30", "10.0.0.0/32"])
def test_an_own_network_too_small_for_dhcp_is_refused(subnet):
    with pytest.raises(ValueError, match="too small"):
        OwnNetwork("own", ipaddress.IPv4Network(subnet))


def test_a_version_2_store_is_migrated_and_its_vms_have_no_nics(tmp_path, i7):
    path = tmp_path / "agent.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        """
        DROP TABLE nics; DROP TABLE owned_networks;
        UPDATE meta SET value = '2' WHERE key = 'schema_version';
        INSERT INTO vms (name, vcpus, memory_mib, ratio, state, domain)
            VALUES ('old', 1, 128, 1.0, 'running', 'old');
        INSERT INTO vnode_cpus VALUES (1.0, 0, 1);
        """
    )
    db.close()
    store = Store(path)
    _, vms = store.load()
    assert vms["old"].nics == ()
    assert store.macs() == set()
    assert store.owned_networks() == set()
    store.close()
    version = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == ("3",)


def test_the_api_takes_nics_shows_them_and_the_hosts_networks(tmp_path, i7):
    driver = SimDriver(networks=["default"])
    agent = open_agent(tmp_path, i7, driver, default_network="default", own_network=OWN)
    try:
        with serving(create_app(agent, TOKEN)) as url, httpx.Client(base_url=url, timeout=10) as http:
            body = {"name": "web", "vcpus": 1, "memory_mib": 256, "nics": [{"network": "pinfold-own"}]}
            created = http.post("/api/v1/vms", json=body, headers=AUTH)
            assert created.status_code == 201, created.text
            (nic,) = created.json()["nics"]
            assert (nic["network"], nic["bridge"], nic["addresses"]) == (
                "pinfold-own",
                None,
                ["198.51.100.1"],
            )
            assert created.json()["addresses"] == ["198.51.100.1"]
            assert http.get("/api/v1/vms/web").json()["nics"] == [nic]
            assert http.get("/api/v1/vms").json()[0]["nics"] == [nic]
            again = {**body, "name": "web2", "nics": [{"network": "default", "mac": nic["mac"]}]}
            refused = http.post("/api/v1/vms", json=again, headers=AUTH)
            assert (refused.status_code, refused.json()["error"]) == (409, "mac in use"), refused.text
            unknown = http.post("/api/v1/vms", json={**again, "nics": [{"network": "x"}]}, headers=AUTH)
            assert (unknown.status_code, unknown.json()["error"]) == (422, "unknown network"), unknown.text
            malformed = http.post("/api/v1/vms", json={**again, "nics": [{"network": "default", "mac": "x"}]},
                                  headers=AUTH)  # fmt: skip
            assert (malformed.status_code, malformed.json()["error"]) == (422, "invalid request")
            assert [vm["name"] for vm in http.get("/api/v1/vms").json()] == ["web"]
            deployed = http.get(
                "/deploy", params={"name": "s", "cpu": 1, "mem": 1, "oc": 1, "qcow2": "", "token": TOKEN}
            )
            assert deployed.json()["success"] is True, deployed.text
            networks = {n["name"]: n for n in http.get("/api/v1/host").json()["networks"]}
    finally:
        agent.close()
    slack = agent.find("s")
    assert slack is not None
    assert [n.network for n in slack.nics] == ["default"]  # SlackVM's /deploy: the default network
    assert networks["pinfold-own"]["owned"] is True
    assert networks["pinfold-own"]["subnet"] == "10.77.0.0/24"
    assert networks["default"]["default"] is True
