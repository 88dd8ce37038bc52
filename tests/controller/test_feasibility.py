"""`fits`: the placement core's verdict on a host rebuilt from its records."""

from __future__ import annotations

from typing import Any

import pytest

from pinfold.controller.feasibility import fits
from pinfold.controller.models import VMState
from pinfold.controller.store import HostRecord, VMRecord
from pinfold.model.vm import VMRequest
from pinfold.placement import HostAllocator, VMSpec
from pinfold.topology import slackvm_json


def host(topology: dict[str, Any], draining: bool = False, reserved_memory_mib: int = 0) -> HostRecord:
    return HostRecord("h1", "http://h1:8000", topology, 6, reserved_memory_mib, draining, 0.0, 0.0, None)


def on_host(*specs: tuple[str, int, int, float]) -> list[VMRecord]:
    return [
        VMRecord(name, seq, "h1", vcpus, memory, ratio, "", "", VMState.RUNNING, "", 0.0, 0.0)
        for seq, (name, vcpus, memory, ratio) in enumerate(specs, start=1)
    ]


def test_fits_on_an_empty_host(i7_topology: dict[str, Any]) -> None:
    assert fits(host(i7_topology), [], VMRequest("a", 8, 1024)) is None


def test_refuses_cpu_with_the_allocators_description(i7_topology: dict[str, Any]) -> None:
    existing = on_host(("a", 6, 1024, 1.0))
    allocator = HostAllocator(slackvm_json.from_dict(i7_topology), report_pins=False)
    allocator.deploy(VMSpec("a", 6, 1024, 1.0))
    refusal = allocator.check(VMSpec("b", 4, 1024, 1.0))
    assert refusal is not None

    reason = fits(host(i7_topology), existing, VMRequest("b", 4, 1024))

    assert reason == refusal.describe()
    assert reason is not None
    assert reason.startswith("not enough cpu")


def test_refuses_memory_held_back_for_the_host(i7_topology: dict[str, Any]) -> None:
    reason = fits(host(i7_topology, reserved_memory_mib=31000), [], VMRequest("a", 1, 1024))
    assert reason is not None
    assert reason.startswith("not enough memory")


def test_oversubscribed_vms_share_cpus(i7_topology: dict[str, Any]) -> None:
    """Replay counts vCPUs at their level: 16 vCPUs at 2.0 fit on 8 CPUs."""
    existing = on_host(*[(f"v{i}", 1, 256, 2.0) for i in range(15)])
    assert fits(host(i7_topology), existing, VMRequest("last", 1, 256, 2.0)) is None
    assert fits(host(i7_topology), [*existing, *on_host(("v15", 1, 256, 2.0))], VMRequest("x", 1, 256, 2.0))


def test_draining_host_refuses_everything(i7_topology: dict[str, Any]) -> None:
    reason = fits(host(i7_topology, draining=True), [], VMRequest("a", 1, 256))
    assert reason is not None
    assert reason.startswith("host unavailable")


def test_invalid_request_is_refused_not_raised(i7_topology: dict[str, Any]) -> None:
    reason = fits(host(i7_topology), [], VMRequest("a", 0, 256))
    assert reason is not None
    assert reason.startswith("invalid request")


def test_host_holding_more_than_it_can_admits_nothing(i7_topology: dict[str, Any]) -> None:
    """A host re-registered smaller than the VMs it holds: refuse, naming the VM that no longer fits."""
    existing = on_host(("a", 8, 1024, 1.0), ("b", 1, 1024, 1.0))
    reason = fits(host(i7_topology), existing, VMRequest("c", 1, 256, 4.0))
    assert reason is not None
    assert reason.startswith("not enough cpu")
    assert "'b'" in reason


@pytest.mark.parametrize("broken", [{}, {"cpuset": {}}], ids=["empty", "no-cpus"])
def test_unusable_topology_is_refused(broken: dict[str, Any]) -> None:
    reason = fits(host(broken), [], VMRequest("a", 1, 256))
    assert reason is not None
    assert reason.startswith("host unavailable")
