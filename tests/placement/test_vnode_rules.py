"""The rules of DESIGN.md beyond the observed SlackVM outcomes: seeding,
growth, LIFO shrink, re-seeding, sharing and re-pinning, memory."""

from __future__ import annotations

import pytest

from pinfold.placement import HostAllocator, PlacementError, VMSpec
from tests.placement.helpers import vm


def test_new_vnode_takes_seed_then_closest_cpus_on_epyc(epyc_exp):
    host = HostAllocator(epyc_exp)
    host.deploy(vm("p", 4, 4, 1.0))
    # lowest usable CPU, its SMT sibling, then the rest of its L3 by id
    assert host.vnode(1.0) == [12, 140, 13, 14]


def test_new_levels_are_seeded_far_from_existing_vnodes(epyc_exp):
    host = HostAllocator(epyc_exp)
    host.deploy(vm("p", 4, 4, 1.0))
    host.deploy(vm("q", 1, 1, 2.0))
    assert host.vnode(2.0) == [64]  # other socket: 72 from every premium CPU
    host.deploy(vm("r", 1, 1, 3.0))
    # farthest on average from {12,140,13,14,64}: socket 1, outside 64's L3
    assert host.vnode(3.0) == [68]


def test_growth_adds_the_cpu_closest_on_average_lowest_id_on_ties(epyc_exp):
    host = HostAllocator(epyc_exp, critical_size=0)
    host.deploy(vm("q", 1, 1, 2.0))
    assert host.vnode(2.0) == [12]
    host.deploy(vm("q2", 3, 1, 2.0))  # room 1 -> needs 3 CPUs in all: +2
    assert host.vnode(2.0) == [12, 140, 13]


def test_shrink_releases_the_cpus_added_last(i7):
    host = HostAllocator(i7)
    host.deploy(vm("small", 1, 1, 2.0))
    host.deploy(vm("big", 4, 1, 2.0))
    grown = host.vnode(2.0)
    assert len(grown) == 4
    host.remove("big")
    assert host.vnode(2.0) == grown[:1]
    assert set(host.free_cpus()) == set(range(8)) - set(grown[:1])


def test_shrink_target_is_max_of_ceil_a_over_r_and_largest_vm(i7):
    host = HostAllocator(i7)
    for name, vcpus in (("a", 3), ("b", 1), ("c", 1), ("d", 1)):
        host.deploy(vm(name, vcpus, 1, 2.0))
    assert len(host.vnode(2.0)) == 3  # A = 6, r = 2
    host.remove("b")  # A = 5: ceil(5/2) = 3
    assert len(host.vnode(2.0)) == 3
    host.remove("c")  # A = 4: 2, but M = 3
    assert len(host.vnode(2.0)) == 3
    host.remove("a")  # A = 1, M = 1
    assert len(host.vnode(2.0)) == 1


def test_a_level_that_comes_back_is_seeded_anew(i7):
    host = HostAllocator(i7)
    host.deploy(vm("p", 2, 1, 1.0))
    host.deploy(vm("q", 1, 1, 2.0))
    assert host.vnode(2.0) == [1]
    host.remove("q")
    assert host.vnode(2.0) == []
    host.remove("p")
    host.deploy(vm("q2", 1, 1, 2.0))
    assert host.vnode(2.0) == [0]  # seeded on the now empty host, not where it was


def test_premium_vms_are_always_confined_to_their_vnode(i7):
    host = HostAllocator(i7)
    host.deploy(vm("p", 2, 1, 1.0))
    host.deploy(vm("q", 1, 1, 2.0))
    assert host.sharing()
    assert host.pinning("p") == frozenset(host.vnode(1.0))


def test_critical_size_zero_disables_sharing(i7):
    host = HostAllocator(i7, critical_size=0)
    host.deploy(vm("p", 2, 1, 1.0))
    host.deploy(vm("q", 2, 1, 2.0))
    assert not host.sharing()
    assert host.pinning("q") == frozenset({1, 5})


def test_sharing_lasts_while_any_oversubscribed_level_is_small(i7):
    host = HostAllocator(i7, critical_size=2)
    for name in ("a", "b"):
        host.deploy(vm(name, 1, 1, 2.0))
    assert not host.sharing()
    host.deploy(vm("c", 1, 1, 3.0))
    assert host.sharing()
    assert host.pinning("a") == host.pinning("c") == frozenset(range(8))
    host.deploy(vm("d", 1, 1, 3.0))
    assert not host.sharing()
    assert host.pinning("a") == frozenset(host.vnode(2.0))
    assert host.pinning("c") == frozenset(host.vnode(3.0))


