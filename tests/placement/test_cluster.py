"""Host choice over many allocators: exact feasibility, policies, ties,
explanations, eligibility, and columns that stay true to the allocators."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from pinfold.placement import (
    POLICIES,
    Cluster,
    Demand,
    HostAllocator,
    HostColumns,
    NoHostError,
    PlacementError,
    RefusalCode,
    VMSpec,
)
from tests.placement.helpers import vm


def test_progress_picks_the_host_that_balances_memory_per_cpu(cluster):
    cluster.deploy_on("h0", vm("cpu-heavy", 4, 1, 1.0))  # 256 MiB/CPU: wants memory
    cluster.deploy_on("h1", vm("mem-heavy", 4, 20, 1.0))  # 5 GiB/CPU: wants CPUs
    decision = cluster.choose(vm("fat", 1, 8, 1.0))
    assert decision.host == "h0"
    assert decision.host == decision.ranking()[0]
    scores = [cluster.allocator(h).progress(1, 8192, 1.0) for h in cluster.hosts]
    assert list(decision.scores) == pytest.approx(scores)


def test_choice_scores_equal_the_single_host_progress(cluster):
    cluster.deploy_on("h0", vm("a", 2, 2, 1.0))
    cluster.deploy_on("h0", vm("b", 2, 2, 2.0))
    cluster.deploy_on("h0", vm("c", 2, 2, 2.0))
    cluster.deploy_on("h0", vm("d", 1, 2, 3.0))
    decision = cluster.choose(vm("x", 2, 2, 2.0))
    assert round(float(decision.scores[0]), 4) == 68.2667


def test_ties_go_to_the_earliest_registered_host(cluster):
    for policy in POLICIES:
        assert cluster.choose(vm("x", 1, 1, 2.0), policy=policy).host == "h0"


def test_feasibility_is_exact_room_in_a_vnode_needs_no_free_cpu(i7):
    cluster = Cluster()
    full = HostAllocator(i7)
    full.deploy(vm("half", 1, 1, 2.0))  # 2:1 vNode of 1 CPU with room for 1 more vCPU
    full.deploy(vm("rest", 7, 1, 1.0))  # every other CPU
    cluster.add_host("full", full)
    assert full.free_cpu_count == 0
    decision = cluster.choose(vm("fits-in-room", 1, 1, 2.0))
    assert decision.host == "full"
    assert cluster.choose(vm("needs-a-cpu", 2, 1, 2.0)).host is None


def test_nothing_fits_gives_a_histogram_and_per_host_refusals(cluster):
    cluster.deploy_on("h0", vm("a", 6, 1, 1.0))
    cluster.deploy_on("h1", vm("b", 1, 30, 1.0))
    cluster.deploy_on("h2", vm("c", 7, 1, 1.0))
    decision = cluster.choose(vm("x", 4, 4, 2.0))
    assert decision.host is None
    assert decision.explain() == "0/3 hosts fit: 2 not enough cpu at 2.0, 1 not enough memory"
    refusals = decision.refusals()
    assert {h: r.code for h, r in refusals.items()} == {
        "h0": RefusalCode.NOT_ENOUGH_CPU,
        "h1": RefusalCode.NOT_ENOUGH_MEMORY,
        "h2": RefusalCode.NOT_ENOUGH_CPU,
    }
    assert refusals["h0"].requested == 4
    assert refusals["h0"].available == 2
    assert refusals["h2"].requested == 4
    assert refusals["h2"].available == 1
    with pytest.raises(NoHostError) as error:
        cluster.deploy(vm("x", 4, 4, 2.0))
    assert str(error.value) == decision.explain()
    assert error.value.code is RefusalCode.NOT_ENOUGH_CPU


def test_ineligible_hosts_are_skipped_and_reported(cluster):
    decision = cluster.choose(vm("x", 1, 1, 1.0), eligible=["h2"])
    assert decision.host == "h2"
    nowhere = cluster.choose(vm("x", 1, 1, 1.0), eligible=[])
    assert nowhere.host is None
    assert nowhere.explain() == "0/3 hosts fit: 3 host unavailable"
    assert nowhere.refusals()["h0"].code is RefusalCode.HOST_UNAVAILABLE


def test_unknown_eligible_host_is_an_error(cluster):
    with pytest.raises(KeyError, match="unknown host"):
        cluster.choose(vm("x", 1, 1, 1.0), eligible=["nope"])


def test_names_are_unique_across_the_cluster(cluster):
    cluster.deploy(vm("x", 1, 1, 1.0))
    decision = cluster.choose(vm("x", 1, 1, 2.0))
    assert decision.host is None
    assert decision.explain() == "0/3 hosts fit: 3 duplicate name"
    with pytest.raises(PlacementError, match="duplicate name"):
        cluster.deploy_on("h1", vm("x", 1, 1, 2.0))


def test_invalid_request_is_refused_before_any_host(cluster):
    decision = cluster.choose(VMSpec("bad", 0, 1, 1.0))
    assert decision.host is None
    assert decision.request_refusal is not None
    assert decision.request_refusal.reason == "invalid request: vcpus must be an integer >= 1"


def test_ranking_lists_feasible_hosts_best_first(cluster):
    cluster.deploy_on("h1", vm("a", 4, 1, 1.0))
    cluster.deploy_on("h2", vm("b", 8, 1, 1.0))
    ranking = cluster.choose(vm("x", 1, 1, 1.0), policy="best-fit").ranking()
    assert ranking == ["h1", "h0"]


def test_columns_stay_equal_to_the_allocators_through_deploys_and_removes(cluster):
    rng = np.random.default_rng(3)
    for i in range(200):
        if cluster.host_of(f"v{i - 5}") and rng.random() < 0.5:
            cluster.remove(f"v{i - 5}")
        spec = vm(f"v{i}", int(rng.integers(1, 4)), float(rng.integers(1, 4)), float(rng.choice([1, 2, 3])))
        with contextlib.suppress(NoHostError):
            cluster.deploy(spec, policy=str(rng.choice(list(POLICIES))))
        columns = cluster.columns()
        for index, host in enumerate(cluster.hosts):
            allocator = cluster.allocator(host)
            assert columns.free_cpus[index] == allocator.free_cpu_count
            assert columns.mem_alloc[index] == allocator.memory_allocated_mib
            allocator.check_invariants()


def test_sync_picks_up_changes_made_directly_on_an_allocator(cluster):
    cluster.allocator("h0").deploy(vm("direct", 8, 1, 1.0))
    assert cluster.choose(vm("x", 1, 1, 1.0)).host == "h0"  # stale columns
    cluster.sync("h0")
    assert cluster.choose(vm("x", 1, 1, 1.0)).host == "h1"
    assert cluster.host_of("direct") == "h0"


def test_adding_a_host_twice_or_with_clashing_vms_is_refused(cluster, i7):
    with pytest.raises(ValueError, match="already registered"):
        cluster.add_host("h0", HostAllocator(i7))
    cluster.deploy(vm("x", 1, 1, 1.0))
    other = HostAllocator(i7)
    other.deploy(vm("x", 1, 1, 1.0))
    with pytest.raises(ValueError, match="already placed"):
        cluster.add_host("h3", other)


def test_remove_unknown_vm_in_cluster_is_unknown_vm(cluster):
    with pytest.raises(PlacementError, match="unknown vm"):
        cluster.remove("ghost")


def test_many_hosts_grow_the_columns(i7):
    cluster = Cluster()
    for i in range(40):
        cluster.add_host(f"h{i}", HostAllocator(i7))
    for i in range(40 * 8):
        cluster.deploy(vm(f"v{i}", 1, 1, 1.0), policy="first-fit")
    assert all(cluster.allocator(h).free_cpu_count == 0 for h in cluster.hosts)
    assert cluster.choose(vm("one-more", 1, 1, 1.0)).explain() == "0/40 hosts fit: 40 not enough cpu at 1.0"


def test_maintained_columns_equal_a_recomputation(cluster):
    rng = np.random.default_rng(5)
    for i in range(60):
        spec = vm(f"v{i}", int(rng.integers(1, 5)), float(rng.integers(1, 6)), float(rng.choice([1, 2, 3])))
        try:
            cluster.deploy(spec)
        except NoHostError:
            break
        if i % 3 == 2:
            cluster.remove(f"v{i - 1}")
    kept = cluster.columns()
    fresh = HostColumns.of(kept.usable_cpus, kept.usable_mem, kept.free_cpus, kept.mem_alloc)
    for field in ("cpu_alloc", "target_ratio", "deviation", "penalty"):
        assert np.array_equal(getattr(kept, field), getattr(fresh, field)), field


@pytest.mark.parametrize("policy", list(POLICIES))
def test_best_host_skipping_empty_hosts_gives_the_same_answer_as_choose(i7, policy):
    """With most hosts empty, best_host scores only busy hosts and the first
    empty host of each capacity; it must still agree with the full choice."""
    cluster = Cluster()
    for h in range(120):
        reserved = 0 if h % 3 else 1024  # two capacities among the hosts
        cluster.add_host(f"h{h:03d}", HostAllocator(i7, reserved_memory_mib=reserved))
    rng = np.random.default_rng(11)
    placed: list[str] = []
    pruned = 0
    for i in range(400):
        spec = vm(f"v{i}", int(rng.integers(1, 6)), float(rng.integers(1, 12)), float(rng.choice([1, 2, 3])))
        pruned += cluster._candidate_rows() is not None
        expected = cluster.choose(spec, policy).host
        assert cluster.best_host(spec, policy) == expected
        if expected is not None:
            cluster.deploy_on(expected, spec)
            placed.append(spec.name)
        if i % 4 == 3 and placed:
            cluster.remove(placed.pop(int(rng.integers(0, len(placed)))))
    assert pruned > 50  # the shortcut was taken often enough to be tested


def brute_force_choice(cluster: Cluster, spec: VMSpec, policy: str) -> str | None:
    """The choice worked out host by host from the allocators themselves."""
    best, best_score = None, -np.inf
    for host in cluster.hosts:
        allocator = cluster.allocator(host)
        if not allocator.fits(spec):
            continue
        demand = Demand(
            np.array([allocator.cpus_needed(spec.vcpus, spec.ratio)], dtype=float), spec.memory_mib
        )
        score = float(POLICIES[policy].score(allocator.columns(), demand)[0])
        if score > best_score:
            best, best_score = host, score
    return best


@pytest.mark.parametrize("policy", list(POLICIES))
def test_choices_match_a_host_by_host_brute_force(i7, epyc_exp, policy):
    cluster = Cluster()
    for h in range(70):
        topology = epyc_exp if h % 7 == 0 else i7
        cluster.add_host(f"h{h:02d}", HostAllocator(topology, reserved_memory_mib=512 * (h % 3)))
    rng = np.random.default_rng(21)
    placed: list[str] = []
    for i in range(300):
        spec = vm(
            f"v{i}", int(rng.integers(1, 9)), float(rng.integers(1, 24)), float(rng.choice([1, 1.5, 2, 3]))
        )
        expected = brute_force_choice(cluster, spec, policy)
        assert cluster.choose(spec, policy).host == expected
        assert cluster.best_host(spec, policy) == expected
        if expected is not None:
            cluster.deploy_on(expected, spec)
            placed.append(spec.name)
        if i % 3 == 2 and placed:
            cluster.remove(placed.pop(int(rng.integers(0, len(placed)))))
        if i % 50 == 49:  # a change made on an allocator directly, then synced
            host = cluster.hosts[int(rng.integers(0, len(cluster)))]
            if cluster.allocator(host).fits(vm(f"direct{i}", 1, 1, 1.0)):
                cluster.allocator(host).deploy(vm(f"direct{i}", 1, 1, 1.0))
                cluster.sync(host)


def test_level_columns_equal_the_allocators(cluster):
    rng = np.random.default_rng(8)
    for i in range(120):
        spec = vm(f"v{i}", int(rng.integers(1, 4)), 1.0, float(rng.choice([1, 2, 3])))
        with contextlib.suppress(NoHostError):
            cluster.deploy(spec)
        if i % 4 == 3 and cluster.host_of(f"v{i - 2}"):
            cluster.remove(f"v{i - 2}")
    n = len(cluster)
    for ratio, cpus in cluster._level_cpus.items():
        for index, host in enumerate(cluster.hosts):
            assert (cpus[index], cluster._level_alloc[ratio][index]) == cluster.allocator(host).level_usage(
                ratio
            )
    columns = cluster.columns()
    for index, host in enumerate(cluster.hosts):
        single = cluster.allocator(host).columns()
        for field in ("usable_cpus", "usable_mem", "free_cpus", "mem_alloc", "cpu_alloc", "target_ratio",
                      "deviation", "penalty"):  # fmt: skip
            assert getattr(columns, field)[index] == getattr(single, field)[0], (host, field)
    assert n == 3


def test_allocators_of_one_topology_share_its_mask_but_not_their_free_cpus(i7):
    """An empty host's free mask is the topology's, copied: placing on one
    allocator changes neither another's free CPUs nor the shared mask."""
    one, other = HostAllocator(i7), HostAllocator(i7)
    before = other.free_cpus()
    one.deploy(vm("a", 4, 1, 1.0))
    assert other.free_cpus() == before
    assert one.free_cpu_count == other.free_cpu_count - 4
    assert i7.usable_mask.sum() == len(i7.usable_cpus)
    assert not i7.usable_mask.flags.writeable


