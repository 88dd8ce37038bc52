"""A console round trip on a real TCG guest: the busybox guest runs a shell on
its serial console (`shell`), on the network lab's private libvirtd (never the
system one); the agent serves it over its WebSocket on loopback. The command
typed is `echo pinfold-$((40+2))-console`: only a shell that ran it prints
`pinfold-42-console` (the terminal's echo of the line shows `$((40+2))`).
Needs root, `ip netns` and libvirt (CI sets PINFOLD_REQUIRE_LIBVIRT=1: no skips)."""

from __future__ import annotations

import statistics
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pinfold.agent.api import create_app
from pinfold.agent.service import Agent, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.topology import Topology
from tests.agent.guest import SHELL_MARKER
from tests.agent.test_console import AUTH, TOKEN, console, read_until, refusal, ws_url
from tests.netlab import lab_session, wait_until
from tests.servers import serving

BOOT_TIMEOUT_S = 120.0
COMMAND = b"echo pinfold-$((40+2))-console\r"
ANSWER = b"pinfold-42-console"
ROUND_TRIPS = 20


@dataclass
class LabAgent:
    agent: Agent
    url: str
    log: Path


@pytest.fixture
def lab_agent(guest_kernel: Path, guest_initramfs: Path, tmp_path: Path) -> Iterator[LabAgent]:
    """An agent on the lab's libvirtd with one shell guest `shell-1` booted, served on loopback."""
    with lab_session() as lab:
        yield from _agent_in(lab.uri, guest_kernel, guest_initramfs, tmp_path)


def _agent_in(uri: str, guest_kernel: Path, guest_initramfs: Path, tmp_path: Path) -> Iterator[LabAgent]:
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    driver = LibvirtDriver(uri)
    settings = AgentSettings(
        domain_type="qemu", kernel=guest_kernel, initrd=guest_initramfs,
        cmdline="console=ttyS0 panic=-1 shell", serial_dir=tmp_path / "consoles",
    )  # fmt: skip
    (tmp_path / "consoles").mkdir()
    agent = Agent.open(Topology.discover(), driver, Store(tmp_path / "agent.db"), settings)
    try:
        vm = agent.create(VMRequest("shell-1", 1, 128, 2.0))
        log = tmp_path / "consoles" / f"{vm.domain}.log"
        wait_until(
            lambda: log.exists() and SHELL_MARKER in log.read_text(errors="replace"),
            BOOT_TIMEOUT_S, "the guest's shell on its serial console",
        )  # fmt: skip
        with serving(create_app(agent, TOKEN)) as url:
            yield LabAgent(agent, url, log)
    finally:
        if agent.find("shell-1") is not None:
            agent.delete("shell-1")
        agent.close()
        driver.close()


def round_trip_s(ws: object, reader: object | None = None) -> float:
    """Seconds from typing COMMAND to seeing its output (in the reader's stream too)."""
    started = time.monotonic()
    ws.send(COMMAND)  # type: ignore[attr-defined]
    read_until(ws, ANSWER)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    if reader is not None:
        read_until(reader, ANSWER)  # type: ignore[arg-type]
    return elapsed


def test_a_console_round_trip_on_a_real_guest(lab_agent: LabAgent):
    url = lab_agent.url
    with console(url, "shell-1") as writer, console(url, "shell-1", mode="read") as reader:
        assert refusal(ws_url(url, "shell-1"), AUTH)[0] == 409  # the writer's seat is taken
        first = round_trip_s(writer, reader)
        times = [round_trip_s(writer) for _ in range(ROUND_TRIPS)]
    print(f"\nconsole round trip: first {first * 1000:.1f} ms, median of {ROUND_TRIPS} "
          f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")  # fmt: skip
    log = httpx.get(f"{url}/api/v1/vms/shell-1/console/log", headers=AUTH)
    assert log.status_code == 200
    assert SHELL_MARKER.encode() in log.content
    assert ANSWER in log.content
    assert refusal(ws_url(url, "shell-1"))[0] == 401


def test_the_console_ends_with_its_guest_and_the_log_goes_with_the_vm(lab_agent: LabAgent):
    url, agent = lab_agent.url, lab_agent.agent
    with console(url, "shell-1") as ws:
        round_trip_s(ws)
        agent.shutdown("shell-1")
        with pytest.raises(ConnectionClosed) as closed:
            read_until(ws, b"never printed")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000
    status, body = refusal(ws_url(url, "shell-1"), AUTH)
    assert (status, body["error"]) == (409, "invalid")
    assert lab_agent.log.exists()
    agent.delete("shell-1")
    assert not lab_agent.log.exists()


def test_a_console_round_trip_through_the_controller_on_a_real_guest(
    guest_kernel: Path, guest_initramfs: Path, tmp_path: Path, i7: Topology
):
    """The same round trip through the controller's proxy to an agent on the lab's libvirtd."""
    from pinfold.agent.drivers.libvirt import LibvirtDriver
    from tests.controller.cluster import ADMIN_AUTH, LocalCluster
    from tests.controller.test_console import ws_url as controller_ws

    settings = AgentSettings(
        domain_type="qemu", kernel=guest_kernel, initrd=guest_initramfs,
        cmdline="console=ttyS0 panic=-1 shell", serial_dir=tmp_path / "consoles",
    )  # fmt: skip
    (tmp_path / "consoles").mkdir()
    with lab_session() as lab:
        driver = LibvirtDriver(lab.uri)
        cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
        try:
            cluster.add_host("lab", driver=driver, settings=settings, topology=Topology.discover())
            body = {"name": "shell-2", "vcpus": 1, "memory_mib": 128, "ratio": 2.0}
            assert cluster.http.post("/api/v1/vms", json=body).status_code == 201
            log = cluster.http.get
            wait_until(
                lambda: SHELL_MARKER.encode() in log("/api/v1/vms/shell-2/console/log").content,
                BOOT_TIMEOUT_S, "the guest's shell, in the log read through the controller",
            )  # fmt: skip
            with connect(controller_ws(cluster, "shell-2"), additional_headers=ADMIN_AUTH) as ws:
                first = round_trip_s(ws)
                times = [round_trip_s(ws) for _ in range(ROUND_TRIPS)]
            median = statistics.median(times)
            print(
                f"\nconsole round trip through the controller: first {first * 1000:.1f} ms, "
                f"median of {ROUND_TRIPS} {median * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
            )
            assert cluster.http.delete("/api/v1/vms/shell-2").status_code == 204
            assert not list((tmp_path / "consoles").iterdir())
        finally:
            cluster.close()
            driver.close()


def before_consoles(document: str, log: Path) -> str:
    """A domain's XML as pinfold defined it before consoles: its serial a
    file (the log), no <console> of its own (libvirt mirrors the serial)."""
    domain = ET.fromstring(document)
    devices = domain.find("devices")
    assert devices is not None
    for old in devices.findall("serial") + devices.findall("console"):
        devices.remove(old)
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(log))
    ET.SubElement(serial, "target", port="0")
    return ET.tostring(domain, encoding="unicode")