def test_premium_growth_repins_the_sharing_oversubscribed_vms(i7):
    host = HostAllocator(i7)
    host.deploy(vm("A", 2, 1, 1.0))
    host.deploy(vm("B", 2, 1, 2.0))
    change = host.deploy(vm("A2", 2, 1, 1.0))
    assert host.vnode(1.0) == [0, 4, 2, 6]
    assert dict(change.repinned) == {"A": frozenset({0, 2, 4, 6}), "B": frozenset({1, 3, 5, 7})}
    assert change.pinning == frozenset({0, 2, 4, 6})


def test_oversubscribed_growth_while_sharing_repins_nobody(i7):
    host = HostAllocator(i7)
    host.deploy(vm("A", 2, 1, 1.0))
    host.deploy(vm("B", 2, 1, 2.0))
    change = host.deploy(vm("B2", 4, 1, 2.0))
    assert len(host.vnode(2.0)) == 4
    assert dict(change.repinned) == {}


def test_confined_level_growth_and_shrink_repin_its_own_vms(i7):
    host = HostAllocator(i7, critical_size=0)
    host.deploy(vm("a", 1, 1, 2.0))
    grow = host.deploy(vm("b", 2, 1, 2.0))
    assert dict(grow.repinned) == {"a": frozenset(host.vnode(2.0))}
    shrink = host.remove("b")
    assert dict(shrink.repinned) == {"a": frozenset(host.vnode(2.0))}
    assert shrink.pinning is None


def test_removal_that_ends_sharing_repins_the_remaining_levels(i7):
    host = HostAllocator(i7, critical_size=1)
    host.deploy(vm("a", 1, 1, 2.0))
    assert not host.sharing()
    change = host.remove("a")
    assert dict(change.repinned) == {}
    assert host.levels == ()


def test_reserved_memory_is_kept_back_from_the_pool(i7):
    host = HostAllocator(i7, reserved_memory_mib=1776)
    assert host.memory_usable_mib == 30000
    host.deploy(VMSpec("fill", 1, 30000, 1.0))
    with pytest.raises(PlacementError, match="not enough memory"):
        host.deploy(VMSpec("one-more", 1, 1, 1.0))
    host.remove("fill")
    assert host.memory_free_mib == 30000


def test_reserved_memory_larger_than_the_host_is_rejected(i7):
    with pytest.raises(ValueError, match="reserved_memory_mib"):
        HostAllocator(i7, reserved_memory_mib=10**9)


def test_explain_names_the_first_failed_check_and_is_none_when_it_fits(i7):
    host = HostAllocator(i7)
    assert host.explain(vm("ok", 2, 2, 1.0)) is None
    assert host.explain(vm("cpu", 9, 1, 1.0)) == (
        "not enough cpu at level 1.0: needs 9 CPUs, 8 free of 8 (would not fit even on the empty host)"
    )
    assert host.explain(vm("mem", 1, 40, 1.0)) == (
        "not enough memory: needs 40960 MiB, 31776 free of 31776 (would not fit even on the empty host)"
    )
    # CPU is checked before memory
    assert str(host.explain(vm("both", 9, 40, 1.0))).startswith("not enough cpu")
    assert host.explain(VMSpec("bad", 1, 1, 0.5)) == "invalid request: ratio must be >= 1.0"


def test_non_integer_ratio_admits_by_float_room(i7):
    host = HostAllocator(i7)
    host.deploy(vm("a", 3, 1, 1.5))  # new vNode: 3 CPUs, room 4.5 - 3 = 1.5
    assert len(host.vnode(1.5)) == 3
    host.deploy(vm("b", 1, 1, 1.5))
    assert len(host.vnode(1.5)) == 3
    host.deploy(vm("c", 1, 1, 1.5))  # room 0.5 -> ceil(0.5/1.5) = 1 more
    assert len(host.vnode(1.5)) == 4
    assert host.status()["cpu"]["subset"]["1.5"]["vavail"] == 1.0


def test_numpy_integers_are_valid_sizes(i7):
    import numpy as np

    host = HostAllocator(i7)
    host.deploy(VMSpec("np", np.int64(2), np.int64(1024), np.float64(2.0)))  # type: ignore[arg-type]
    assert host.vnode(2.0) == [0, 4]
    with pytest.raises(PlacementError, match="memory_mib must be an integer"):
        host.deploy(VMSpec("half-mib", 1, 0.5, 1.0))  # type: ignore[arg-type]
