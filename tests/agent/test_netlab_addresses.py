"""A real guest's DHCP address reaches the controller, in the network lab
(tests/netlab.py: a private libvirtd in a network namespace; traffic only to
loopback and into that namespace): an agent on the lab's libvirtd, registered
with a controller served on loopback, reports the lease of its VM's NIC in
its heartbeats; the controller's API, CLI and /metrics show it, and it is the
address the guest took. Also measures what the heartbeat would pay to ask
libvirt for a VM's addresses on every beat (agent/addresses.py says why it
does not). Needs root, `ip netns` and libvirt."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from pinfold.agent.addresses import AddressBook
from pinfold.agent.registration import heartbeat_document
from pinfold.agent.service import AgentSettings
from pinfold.cli import app
from pinfold.topology import Topology
from tests.agent.guest import NET_ADDRESS
from tests.agent.test_netlab import BOOT_TIMEOUT_S, CMDLINE, serial_value
from tests.controller.cluster import ADMIN, Host, LocalCluster, start_host
from tests.netlab import NetLab, netlab, wait_until  # noqa: F401  (fixture)


@contextmanager
def lab_cluster(
    lab: NetLab, tmp: Path, kernel: Path, initrd: Path, network: str
) -> Iterator[tuple[LocalCluster, Host]]:
    """A controller on loopback (SQLite) and one agent on the lab's libvirtd,
    registered with it; every domain deleted and all closed on the way out."""
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    topology = Topology.discover()
    cluster = LocalCluster(tmp, f"sqlite:///{tmp / 'controller.db'}", topology)
    driver = LibvirtDriver(lab.uri)
    settings = AgentSettings(
        domain_type="qemu", kernel=kernel, initrd=initrd, cmdline=CMDLINE, serial_dir=tmp,
        critical_size=0, reserved_memory_mib=0, default_network=network,
    )  # fmt: skip
    try:
        host = start_host(tmp, topology, "lab-1", cluster.url, driver, settings)
        cluster.hosts["lab-1"] = host
        yield cluster, host
    finally:
        cluster.close()
        driver.close()


def reported_address(cluster: LocalCluster, name: str) -> str | None:
    shown = cluster.http.get(f"/api/v1/vms/{name}").json()
    return shown["addresses"][0] if shown["addresses"] else None


def test_a_real_guests_dhcp_address_reaches_the_controllers_api_cli_and_metrics(
    netlab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
    tmp_path,
):
    netlab.define_network("labaddr", "10.213.7")
    with lab_cluster(netlab, tmp_path, guest_kernel, guest_initramfs, "labaddr") as (cluster, host):
        started = time.monotonic()
        created = cluster.http.post("/api/v1/vms", json={"name": "web", "vcpus": 1, "memory_mib": 128})
        assert created.status_code == 201, created.text
        address = wait_until(lambda: reported_address(cluster, "web"), BOOT_TIMEOUT_S, "web's address")
        to_controller = time.monotonic() - started
        assert ipaddress.ip_address(address) in ipaddress.ip_network("10.213.7.0/24")
        printed = wait_until(lambda: serial_value(tmp_path / "web.log", NET_ADDRESS), 30, "the guest's line")
        assert printed == address  # what the guest took is what the controller shows
        (nic,) = cluster.http.get("/api/v1/vms/web").json()["nics"]
        on_agent = host.agent.find("web")
        assert on_agent is not None
        assert (nic["network"], nic["mac"], nic["addresses"]) == ("labaddr", on_agent.nics[0].mac, [address])

        env = {"PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": ADMIN, "COLUMNS": "250"}
        listed = CliRunner().invoke(app, ["vm", "list"], env=env)
        (row,) = [line for line in listed.output.splitlines() if "web" in line]
        assert address in row
        series = (
            f'pinfold_vm_address_info{{address="{address}",host="lab-1",mac="{nic["mac"]}",vm="web"}} 1.0'
        )
        assert series in cluster.http.get("/metrics").text

        costs = cost_of_asking(host)
        assert cluster.http.delete("/api/v1/vms/web").status_code == 204
    assert netlab.connection().listAllDomains() == []
    print(
        f"netlab addresses: create to the address in the controller's API {to_controller:.2f} s; "
        f"libvirt asked for one VM's addresses {costs['ask_ms']:.2f} ms; a beat with the book warm "
        f"{costs['warm_ms']:.2f} ms, asking every VM {costs['cold_ms']:.2f} ms"
    )


def cost_of_asking(host: Host, rounds: int = 50) -> dict[str, Any]:
    """What one VM's look-up costs (the lease, through libvirt), and a beat's
    document with the book warm (no look-up) and cold (every VM asked)."""
    agent = host.agent
    started = time.perf_counter()
    for _ in range(rounds):
        assert agent.nic_addresses("web")[0][1]
    ask_ms = (time.perf_counter() - started) / rounds * 1000
    book = AddressBook(agent)
    heartbeat_document(agent, None, book)  # fills the book
    asked = book.asked
    started = time.perf_counter()
    for _ in range(rounds):
        heartbeat_document(agent, None, book)
    warm_ms = (time.perf_counter() - started) / rounds * 1000
    assert book.asked == asked  # warm: no look-up at all
    started = time.perf_counter()
    for _ in range(rounds):
        heartbeat_document(agent, None, AddressBook(agent))
    cold_ms = (time.perf_counter() - started) / rounds * 1000
    return {"ask_ms": ask_ms, "warm_ms": warm_ms, "cold_ms": cold_ms}
