"""The heartbeat's NICs and addresses (agent/addresses.py): what it carries,
and that the hypervisor is asked only for the VMs that need it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

from pinfold.agent.addresses import AddressBook
from pinfold.agent.drivers import SimDriver
from pinfold.agent.registration import heartbeat_document
from pinfold.agent.service import Agent, AgentSettings, VMRequest
from pinfold.agent.store import Store, StoredVM
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import MAX_NIC_ADDRESSES, MAX_NICS, NIC
from pinfold.placement.spec import VMSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingSim(SimDriver):
    """The sim driver, counting the per-VM address look-ups (a libvirt call each)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.looked_up: list[str] = []
        self.hide = False

    def nic_addresses(self, name: str) -> dict[str, list[str]]:
        self.looked_up.append(name)
        return {} if self.hide else super().nic_addresses(name)


def open_agent(tmp_path: Path, topology, driver: SimDriver) -> Agent:
    settings = AgentSettings(domain_type="qemu", default_network="default")
    return Agent.open(topology, driver, Store(tmp_path / "agent.db"), settings)


def test_the_heartbeat_carries_each_vms_nics_with_mac_and_addresses(tmp_path, i7):
    agent = open_agent(tmp_path, i7, SimDriver(networks=["default"]))
    vm = agent.create(VMRequest("web", 1, 256))
    beat = heartbeat_document(agent, None, AddressBook(agent))
    (nic,) = vm.nics
    assert beat["nics"] == {
        "web": [{"network": "default", "bridge": None, "mac": nic.mac, "addresses": ["198.51.100.1"]}]
    }
    assert "nics" not in heartbeat_document(agent, None)  # without a book, as older agents beat
    agent.close()


def test_the_book_asks_only_for_vms_unknown_changed_unaddressed_or_due(tmp_path, i7):
    driver = CountingSim(networks=["default"])
    agent = open_agent(tmp_path, i7, driver)
    agent.create(VMRequest("a", 1, 256))
    agent.create(VMRequest("b", 1, 256))
    clock = Clock()
    book = AddressBook(agent, recheck_s=60, clock=clock)

    def beat() -> dict[str, Any]:
        driver.looked_up.clear()
        nics: dict[str, Any] = heartbeat_document(agent, None, book)["nics"]
        return nics

    assert set(beat()) == {"a", "b"}
    assert sorted(driver.looked_up) == ["a", "b"]
    beat()
    assert driver.looked_up == []  # known, complete, not due: no call at all
    agent.suspend("a")
    assert beat()["a"]
    assert driver.looked_up == ["a"]
    clock.now += 60
    beat()
    assert sorted(driver.looked_up) == ["a", "b"]  # due for the recheck
    agent.create(VMRequest("c", 1, 256))
    driver.hide = True  # no lease yet
    assert beat()["c"][0]["addresses"] == []
    assert driver.looked_up == ["c"]
    beat()
    assert driver.looked_up == ["c"]  # no address yet: asked every beat until it has one
    driver.hide = False
    assert beat()["c"][0]["addresses"]
    assert driver.looked_up == ["c"]
    agent.delete("c")
    assert "c" not in beat()
    assert driver.looked_up == []
    agent.close()


def test_a_beat_asks_for_at_most_per_beat_vms_the_longest_unasked_first(tmp_path, i7):
    driver = CountingSim(networks=["default"])
    agent = open_agent(tmp_path, i7, driver)
    for name in ("a", "b", "c"):
        agent.create(VMRequest(name, 1, 256))
    book = AddressBook(agent, per_beat=2, clock=Clock())
    first = heartbeat_document(agent, None, book)["nics"]
    assert len(first) == 2
    assert len(driver.looked_up) == 2
    second = heartbeat_document(agent, None, book)["nics"]
    assert set(second) == {"a", "b", "c"}
    assert len(driver.looked_up) == 3
    agent.close()


def test_a_vm_without_nics_is_neither_asked_for_nor_carried(tmp_path, i7):
    driver = CountingSim()
    agent = Agent.open(i7, driver, Store(tmp_path / "agent.db"), AgentSettings(domain_type="qemu"))
    agent.create(VMRequest("bare", 1, 256))
    assert heartbeat_document(agent, None, AddressBook(agent))["nics"] == {}
    assert driver.looked_up == []
    agent.close()


def test_a_nic_with_many_addresses_carries_as_many_as_the_controller_takes(tmp_path, i7):
    """A guest agent may report dozens of IPv6 addresses on one NIC: the
    controller refuses a heartbeat with more than MAX_NIC_ADDRESSES on one
    (422, the whole beat), so the agent sends the first ones only."""
    from pinfold.model.vm import MAX_NIC_ADDRESSES

    many = [f"2001:db8::{i:x}" for i in range(1, 40)]

    class Chatty(SimDriver):
        def nic_addresses(self, name: str) -> dict[str, list[str]]:
            return {mac: ["192.0.2.9", *many] for mac in super().nic_addresses(name)}

    agent = open_agent(tmp_path, i7, Chatty(networks=["default"]))
    agent.create(VMRequest("web", 1, 256))
    (nic,) = heartbeat_document(agent, None, AddressBook(agent))["nics"]["web"]
    assert nic["addresses"] == ["192.0.2.9", *many][:MAX_NIC_ADDRESSES]
    agent.close()


