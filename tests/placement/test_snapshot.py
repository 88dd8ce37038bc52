"""Snapshot and restore: the exact state comes back, behaves the same from
then on, survives JSON, and a corrupt snapshot is refused before anything."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfold.placement import HostAllocator, HostSnapshot, PlacementError, VMSpec
from tests.placement.helpers import vm


def state(host: HostAllocator) -> tuple[object, ...]:
    return (
        {r: host.vnode(r) for r in host.levels},
        {name: host.pinning(name) for name in host.vms},
        host.status(),
        host.free_cpus(),
        host.sharing(),
    )


def test_restore_gives_back_the_layout_not_a_recomputation(i7):
    host = HostAllocator(i7)
    host.deploy(vm("small", 1, 1, 2.0))
    host.deploy(vm("big", 4, 1, 2.0))  # grows the 2:1 vNode to 4 CPUs in a known order
    host.deploy(vm("p", 2, 2, 1.0))
    host.remove("big")
    snapshot = host.snapshot()
    again = HostAllocator.restore(i7, HostSnapshot.from_dict(json.loads(json.dumps(snapshot.to_dict()))))
    assert state(again) == state(host)
    again.check_invariants()


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.booleans(), st.sampled_from([1, 2, 3, 4]), st.sampled_from([1.0, 2.0, 3.0]), st.integers(0, 99)
        ),
        min_size=1,
        max_size=60,
    ),
    cut=st.integers(0, 60),
)
def test_a_restored_host_behaves_like_the_original(i7, ops, cut):
    original = HostAllocator(i7, critical_size=3)
    restored: HostAllocator | None = None
    for step, (deploy, vcpus, ratio, pick) in enumerate(ops):
        if step == cut:
            restored = HostAllocator.restore(i7, original.snapshot(), critical_size=3)
        hosts = [original] if restored is None else [original, restored]
        outcomes: list[object] = []
        for host in hosts:
            try:
                if deploy or not host.vms:
                    change = host.deploy(VMSpec(f"v{step}", vcpus, 1024 * vcpus, ratio))
                else:
                    change = host.remove(sorted(host.vms)[pick % len(host.vms)])
                outcomes.append((change.pinning, dict(change.repinned)))
            except PlacementError as error:
                outcomes.append(str(error))
        assert all(outcome == outcomes[0] for outcome in outcomes)
        if restored is not None:
            assert state(restored) == state(original)


def doc(vnodes: dict[str, list[int]], *vms: tuple[str, int, int, float]) -> dict[str, object]:
    rows = [{"name": n, "vcpus": c, "memory_mib": m, "ratio": r} for n, c, m, r in vms]
    return {"vnodes": vnodes, "vms": rows}


A = ("a", 1, 1, 1.0)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (doc({"1.0": [0, 0]}, A), "twice"),
        (doc({"1.0": [0], "2.0": [1]}, A), "has no VM"),
        (doc({"1.0": [9]}, A), "not usable"),
        (doc({"2.0": [1]}, ("a", 2, 1, 2.0), ("b", 2, 1, 2.0)), "cannot hold"),
        (doc({"2.0": [1]}, ("a", 2, 1, 2.0)), "cannot hold"),
        (doc({"1.0": [0]}, ("a", 1, 1, 3.0)), "no vNode"),
        (doc({"1.0": [0]}, ("a", 1, 99999, 1.0)), "pool"),
        (doc({"1.0": []}), "is empty"),
        (doc({"1.0": [0]}, A, A), "twice"),
        (doc({"1.0": [0]}, ("a", 0, 1, 1.0)), "vcpus must be"),
    ],
    ids=["cpu-twice", "vnode-without-vm", "unusable-cpu", "overcommitted", "vm-larger-than-vnode",
         "vm-without-vnode", "memory", "empty-vnode", "vm-twice", "invalid-vm"],
)  # fmt: skip
def test_corrupt_snapshots_are_refused(i7, document, problem):
    with pytest.raises(ValueError, match=problem):
        HostAllocator.restore(i7, HostSnapshot.from_dict(document))


def test_malformed_snapshot_documents_are_refused():
    with pytest.raises(ValueError, match="malformed"):
        HostSnapshot.from_dict({"vnodes": [], "vms": []})
