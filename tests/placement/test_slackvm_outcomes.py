"""The observed SlackVM outcomes of issue 2 on the i7-1185G7 topology
(8 CPUs, SMT pairs (n, n+4), one L3, 31,776 MB), critical_size 6."""

from __future__ import annotations

import pytest

from pinfold.placement import HostAllocator, PlacementError, RefusalCode, VMSpec
from tests.placement.helpers import vm

OVERSUBSCRIBED = frozenset({1, 2, 3, 5, 6, 7})


@pytest.fixture
def host(i7):
    return HostAllocator(i7, critical_size=6, reserved_memory_mib=0)


@pytest.fixture
def abcd(host):
    """A = VM(2,2,1.0), B = VM(2,2,2.0), C = VM(2,2,2.0), D = VM(1,2,3.0)."""
    for spec in (vm("A", 2, 2, 1.0), vm("B", 2, 2, 2.0), vm("C", 2, 2, 2.0), vm("D", 1, 2, 3.0)):
        host.deploy(spec)
    return host


def test_first_premium_vm_seeds_cpu0_and_its_smt_sibling(host):
    host.deploy(vm("A", 2, 2, 1.0))
    assert host.vnode(1.0) == [0, 4]
    assert host.status()["cpu"]["avail"] == 6


def test_second_level_seeds_away_and_shares_free_cpus_while_small(host):
    host.deploy(vm("A", 2, 2, 1.0))
    host.deploy(vm("B", 2, 2, 2.0))
    assert host.vnode(2.0) == [1, 5]
    assert host.pinning("B") == OVERSUBSCRIBED
    assert host.pinning("A") == frozenset({0, 4})


def test_third_and_fourth_vm_fill_room_then_seed_level_3(host):
    host.deploy(vm("A", 2, 2, 1.0))
    host.deploy(vm("B", 2, 2, 2.0))
    assert host.cpus_needed(2, 2.0) == 0
    host.deploy(vm("C", 2, 2, 2.0))
    assert host.vnode(2.0) == [1, 5]  # fits without growth
    host.deploy(vm("D", 1, 2, 3.0))
    assert host.vnode(3.0) == [2]
    for name in "BCD":
        assert host.pinning(name) == OVERSUBSCRIBED


def test_status_after_abcd_matches_slackvm(abcd):
    status = abcd.status()
    assert status["cpu"]["avail"] == 3
    subset = status["cpu"]["subset"]
    assert subset["1.0"] == {"pcap": 2, "palloc": 2, "vavail": 0, "vpotential": 3}
    assert subset["2.0"] == {"pcap": 2, "palloc": 4, "vavail": 0, "vpotential": 6}
    assert subset["3.0"] == {"pcap": 1, "palloc": 1, "vavail": 2.0, "vpotential": 9.0}
    assert status["mem"]["avail"] == 23584
    assert status["mem"]["subset"]["1"] == {"pcap": 8192, "palloc": 8192, "vavail": 0, "vpotential": 23584}


def test_progress_after_abcd_and_on_an_empty_host(abcd, i7):
    assert round(abcd.progress(2, 2048, 2.0), 4) == 68.2667
    assert HostAllocator(i7).progress(2, 2048, 1.0) == -2948.0


def test_six_small_vms_grow_the_vnode_1_1_2_2_3_3_then_stop_sharing(host):
    sizes = []
    for i in range(6):
        host.deploy(vm(f"s{i}", 1, 1, 2.0))
        sizes.append(len(host.vnode(2.0)))
        if i < 5:
            assert host.pinning(f"s{i}") == frozenset(range(8))  # no premium vNode: all CPUs
    assert sizes == [1, 1, 2, 2, 3, 3]
    own = frozenset(host.vnode(2.0))
    assert len(own) == 3
    for i in range(6):
        assert host.pinning(f"s{i}") == own


def test_sixth_vm_reports_the_confinement_of_the_five_before_it(host):
    for i in range(5):
        host.deploy(vm(f"s{i}", 1, 1, 2.0))
    change = host.deploy(vm("s5", 1, 1, 2.0))
    own = frozenset(host.vnode(2.0))
    assert change.pinning == own
    assert dict(change.repinned) == {f"s{i}": own for i in range(5)}


