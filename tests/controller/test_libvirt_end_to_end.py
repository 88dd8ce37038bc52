"""The controller placing a VM on a host whose agent drives real libvirt: a
real QEMU guest (TCG) boots pinned to its vNode, then the controller deletes
it. A second host runs the sim driver and drains, so the VM must go to the
real one. Needs root and libvirt (CI has both)."""

from __future__ import annotations

import time

from pinfold.agent.service import AgentSettings
from pinfold.topology import Topology
from tests.agent.conftest import guest_initramfs, guest_kernel, libvirt_or_skip  # noqa: F401  (fixtures)
from tests.agent.guest import MARKER
from tests.agent.test_libvirt_guest import vcpu_thread_cpus
from tests.controller.cluster import ADMIN_AUTH, LocalCluster

NAME = "pinfold-test-controller"


def test_a_vm_placed_by_the_controller_boots_on_the_libvirt_host(tmp_path, guest_kernel, guest_initramfs, i7):  # noqa: F811
    libvirt_or_skip("qemu:///system")
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    driver = LibvirtDriver("qemu:///system")
    if NAME in {g.name for g in driver.guests()}:
        driver.delete(NAME)  # left by an interrupted run
    cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", Topology.discover())
    try:
        settings = AgentSettings(domain_type="qemu", kernel=guest_kernel, initrd=guest_initramfs,
                                 cmdline="console=ttyS0", serial_dir=tmp_path)  # fmt: skip
        real = cluster.add_host("real", driver, settings)
        cluster.add_host("simulated")
        cluster.http.post("/api/v1/hosts/simulated/drain", headers=ADMIN_AUTH)
        response = cluster.http.post(
            "/api/v1/vms",
            json={"name": NAME, "vcpus": 1, "memory_mib": 128, "ratio": 2.0},
            headers=ADMIN_AUTH,
        )
        assert response.status_code == 201, response.text
        vm = response.json()
        assert (vm["host"], vm["state"]) == ("real", "running")
        log = tmp_path / f"{NAME}.log"
        deadline = time.monotonic() + 120
        while not (log.exists() and MARKER in log.read_text(errors="replace")):
            assert time.monotonic() < deadline, "the guest did not boot"
            time.sleep(0.5)
        assert vcpu_thread_cpus(NAME) == [set(vm["pinning"])]
        assert set(vm["pinning"]) == set(real.agent.allocator.pinning(NAME))
        assert cluster.http.delete(f"/api/v1/vms/{NAME}", headers=ADMIN_AUTH).status_code == 204
        assert NAME not in {g.name for g in driver.guests()}
    finally:
        if NAME in {g.name for g in driver.guests()}:
            driver.delete(NAME)
        cluster.close()
        driver.close()
