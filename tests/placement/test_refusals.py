"""Every refusal code is reachable through the public API, and each renders
the stable reason string of DESIGN.md. A new code fails here until it has a case."""

from __future__ import annotations

import pytest

from pinfold.placement import (
    Cluster,
    GroupPolicy,
    GroupRule,
    HostAllocator,
    PlacementError,
    Refusal,
    RefusalCode,
    VMSpec,
)
from tests.placement.helpers import vm


def trigger(code: RefusalCode, i7) -> Refusal:
    host = HostAllocator(i7)
    host.deploy(vm("taken", 1, 1, 1.0))
    cases = {
        RefusalCode.NOT_ENOUGH_CPU: lambda: host.deploy(vm("x", 8, 1, 1.0)),
        RefusalCode.NOT_ENOUGH_MEMORY: lambda: host.deploy(vm("x", 1, 31, 1.0)),
        RefusalCode.DUPLICATE_NAME: lambda: host.deploy(vm("taken", 1, 1, 1.0)),
        RefusalCode.INVALID_REQUEST: lambda: host.deploy(VMSpec("x", 1, 1, 0.9)),
        RefusalCode.UNKNOWN_VM: lambda: host.remove("x"),
    }
    if code is RefusalCode.HOST_UNAVAILABLE:
        cluster = Cluster()
        cluster.add_host("h", host)
        return cluster.choose(vm("x", 1, 1, 1.0), eligible=[]).refusals()["h"]
    if code is RefusalCode.GROUP_POLICY:
        cluster = Cluster()
        cluster.add_host("h", host)
        group = GroupRule("g", GroupPolicy.ANTI_AFFINITY, frozenset({"taken"}))
        return cluster.choose(vm("x", 1, 1, 1.0), group=group).refusals()["h"]
    with pytest.raises(PlacementError) as error:
        cases[code]()
    return error.value.refusal


@pytest.mark.parametrize("code", list(RefusalCode), ids=lambda c: c.value)
def test_every_refusal_code_is_reachable_and_renders_its_reason(code, i7):
    refusal = trigger(code, i7)
    assert refusal.code is code
    assert refusal.reason.startswith(code.value)
    assert refusal.describe().startswith(refusal.reason)


def test_placement_error_round_trips_reason_strings():
    for reason in ("not enough cpu", "unknown vm", "invalid request: ratio must be >= 1.0"):
        assert str(PlacementError(reason)) == reason
    with pytest.raises(ValueError, match="unknown refusal reason"):
        PlacementError("because")
