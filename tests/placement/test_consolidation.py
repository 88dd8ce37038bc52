"""The consolidation planner on small clusters whose right plan is checked by hand.

Hosts are the i7 topology: 8 usable CPUs, 31,776 MiB. Memory is 1 GiB per VM
unless a test needs memory to decide.
"""

from __future__ import annotations

import pytest

from pinfold.placement import Cluster, HostAllocator, HostSnapshot, VMSpec
from pinfold.placement.consolidation import Budget, Migration, Verdict, apply_plan, plan_consolidation
from tests.placement.helpers import vm


def build(i7, layout: dict[str, list[VMSpec]]) -> Cluster:
    """A cluster of i7 hosts, registered in the order given, each with its VMs deployed in order."""
    cluster = Cluster()
    for host, specs in layout.items():
        cluster.add_host(host, HostAllocator(i7))
        for spec in specs:
            cluster.deploy_on(host, spec)
    return cluster


def state(cluster: Cluster) -> dict[str, HostSnapshot]:
    return {host: cluster.allocator(host).snapshot() for host in cluster.hosts}


def moves(plan) -> list[tuple[str, str, str]]:
    return [(m.vm, m.source, m.target) for m in plan.migrations]


def verdicts(plan) -> dict[str, Verdict]:
    return {v.host: v.verdict for v in plan.verdicts}


@pytest.fixture
def three(i7):
    # loads 25% / 50% / 75%: h0 is the lightest and empties into h2, the fullest that fits
    return build(i7, {"h0": [vm("a", 2, 1, 1.0)], "h1": [vm("b", 4, 1, 1.0)], "h2": [vm("c", 6, 1, 1.0)]})


def test_the_lightest_host_empties_onto_the_fullest_that_fits(three):
    before = state(three)
    plan = plan_consolidation(three, Budget(10), now=0)
    assert moves(plan) == [("a", "h0", "h2")]
    assert plan.emptied == ("h0",)
    # h1's 4 vCPUs fit nowhere once h2 is full (h0, emptied, is no target); h2 received a VM
    assert verdicts(plan) == {"h0": Verdict.EMPTIED, "h1": Verdict.NO_TARGET, "h2": Verdict.COOLDOWN}
    assert "b (4 vCPUs at 1, 1024 MiB) fits no target" in plan.explain()
    assert "not enough cpu at 1.0" in plan.explain()
    assert state(three) == before  # planning changed nothing
    apply_plan(three, plan)
    assert len(three.allocator("h0")) == 0
    assert set(three.allocator("h2").vms) == {"a", "c"}
    for host in three.hosts:
        three.allocator(host).check_invariants()


def test_a_level_that_fits_only_after_its_vnode_grows_on_the_target(i7):
    # h1: premium 4 + a 2:1 vNode of 2 CPUs holding 2 vCPUs (room 2), 2 CPUs free.
    # z (4 vCPUs at 2.0) needs room 4: ceil((4-2)/2) = 1 CPU, then C + added >= 4 -> 2 CPUs.
    cluster = build(i7, {"h0": [vm("z", 4, 1, 2.0)], "h1": [vm("p", 4, 1, 1.0), vm("q", 2, 1, 2.0)]})
    plan = plan_consolidation(cluster, Budget(5), now=0)
    assert plan.migrations == (Migration("z", "h0", "h1", vm("z", 4, 1, 2.0), cpus_added=2),)
    apply_plan(cluster, plan)
    assert cluster.allocator("h1").level_usage(2.0) == (4, 6)
    assert cluster.allocator("h1").free_cpu_count == 0


def test_a_vnode_that_cannot_grow_enough_refuses_with_the_create_reason(i7):
    # as above but premium holds 5: one CPU free, z needs its vNode to grow by 2
    cluster = build(i7, {"h0": [vm("z", 4, 1, 2.0)], "h1": [vm("p", 5, 1, 1.0), vm("q", 2, 1, 2.0)]})
    plan = plan_consolidation(cluster, Budget(5), now=0)
    assert plan.migrations == ()
    first = plan.verdicts[0]
    assert (first.host, first.verdict) == ("h0", Verdict.NO_TARGET)
    assert "1 not enough cpu at 2.0" in first.detail
    # the same words a create of z on h1 gets
    assert str(cluster.allocator("h1").explain(vm("z2", 4, 1, 2.0))).startswith("not enough cpu")


def test_the_budget_stops_the_plan_and_a_host_larger_than_what_is_left_is_skipped(i7):
    # loads: two (2 x 1 vCPU) 25%, one (3 vCPUs) 37.5%, big 50%
    cluster = build(
        i7,
        {
            "big": [vm("x", 4, 1, 1.0)],
            "two": [vm("t1", 1, 1, 1.0), vm("t2", 1, 1, 1.0)],
            "one": [vm("o", 3, 1, 1.0)],
        },
    )
    plan = plan_consolidation(cluster, Budget(1), now=0)
    assert moves(plan) == [("o", "one", "big")]
    assert verdicts(plan) == {"two": Verdict.OVER_BUDGET, "one": Verdict.EMPTIED, "big": Verdict.NOT_TRIED}
    assert "takes 2 migrations, 1 left" in plan.verdicts[0].detail
    assert "budget is spent" in plan.verdicts[2].detail
    assert plan_consolidation(cluster, Budget(0), now=0).migrations == ()


def test_a_vm_that_moved_recently_is_left_alone_until_its_cooldown_ends(three):
    budget = Budget(10, cooldown_s=3600, last_moved={"a": 100.0})
    early = plan_consolidation(three, budget, now=1000)
    assert verdicts(early)["h0"] is Verdict.COOLDOWN
    assert "may move again at 3700" in early.verdicts[0].detail
    assert "a" not in [m.vm for m in early.migrations]
    late = plan_consolidation(three, budget, now=3700)
    assert moves(late) == [("a", "h0", "h2")]


