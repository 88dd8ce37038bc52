"""A cloud agent's host (`pinfold agent --driver openstack`) in the controller:
registered and beating as such an agent does (`cloud_registration_document`,
its status per level from `capacity_status`), shown with the cloud's CPUs per
level, and never a place the controller puts a VM: pinfold pins nothing on
a cloud, so there is no topology to replay its VMs through (docs/controller.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pinfold.agent.cloud_agent import capacity_status
from pinfold.agent.registration import Registrar, cloud_registration_document
from pinfold.controller.feasibility import fits
from pinfold.model.vm import VMRequest
from pinfold.openstack.cloud import Capacity
from pinfold.openstack.levels import LevelUse
from pinfold.topology import Topology
from tests.controller.cluster import AGENT, PERIOD_S, LocalCluster

#: a cloud of 8 CPUs at 1:1 (3 vCPUs placed) and 16 at 4:1 (10 of 64 vCPUs placed)
CAPACITY = Capacity(
    "placement",
    {
        1.0: LevelUse(1.0, ["c1"], 8, 8.0, 3, 16384.0, 1024),
        4.0: LevelUse(4.0, ["c2", "c3"], 16, 64.0, 10, 65536.0, 2048),
    },
)


def cloud_heartbeat() -> dict[str, Any]:
    return {"status": capacity_status(CAPACITY), "vms": {}, "pins": {}, "vnodes": {}, "usage": None}


@pytest.fixture
def cluster(tmp_path: Path, i7: Topology) -> Iterator[tuple[LocalCluster, Registrar]]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    registrar = Registrar(
        local.url, AGENT, "cloud1",
        lambda: cloud_registration_document("cloud1", "http://127.0.0.1:9", "c" * 32),
        cloud_heartbeat, PERIOD_S, tmp_path / "cloud1.token",
    )  # fmt: skip
    registrar.beat()
    try:
        yield local, registrar
    finally:
        registrar.stop()
        local.close()


def test_a_cloud_host_shows_the_clouds_cpus_per_level(cluster: tuple[LocalCluster, Registrar]) -> None:
    local, registrar = cluster
    assert registrar.registered, registrar.last_error
    host = local.http.get("/api/v1/hosts/cloud1").json()
    assert (host["state"], host["cloud"], host["cpus"]) == ("up", "openstack", 24)
    subset = host["status"]["cpu"]["subset"]
    assert {level: (use["pcap"], use["palloc"], use["vavail"]) for level, use in subset.items()} == {
        "1.0": (8, 3, 5.0),
        "4.0": (16, 10, 54.0),
    }


def test_the_controller_never_places_a_vm_on_a_cloud_host(cluster: tuple[LocalCluster, Registrar]) -> None:
    """Alone, the cloud host is no host, and says why; with a host of its own, every VM goes there."""
    local, _ = cluster
    refused = local.http.post("/api/v1/vms", json={"name": "vm0", "vcpus": 1, "memory_mib": 64})
    assert refused.status_code == 409, refused.text
    assert "cloud1" in refused.json()["hosts"], refused.text
    assert "OpenStack cloud's agent" in refused.json()["hosts"]["cloud1"]
    local.add_host("h1")
    for index in range(4):
        made = local.http.post("/api/v1/vms", json={"name": f"vm{index}", "vcpus": 1, "memory_mib": 64})
        assert made.status_code == 201, made.text
        assert made.json()["host"] == "h1"
    record = local.controller.store.host("cloud1")
    assert record is not None
    reason = fits(record, [], VMRequest("vm9", 1, 64))
    assert reason is not None
    assert "OpenStack cloud's agent" in reason