def test_a_host_added_after_others_levels_exist_has_true_level_columns(i7):
    """`add_host` writes only the new host's own levels (its columns start at
    zero): its level columns must still equal its allocator's, for the levels
    it holds and those only others hold."""
    cluster = Cluster()
    cluster.add_host("h0", HostAllocator(i7))
    for i, ratio in enumerate((1.0, 2.0, 3.0)):
        cluster.deploy_on("h0", vm(f"a{i}", 2, 1, ratio))
    late = HostAllocator(i7)
    late.deploy(vm("b", 2, 1, 2.0))
    cluster.add_host("h1", late)
    cluster.add_host("h2", HostAllocator(i7))
    for name in ("h0", "h1", "h2"):
        index = cluster.hosts.index(name)
        allocator = cluster.allocator(name)
        for ratio in (1.0, 2.0, 3.0):
            cpus, allocated = allocator.level_usage(ratio)
            assert cluster._level_cpus[ratio][index] == cpus, (name, ratio)
            assert cluster._level_alloc[ratio][index] == allocated, (name, ratio)


def _filled(topology, rng: np.random.Generator, prefix: str) -> HostAllocator:
    """A host with a few VMs of random sizes at levels 1, 2 and 3 (maybe none)."""
    allocator = HostAllocator(topology)
    for i in range(int(rng.integers(0, 4))):
        with contextlib.suppress(PlacementError):
            allocator.deploy(vm(f"{prefix}-{i}", int(rng.integers(1, 4)), 1, float(rng.choice([1, 2, 3]))))
    return allocator