def test_a_vm_never_oversubscribes_against_itself(host):
    host.deploy(vm("one", 1, 1, 2.0))
    assert len(host.vnode(2.0)) == 1
    host.deploy(vm("four", 4, 1, 2.0))
    assert len(host.vnode(2.0)) == 4


def test_too_many_vcpus_is_refused_as_not_enough_cpu(host):
    with pytest.raises(PlacementError) as error:
        host.deploy(vm("big", 9, 1, 1.0))
    assert str(error.value) == "not enough cpu"
    assert error.value.code is RefusalCode.NOT_ENOUGH_CPU
    assert not error.value.refusal.fits_empty


def test_too_much_memory_is_refused_and_the_cpu_side_rolled_back(host):
    host.deploy(vm("A", 2, 2, 1.0))
    before = (host.status(), host.vnode(1.0), host.free_cpus())
    with pytest.raises(PlacementError, match=r"^not enough memory$"):
        host.deploy(vm("fat", 1, 40, 1.0))
    assert (host.status(), host.vnode(1.0), host.free_cpus()) == before
    assert "fat" not in host


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (VMSpec("half", 1, 1024, 0.5), "invalid request: ratio must be >= 1.0"),
        (VMSpec("zero", 0, 1024, 1.0), "invalid request: vcpus must be an integer >= 1"),
        (VMSpec("nomem", 1, 0, 1.0), "invalid request: memory_mib must be an integer >= 1 (MiB)"),
        (VMSpec("", 1, 1024, 1.0), "invalid request: name must be a non-empty string"),
        (VMSpec("nan", 1, 1024, float("nan")), "invalid request: ratio must be >= 1.0"),
        (VMSpec("A", 1, 1024, 2.0), "duplicate name"),
    ],
    ids=["ratio-0.5", "zero-vcpus", "zero-memory", "empty-name", "nan-ratio", "duplicate"],
)
def test_invalid_requests_are_refused_and_change_nothing(host, spec, reason):
    host.deploy(vm("A", 2, 2, 1.0))
    before = (host.status(), host.vms, host.free_cpus())
    with pytest.raises(PlacementError) as error:
        host.deploy(spec)
    assert str(error.value) == reason
    assert (host.status(), host.vms, host.free_cpus()) == before


def test_level_3_vnode_keeps_3_cpus_until_its_last_vm_leaves(host):
    for name in ("x", "y", "z"):
        host.deploy(vm(name, 3, 1, 3.0))
    assert len(host.vnode(3.0)) == 3
    host.remove("x")
    assert len(host.vnode(3.0)) == 3
    host.remove("y")
    assert len(host.vnode(3.0)) == 3
    host.remove("z")
    assert host.vnode(3.0) == []
    assert 3.0 not in host.levels
    assert host.status()["cpu"] == {"avail": 8, "subset": {}}


def test_removing_an_unknown_vm_raises_unknown_vm(host):
    with pytest.raises(PlacementError, match=r"^unknown vm$"):
        host.remove("ghost")
    with pytest.raises(PlacementError, match=r"^unknown vm$"):
        host.pinning("ghost")


def test_an_empty_host_has_no_memory_subset_until_its_first_vm(host):
    """SlackVM creates its memory subset with the first VM; its global
    scheduler then falls back to `mem.avail`, which says the same."""
    assert host.status() == {"cpu": {"avail": 8, "subset": {}}, "mem": {"avail": 31776, "subset": {}}}
    host.deploy(vm("A", 1, 1, 1.0))
    assert host.status()["mem"]["subset"] == {
        "1": {"pcap": 1024, "palloc": 1024, "vavail": 0, "vpotential": 30752}
    }
    host.remove("A")
    assert host.status()["mem"] == {"avail": 31776, "subset": {}}


def test_progress_of_zero_vcpus_on_an_empty_host_is_zero(host):
    """No CPU before or after: Rnew is undefined, taken as R* like Rcur
    (the host does not move), so the score is 0, not a penalty."""
    assert host.progress(0, 1024, 1.0) == 0.0
    host.deploy(vm("A", 2, 2, 1.0))
    assert host.progress(0, 1024, 1.0) == host.progress(0, 1024, 2.0)  # no vNode grows for 0 vCPUs