class ManyAddresses:
    """An agent whose every VM has the most NICs, each with the most IPv6
    addresses, of the longest form: the model's bounds, all at once."""

    def nic_addresses(self, name: str) -> list[tuple[NIC, list[str]]]:
        return [
            (
                NIC(network="default", mac=f"52:54:00:00:{i:02x}:{n:02x}"),
                [f"2001:db8:ffff:ffff:ffff:ffff:{n:04x}:{k:04x}" for k in range(MAX_NIC_ADDRESSES)],
            )
            for n in range(MAX_NICS)
            for i in [hash(name) & 0xFF]
        ]


def test_a_beat_keeps_its_nics_under_the_bound_whatever_the_vms_report(caplog):
    """800 VMs with 8 NICs of 16 long IPv6 addresses each are ~5 MB of JSON,
    over the controller's 4 MiB body limit: every beat would be a 413 and the
    host taken for down. The book sends at most NICS_MAX_BYTES of them (the
    last asked first: the others keep what the controller has), and says so
    in the log once."""
    from pinfold.controller.config import ControllerConfig

    nics = tuple(NIC(network="default", mac=f"52:54:00:00:00:{n:02x}") for n in range(MAX_NICS))
    vms = {
        f"vm-{i:04d}": StoredVM(VMSpec(f"vm-{i:04d}", 1, 256), "", "", VMState.RUNNING, None, nics=nics)
        for i in range(800)
    }
    book = AddressBook(cast(Agent, ManyAddresses()), per_beat=len(vms), clock=Clock())
    with caplog.at_level(logging.WARNING, logger="pinfold.agent.addresses"):
        beats = [book.nics(vms) for _ in range(2)]
    limit = ControllerConfig.model_fields["max_body_bytes"].default
    for carried in beats:
        assert len(json.dumps(carried)) <= limit // 2  # room for the rest of the beat
        assert 0 < len(carried) < len(vms)
    from pinfold.agent.addresses import NICS_MAX_BYTES

    assert all(len(json.dumps(carried)) <= NICS_MAX_BYTES for carried in beats)
    assert len([r for r in caplog.records if "left out" in r.getMessage()]) == 1


def test_a_whole_beat_of_a_large_host_stays_under_the_controllers_body_limit(caplog):
    """A 512-CPU host with 2048 one-vCPU VMs at level 4.0 pins each VM to its
    whole 512-CPU vNode: ~5 MB of pins, over the controller's 4 MiB body limit
    with the rest of the beat (every beat a 413, the host taken for down). The
    beat keeps its states and figures whole, its NICs within their bound, and
    carries the per-VM usage and then the pins within what is left, whole VMs
    each (`bounded`), saying once that it cut; the controller takes it."""
    from types import SimpleNamespace

    from pinfold.agent.bounded import HEARTBEAT_MAX_BYTES
    from pinfold.agent.monitor import HostSample
    from pinfold.agent.registration import BeatBounds
    from pinfold.controller.api import Heartbeat
    from pinfold.controller.config import ControllerConfig

    cpus = list(range(512))
    names = [f"vm-{i:04d}-".ljust(63, "x") for i in range(2048)]
    nics = tuple(NIC(network="default", mac=f"52:54:00:00:00:{n:02x}") for n in range(MAX_NICS))
    vms = {n: StoredVM(VMSpec(n, 1, 128, 4.0), "", "", VMState.RUNNING, None, nics=nics) for n in names}
    snapshot = SimpleNamespace(status={}, vms=vms, pins=dict.fromkeys(names, cpus), vnodes={4.0: cpus})
    stub = SimpleNamespace(snapshot=lambda: snapshot, nic_addresses=ManyAddresses().nic_addresses)
    per_vm = {n: {"cpu_cores": 0.1234, "memory_mib": 117.5} for n in names}
    sample = HostSample(0.0, dict.fromkeys(cpus, 0.5), 0.5, 65536.0, 32768.0, per_vm, {})
    book = AddressBook(cast(Agent, stub), per_beat=len(vms), clock=Clock())
    bounds = BeatBounds()
    with caplog.at_level(logging.WARNING, logger="pinfold.agent.bounded"):
        beats = [
            heartbeat_document(cast(Agent, stub), cast(Any, SimpleNamespace(latest=sample)), book, bounds)
            for _ in range(2)
        ]
    limit = ControllerConfig.model_fields["max_body_bytes"].default
    for beat in beats:
        body = json.dumps(beat)
        assert len(body) <= HEARTBEAT_MAX_BYTES < limit
        Heartbeat.model_validate_json(body)  # as the controller reads it
        assert beat["vms"] == dict.fromkeys(names, "running")  # whole: the controller settles by them
        assert beat["usage"]["vms"] == per_vm  # small enough to go whole
        assert 0 < len(beat["nics"]) < len(names)
        assert 0 < len(beat["pins"]) < len(names)
        assert all(pins == cpus for pins in beat["pins"].values())
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len([m for m in said if "pins" in m]) == 1
    assert len([m for m in said if "NICs" in m]) == 1