def test_hosts_added_together_are_as_if_added_one_by_one(i7, epyc_exp):
    """`add_hosts` (a restart's 10,000) writes the same columns, levels, empty
    hosts and names as `add_host` one by one, so every later choice is the same."""
    rng = np.random.default_rng(11)
    hosts = [(f"h{i}", _filled(i7 if i % 3 else epyc_exp, rng, f"h{i}")) for i in range(37)]
    one_by_one, together = Cluster(), Cluster()
    one_by_one.add_host("first", HostAllocator(i7))
    together.add_host("first", HostAllocator(i7))
    for name, allocator in hosts:
        one_by_one.add_host(name, allocator.copy())
    together.add_hosts([(name, allocator.copy()) for name, allocator in hosts])
    assert together.hosts == one_by_one.hosts
    assert together._empty_count == one_by_one._empty_count > 0
    assert together._empty_by_shape == one_by_one._empty_by_shape
    columns = (
        "usable_cpus",
        "usable_mem",
        "free_cpus",
        "mem_alloc",
        "cpu_alloc",
        "target_ratio",
        "deviation",
    )
    for field in (*columns, "penalty"):
        assert np.array_equal(getattr(together.columns(), field), getattr(one_by_one.columns(), field)), field
    assert set(together._level_cpus) == set(one_by_one._level_cpus) == {1.0, 2.0, 3.0}
    for ratio in (1.0, 2.0, 3.0):
        assert np.array_equal(together._level_cpus[ratio], one_by_one._level_cpus[ratio]), ratio
        assert np.array_equal(together._level_alloc[ratio], one_by_one._level_alloc[ratio]), ratio
    for i in range(60):
        spec = vm(f"new{i}", int(rng.integers(1, 5)), float(rng.integers(1, 6)), float(rng.choice([1, 2, 3])))
        for policy in POLICIES:
            assert together.choose(spec, policy=policy).host == one_by_one.choose(spec, policy=policy).host
        one_by_one.deploy(spec)
        together.deploy(spec)


def test_a_batch_of_hosts_with_a_name_or_vm_twice_adds_none_of_them(cluster, i7):
    before = cluster.hosts
    with_x, also_x = HostAllocator(i7), HostAllocator(i7)
    with_x.deploy(vm("x", 1, 1, 1.0))
    also_x.deploy(vm("x", 1, 1, 2.0))
    for batch, why in (
        ([("n1", HostAllocator(i7)), ("n1", HostAllocator(i7))], "already registered"),
        ([("n1", HostAllocator(i7)), ("h0", HostAllocator(i7))], "already registered"),
        ([("n1", with_x), ("n2", also_x)], "already placed"),
    ):
        with pytest.raises(ValueError, match=why):
            cluster.add_hosts(batch)
        assert cluster.hosts == before
        assert cluster.host_of("x") is None
