"""A real QEMU guest (TCG) through the libvirt driver: it boots, its vCPU
threads are confined to the vNode cpuset on the host, live re-pinning moves
them, and every lifecycle step is real. Needs root and libvirt (CI has both)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pinfold.agent.domain import DomainSpec
from pinfold.agent.drivers import GuestState
from pinfold.topology import parse_cpulist
from tests.agent.conftest import libvirt_or_skip
from tests.agent.guest import MARKER, POWEROFF_MARKER

NAME = "pinfold-test-guest"
BOOT_TIMEOUT_S = 120


@pytest.fixture
def driver() -> Iterator[object]:
    libvirt_or_skip("qemu:///system")
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    real = LibvirtDriver("qemu:///system")
    if NAME in {g.name for g in real.guests()}:  # left over by an interrupted run
        real.delete(NAME)
    yield real
    if NAME in {g.name for g in real.guests()}:
        real.delete(NAME)  # tests must destroy what they create
    real.close()


def vcpu_thread_cpus(name: str) -> list[set[int]]:
    """Allowed CPUs of each vCPU thread of the domain's QEMU process."""
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    allowed = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        comm = (task / "comm").read_text().strip()
        if re.fullmatch(r"CPU \d+/(TCG|KVM)", comm):
            status = (task / "status").read_text()
            match = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.MULTILINE)
            assert match is not None
            allowed.append(set(parse_cpulist(match.group(1))))
    return allowed


def libvirt_module():
    import libvirt

    return libvirt


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def test_guest_boots_pinned_and_follows_live_repinning(driver, guest_kernel, guest_initramfs, tmp_path):
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    first = frozenset(online[:1])
    log = tmp_path / "serial.log"
    spec = DomainSpec(
        NAME, 1, 128, first, 2.0, owner="tests", domain_type="qemu", kernel=guest_kernel,
        initrd=guest_initramfs, cmdline="console=ttyS0 panic=-1", serial_log=log,
    )  # fmt: skip
    driver.create(spec)
    wait_for(lambda: log.exists() and MARKER in log.read_text(errors="replace"), BOOT_TIMEOUT_S, "the guest")
    assert driver.info(NAME).state is GuestState.RUNNING
    assert vcpu_thread_cpus(NAME) == [set(first)]
    assert driver.addresses(NAME) == []  # no NIC, no lease, no guest agent: known to be unknown

    everywhere = frozenset(online)
    driver.repin(NAME, everywhere)
    assert vcpu_thread_cpus(NAME) == [set(everywhere)]
    assert driver.info(NAME).spec.cpuset == everywhere  # persistent too

    driver.relabel(NAME, "someone else")  # live and persistent metadata
    assert driver.info(NAME).spec.owner == "someone else"
    inactive = driver._domain(NAME).XMLDesc(libvirt_module().VIR_DOMAIN_XML_INACTIVE)
    assert DomainSpec.from_xml(inactive).owner == "someone else"

    driver.suspend(NAME)
    assert driver.info(NAME).state is GuestState.PAUSED
    driver.resume(NAME)
    assert driver.info(NAME).state is GuestState.RUNNING

    driver.shutdown(NAME, timeout_s=60)  # the guest's acpid handles the power button
    assert driver.info(NAME).state is GuestState.SHUTOFF
    assert POWEROFF_MARKER in log.read_text(errors="replace"), "shut off, but not by the guest itself"
    driver.delete(NAME)
    assert NAME not in {g.name for g in driver.guests()}


def test_a_guest_that_ignores_the_power_button_is_forced_off_after_the_timeout(
    driver, guest_kernel, guest_initramfs, tmp_path
):
    log = tmp_path / "serial.log"
    spec = DomainSpec(
        NAME, 1, 128, frozenset({0}), 1.0, owner="tests", domain_type="qemu", kernel=guest_kernel,
        initrd=guest_initramfs, cmdline="console=ttyS0 panic=-1 deaf", serial_log=log,
    )  # fmt: skip
    driver.create(spec)
    wait_for(lambda: log.exists() and MARKER in log.read_text(errors="replace"), BOOT_TIMEOUT_S, "the guest")
    started = time.monotonic()
    driver.shutdown(NAME, timeout_s=3)
    waited = time.monotonic() - started
    assert driver.info(NAME).state is GuestState.SHUTOFF
    assert POWEROFF_MARKER not in log.read_text(errors="replace")
    assert 3 <= waited < 30


