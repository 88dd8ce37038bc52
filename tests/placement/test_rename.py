"""Renaming a placed VM (a warm-pool VM handed out) moves nothing: same vNodes,
pins and memory, and from then on the host behaves as if it had been deployed
under the new name."""

from __future__ import annotations

import pytest

from pinfold.placement import HostAllocator, PlacementError
from tests.placement.helpers import vm


def layout(host: HostAllocator) -> tuple[object, ...]:
    return ({r: host.vnode(r) for r in host.levels}, host.status(), host.free_cpus(), host.sharing())


def test_rename_keeps_the_layout_and_the_deploy_order(i7):
    host = HostAllocator(i7)
    for spec in (vm("a", 1, 1, 2.0), vm("pool-1", 2, 1, 2.0), vm("p", 2, 2, 1.0)):
        host.deploy(spec)
    before, pins = layout(host), host.pinning("pool-1")
    host.rename("pool-1", "web")
    assert layout(host) == before
    assert host.pinning("web") == pins
    assert "pool-1" not in host
    assert list(host.vms) == ["a", "web", "p"]
    assert host.spec("web").vcpus == 2
    host.check_invariants()
    host.remove("web")  # the vNode shrinks as it would have for a VM deployed as "web"
    host.check_invariants()


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [("ghost", "x", "unknown vm"), ("a", "p", "duplicate name"), ("a", "", "invalid request")],
)
def test_rename_refusals_change_nothing(i7, old, new, code):
    host = HostAllocator(i7)
    host.deploy(vm("a", 1, 1, 2.0))
    host.deploy(vm("p", 1, 1, 1.0))
    before = (layout(host), list(host.vms))
    with pytest.raises(PlacementError) as raised:
        host.rename(old, new)
    assert raised.value.code.value == code
    assert (layout(host), list(host.vms)) == before