def test_frozen_vms_keep_their_whole_host(three):
    plan = plan_consolidation(three, Budget(10), now=0, frozen={"a"})
    assert verdicts(plan)["h0"] is Verdict.FROZEN
    assert "a" not in [m.vm for m in plan.migrations]


def test_a_host_that_cannot_be_emptied_moves_nothing_and_leaves_no_trace(i7):
    # first-fit, T registered first. h0 (87.5%): b (4) fits T's 4 free CPUs, then
    # a (3 vCPUs, 2 GiB) fits nowhere: h0 moves nothing. h1 (30 GiB: 96.7%): c
    # needs T's 4 CPUs, which the undone trial must have given back.
    layout = {
        "T": [vm("x", 4, 1, 1.0)],
        "h0": [vm("a", 3, 2, 1.0), vm("b", 4, 1, 1.0)],
        "h1": [vm("c", 4, 30, 1.0)],
    }
    cluster = build(i7, layout)
    plan = plan_consolidation(cluster, Budget(10), now=0, policy="first-fit", sources={"h0", "h1"})
    assert moves(plan) == [("c", "h1", "T")]
    assert verdicts(plan) == {"h0": Verdict.NO_TARGET, "h1": Verdict.EMPTIED}
    assert plan.verdicts[0].detail.startswith("a (3 vCPUs at 1, 2048 MiB) fits no target")
    alone = plan_consolidation(build(i7, layout), Budget(10), now=0, policy="first-fit", sources={"h1"})
    assert alone.migrations == plan.migrations


def test_targets_limit_where_vms_may_go(three):
    plan = plan_consolidation(three, Budget(10), now=0, targets={"h0", "h1"})
    # h2 may not receive: a goes to h1 (2 of its 4 free CPUs), then h1 holds a moved VM
    assert moves(plan) == [("a", "h0", "h1")]


def test_give_up_after_stops_after_failures_in_a_row(three):
    plan = plan_consolidation(three, Budget(10), now=0, sources={"h1", "h2"}, targets={"h1", "h2"},
                              give_up_after=1)  # fmt: skip
    # h1's 4 vCPUs do not fit h2's 2 free CPUs; the plan stops there
    assert verdicts(plan) == {"h1": Verdict.NO_TARGET, "h2": Verdict.NOT_TRIED}
    assert "gave up after 1 hosts" in plan.verdicts[1].detail


def test_the_same_cluster_gives_the_same_plan(i7):
    layout = {
        f"h{i}": [
            vm(f"v{i}-{j}", 1 + (i + j) % 3, 1 + j % 2, (1.0, 2.0, 3.0)[(i * j) % 3])
            for j in range(i % 4 + 1)
        ]
        for i in range(8)
    }
    first = build(i7, layout)
    plans = [plan_consolidation(first, Budget(6), now=0) for _ in range(2)]
    plans.append(plan_consolidation(build(i7, layout), Budget(6), now=0))
    assert plans[0].migrations  # something to plan, so the comparison means something
    assert plans[0] == plans[1] == plans[2]
    assert plans[0].explain() == plans[2].explain()


def test_budget_values_are_checked():
    with pytest.raises(ValueError, match="max_migrations"):
        Budget(-1)
    with pytest.raises(ValueError, match="cooldown_s"):
        Budget(1, cooldown_s=-5)


def test_a_copied_allocator_is_independent_and_exact(i7):
    host = HostAllocator(i7)
    host.deploy(vm("p", 2, 1, 1.0))
    host.deploy(vm("s", 3, 1, 2.0))
    twin = host.copy()
    assert twin.snapshot() == host.snapshot()
    twin.deploy(vm("n", 2, 1, 2.0))
    twin.remove("p")
    assert set(host.vms) == {"p", "s"}
    assert host.level_usage(2.0) == (3, 3)
    host.check_invariants()
    twin.check_invariants()
    # the copy decides what the original would: same CPUs for the same request
    again = host.copy()
    assert again.deploy(vm("n", 2, 1, 2.0)).pinning == host.deploy(vm("n", 2, 1, 2.0)).pinning


def test_cluster_replace_swaps_a_host_and_refuses_a_clash(three, i7):
    copy = three.allocator("h0").copy()
    copy.remove("a")
    old = three.replace("h0", copy)
    assert three.host_of("a") is None
    assert "a" in old
    assert three.choose(vm("x", 8, 1, 1.0)).host == "h0"  # the columns follow the new allocator
    clash = HostAllocator(i7)
    clash.deploy(vm("b", 1, 1, 1.0))  # b lives on h1
    with pytest.raises(ValueError, match="already placed"):
        three.replace("h0", clash)
    assert three.allocator("h0") is copy


def test_a_drain_may_use_empty_hosts_and_says_when_the_rest_cannot_take_a_host(i7):
    cluster = build(
        i7, {"busy": [vm("a", 6, 1, 1.0), vm("b", 2, 1, 2.0)], "spare": [], "full": [vm("c", 8, 1, 1.0)]}
    )
    drain = plan_consolidation(
        cluster, Budget(100), now=0, sources={"busy"}, give_up_after=None, empty_targets=True
    )
    assert moves(drain) == [("a", "busy", "spare"), ("b", "busy", "spare")]
    # without empty targets the rest of the cluster (full) cannot take busy's VMs
    refused = plan_consolidation(cluster, Budget(100), now=0, sources={"busy"})
    assert refused.migrations == ()
    assert refused.verdicts[0].verdict is Verdict.NO_TARGET
    assert "fits no target: 0/3 hosts fit: 2 host unavailable, 1 not enough cpu at 1.0" in refused.explain()