def test_agent_pins_real_guests_of_two_levels_to_their_vnodes(guest_kernel, guest_initramfs, tmp_path, i7):
    """The agent on qemu:///system: a premium and an oversubscribed guest; each
    QEMU vCPU thread may run only on its VM's vNode CPUs, as the allocator says."""
    libvirt_or_skip("qemu:///system")
    from pinfold.agent.drivers.libvirt import LibvirtDriver
    from pinfold.agent.service import Agent, AgentSettings, VMRequest
    from pinfold.agent.store import Store
    from pinfold.topology import Topology

    topology = Topology.discover()
    if len(topology.usable_cpus) < 2:
        pytest.skip("needs two host CPUs")
    driver = LibvirtDriver("qemu:///system")
    names = ["pinfold-test-premium", "pinfold-test-shared"]
    for name in names:
        if name in {g.name for g in driver.guests()}:
            driver.delete(name)
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "64M"], check=True)
    settings = AgentSettings(domain_type="qemu", kernel=guest_kernel, initrd=guest_initramfs,
                             cmdline="console=ttyS0", serial_dir=tmp_path, image_dirs=(images,),
                             disk_dir=tmp_path / "disks")  # fmt: skip
    agent = Agent.open(topology, driver, Store(tmp_path / "agent.db"), settings)
    try:
        # the premium guest boots with a disk: an overlay on the base image, opened by QEMU
        agent.create(VMRequest(names[0], 1, 128, 1.0, image=str(images / "base.qcow2")))
        agent.create(VMRequest(names[1], 1, 128, 2.0))
        for name in names:
            expected = set(agent.allocator.pinning(name))
            wait_for(lambda name=name: vcpu_thread_cpus(name) != [], 30, f"{name}'s vCPU thread")
            assert vcpu_thread_cpus(name) == [expected]
        assert agent.allocator.pinning(names[0]).isdisjoint(agent.allocator.pinning(names[1]))
        qemu_pid = Path(f"/run/libvirt/qemu/{names[0]}.pid").read_text().strip()
        open_files = {str(fd.resolve()) for fd in Path(f"/proc/{qemu_pid}/fd").iterdir()}
        assert str(tmp_path / "disks" / f"{names[0]}.qcow2") in open_files
    finally:
        for name in names:
            if name in agent.vms:
                agent.delete(name)
        driver.close()
    assert not {g.name for g in LibvirtDriver("qemu:///system").guests()} & set(names)
    assert not (tmp_path / "disks" / f"{names[0]}.qcow2").exists()


def test_a_guest_that_burns_a_cpu_shows_up_in_its_vnode_usage(guest_kernel, guest_initramfs, tmp_path, i7):
    libvirt_or_skip("qemu:///system")
    from pinfold.agent.drivers.libvirt import LibvirtDriver
    from pinfold.agent.monitor import Monitor
    from pinfold.agent.service import Agent, AgentSettings, VMRequest
    from pinfold.agent.store import Store
    from pinfold.topology import Topology

    topology = Topology.discover()
    driver = LibvirtDriver("qemu:///system")
    name = "pinfold-test-burn"
    if name in {g.name for g in driver.guests()}:
        driver.delete(name)
    # critical size 0: the 2:1 VM is confined to its vNode (no sharing of free CPUs)
    settings = AgentSettings(domain_type="qemu", kernel=guest_kernel, initrd=guest_initramfs, critical_size=0,
                             cmdline="console=ttyS0 burn", serial_dir=tmp_path)  # fmt: skip
    agent = Agent.open(topology, driver, Store(tmp_path / "agent.db"), settings)
    try:
        agent.create(VMRequest(name, 1, 128, 2.0))
        log = tmp_path / f"{name}.log"
        wait_for(
            lambda: log.exists() and MARKER in log.read_text(errors="replace"), BOOT_TIMEOUT_S, "the guest"
        )
        monitor = Monitor([c.cpu_id for c in topology.cpus], agent.vnode_layout, driver.stats)
        qemu = psutil.Process(int(Path(f"/run/libvirt/qemu/{name}.pid").read_text()))
        monitor.sample()
        before = qemu.cpu_times()
        time.sleep(3)
        sample = monitor.sample()
        after = qemu.cpu_times()
        # what the host itself saw QEMU take over the same window: on a busy 2-core
        # machine a spinning guest gets less than a whole core, so compare with that
        host_cores = (after.user + after.system - before.user - before.system) / 3
        vnode, vm_cores = sample.vnodes["2.0"], sample.vms[name]["cpu_cores"]
        assert vnode["cpus"] == 1
        assert host_cores > 0.25, f"QEMU took {host_cores:.2f} core: the guest does not spin"
        # the guest's vCPU time is most of what its QEMU took (the rest: emulator threads)
        assert 0.6 * host_cores < vm_cores <= host_cores * 1.15 + 0.05, (vm_cores, host_cores)
        # and it ran on the vNode's CPU, whose use counts it (and whatever else ran there)
        assert vnode["used_cores"] >= vm_cores * 0.9 - 0.05, (vnode, vm_cores)
        assert sample.vms[name]["memory_mib"] > 0
    finally:
        if name in agent.vms:
            agent.delete(name)
        driver.close()