def test_a_domain_from_before_consoles_gets_one_at_its_next_boot_and_a_clear_409_until(
    guest_kernel: Path, guest_initramfs: Path, tmp_path: Path
):
    """A domain an older pinfold defined with a file serial has no console
    (libvirt attaches one only to a pty). While it runs, a console is a 409
    that says why and what to do; the agent's start-up gives its definition
    a console without touching the running guest (same QEMU, same live
    serial); a start by the agent boots it with one (and gives one first
    to a shut-off domain still defined the old way). One TCG guest."""
    import libvirt

    from pinfold.agent.drivers.libvirt import LibvirtDriver

    settings = AgentSettings(
        domain_type="qemu", kernel=guest_kernel, initrd=guest_initramfs, shutdown_timeout_s=5.0,
        cmdline="console=ttyS0 panic=-1 shell", serial_dir=tmp_path / "consoles",
    )  # fmt: skip
    (tmp_path / "consoles").mkdir()
    log = tmp_path / "consoles" / "old-1.log"
    with lab_session() as lab:
        driver = LibvirtDriver(lab.uri)
        conn = libvirt.open(lab.uri)
        agent = Agent.open(Topology.discover(), driver, Store(tmp_path / "agent.db"), settings)
        try:
            agent.create(VMRequest("old-1", 1, 128, 2.0))
            domain = conn.lookupByName("old-1")
            old_xml = before_consoles(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), log)
            domain.destroy()
            log.unlink()
            conn.defineXML(old_xml)
            domain.create()
            booted = lambda: log.exists() and SHELL_MARKER in log.read_text(errors="replace")  # noqa: E731
            wait_until(booted, BOOT_TIMEOUT_S, "the old domain's shell in its file serial's log")
            with serving(create_app(agent, TOKEN)) as url:
                status, body = refusal(ws_url(url, "old-1"), AUTH)
            assert (status, body["error"]) == (409, "invalid"), body
            assert "before pinfold had consoles" in str(body["detail"])
            # the agent starts again: the definition gets a console, the running guest is left alone
            qemu = domain.ID()
            agent.close()
            agent = Agent.open(Topology.discover(), driver, Store(tmp_path / "agent.db"), settings)
            assert domain.ID() == qemu
            assert "type='file'" in domain.XMLDesc(0).replace('"', "'")  # live: as it booted
            persistent = ET.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            assert persistent.find("devices/serial[@type='pty']/log").get("file") == str(log)  # type: ignore[union-attr]
            with serving(create_app(agent, TOKEN)) as url:
                assert refusal(ws_url(url, "old-1"), AUTH)[0] == 409
                agent.shutdown("old-1")
                conn.defineXML(old_xml)  # a shut-off domain still defined the old way: the start gives one
                log.write_bytes(b"")
                agent.start("old-1")
                wait_until(booted, BOOT_TIMEOUT_S, "the shell, logged by the pty serial")
                with console(url, "old-1") as ws:
                    round_trip_s(ws)
            assert ANSWER in log.read_bytes()  # the console's output is logged to the same file
        finally:
            if agent.find("old-1") is not None:
                agent.delete("old-1")
            agent.close()
            conn.close()
            driver.close()
