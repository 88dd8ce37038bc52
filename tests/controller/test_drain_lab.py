"""A drain with live migrations on real libvirt (issue 15): a real controller
on loopback (as `LocalCluster` runs it) with two real agents whose drivers
are libvirt drivers over the two private daemons of tests/migrationlab.py.
Three TCG guests (1 vCPU, 128 MiB) of two levels, created through the
controller on host a, all move to host b with `POST /api/v1/hosts/a/drain
{"migrate": true}`: domains on b's daemon only, vCPU threads on b's vNodes of
their levels, a's agent empty, the controller's rows on b and running, and
the guests go on counting. Two levels on this 2-CPU machine: one guest at 1:1
(one CPU) and two at 2:1 (sharing the other). Needs root, `ip netns` and
libvirt: skipped without them, a failure under PINFOLD_REQUIRE_LIBVIRT=1."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import httpx

from pinfold.topology import Topology
from tests.agent.conftest import guest_initramfs, guest_kernel  # noqa: F401  (fixtures)
from tests.agent.test_migration_lab import _quietly, counting, counts, vcpu_threads_cpus
from tests.controller.cluster import Host, LocalCluster
from tests.migrationlab import LabHost, MigrationLab, migration_lab  # noqa: F401  (fixture)

#: name -> level: two levels on 2 CPUs (the 1:1 guest takes one, the two 2:1 guests share the other)
GUESTS = {"db": 1.0, "web1": 2.0, "web2": 2.0}
#: a drain moves the three one after another, each a few seconds over the namespace's loopback
DRAIN_TIMEOUT_S = 300.0


def log(host: LabHost, name: str) -> Path:
    return host.data / "consoles" / f"{name}.log"


def vnodes(host: Host) -> dict[str, list[int]]:
    """The agent's vNodes by level, from its own API."""
    return dict(httpx.get(f"{host.served.url}/api/v1/host", timeout=30).json()["vnodes"])


def domains(host: LabHost) -> set[str]:
    return {domain.name() for domain in host.connection.listAllDomains()}


def add_lab_host(
    drivers: ExitStack, cluster: LocalCluster, lab: MigrationLab, name: str, kernel: Path, initrd: Path
) -> Host:
    """Host `name` in the cluster: a real agent over lab host `name`'s daemon,
    its driver closed by `drivers` (once the cluster has stopped its agents)."""
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    host = lab.hosts[name]
    driver = LibvirtDriver(host.uri)
    drivers.callback(_quietly, driver.close)
    return cluster.add_host(name, driver, lab.agent_settings(host, kernel, initrd))


def test_a_drain_moves_three_guests_of_two_levels_live_to_the_other_host(
    migration_lab,  # noqa: F811
    guest_kernel,  # noqa: F811
    guest_initramfs,  # noqa: F811
    tmp_path,
):
    lab = migration_lab
    a_lab, b_lab = lab.hosts["a"], lab.hosts["b"]
    with ExitStack() as drivers, ExitStack() as stack:  # the cluster closes first, then the drivers
        cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", Topology.discover())
        stack.callback(cluster.close)
        add_lab_host(drivers, cluster, lab, "a", guest_kernel, guest_initramfs)
        for name, ratio in GUESTS.items():  # one after another: a boot each on 2 CPUs
            body = {"name": name, "vcpus": 1, "memory_mib": 128, "ratio": ratio}
            created = cluster.http.post("/api/v1/vms", json=body, timeout=120)
            assert created.status_code == 201, created.text
            assert created.json()["host"] == "a"
            counting(log(a_lab, name))
        add_lab_host(drivers, cluster, lab, "b", guest_kernel, guest_initramfs)
        before = counting(log(a_lab, "db"))

        response = cluster.http.post("/api/v1/hosts/a/drain", json={"migrate": True}, timeout=DRAIN_TIMEOUT_S)

        assert response.status_code == 200, response.text
        drained = response.json()
        assert (drained["draining"], drained["vms"]) == (True, [])
        assert len(drained["migrations"]) == len(GUESTS), drained["migrations"]
        done = {m["vm"]: (m["source"], m["target"], m["outcome"]) for m in drained["migrations"]}
        assert done == dict.fromkeys(GUESTS, ("a", "b", "done"))
        # libvirt: all three run on b's daemon, none is left on a's
        assert domains(b_lab) == set(GUESTS)
        assert domains(a_lab) == set()
        assert cluster.hosts["a"].agent.allocator.vms == {}
        assert set(cluster.hosts["b"].agent.allocator.vms) == set(GUESTS)
        # each guest's vCPU threads on b's vNode of its level
        levels = vnodes(cluster.hosts["b"])
        assert frozenset(levels["1.0"]).isdisjoint(levels["2.0"])
        for name, ratio in GUESTS.items():
            pid = b_lab.qemu_pid(name)
            assert pid is not None, name
            assert vcpu_threads_cpus(pid) == [frozenset(levels[str(ratio)])], name
            record = cluster.http.get(f"/api/v1/vms/{name}").json()
            assert (record["host"], record["state"], record["target"]) == ("b", "running", None), record
        # the guests go on counting from where they were (a restarted one would count from 1)
        after = counts(log(b_lab, "db"))
        assert after, "b's console log of db has no count"
        assert after[0] > before
        assert after == list(range(after[0], after[0] + len(after)))
        for name in GUESTS:
            counting(log(b_lab, name), counts(log(b_lab, name))[-1] + 3)
