"""VM groups in the cluster choice: a hard rule rules hosts out (and the
explanation names the group and those hosts), a soft one ranks before the
policy does, and the one-host check (`host_refusal`) agrees with the choice."""

from __future__ import annotations

import numpy as np
import pytest

from pinfold.placement import (
    POLICIES,
    Cluster,
    GroupPolicy,
    GroupRule,
    HostAllocator,
    NoHostError,
    RefusalCode,
    host_refusal,
)
from tests.placement.helpers import vm

ANTI, AFFINITY = GroupPolicy.ANTI_AFFINITY, GroupPolicy.AFFINITY
SOFT_ANTI, SOFT = GroupPolicy.SOFT_ANTI_AFFINITY, GroupPolicy.SOFT_AFFINITY


def place(cluster: Cluster, policy: GroupPolicy, count: int, first_fit: bool = True) -> list[str]:
    """Deploy `count` small VMs of one group, each seeing the ones before it."""
    rule = GroupRule("web", policy)
    hosts = []
    for n in range(count):
        spec = vm(f"web-{n}", 1, 1, 1.0)
        host, _ = cluster.deploy(spec, "first-fit" if first_fit else "progress", group=rule)
        hosts.append(host)
        rule = rule.with_member(spec.name)
    return hosts


def test_anti_affinity_spreads_and_refuses_the_fourth_on_three_hosts_naming_the_group(cluster):
    assert place(cluster, ANTI, 3) == ["h0", "h1", "h2"]
    rule = GroupRule("web", ANTI, frozenset({"web-0", "web-1", "web-2"}))
    with pytest.raises(NoHostError) as error:
        cluster.deploy(vm("web-3", 1, 1, 1.0), group=rule)
    decision = error.value.decision
    assert error.value.refusal.code is RefusalCode.GROUP_POLICY
    assert {r.reason for r in decision.refusals().values()} == {"group policy: web (anti-affinity)"}
    assert str(error.value) == (
        "0/3 hosts fit: 3 group policy: web (anti-affinity); group web (anti-affinity) rules out "
        "the 3 hosts holding its members: h0 (web-0), h1 (web-1), h2 (web-2)"
    )


def test_affinity_follows_the_first_member_even_when_the_policy_prefers_another_host(cluster):
    cluster.deploy_on("h1", vm("big", 2, 8, 1.0))  # memory-heavy: progress adds CPUs there
    hosts = place(cluster, AFFINITY, 4, first_fit=False)
    assert len(set(hosts)) == 1
    rule = GroupRule("web", AFFINITY, frozenset(f"web-{n}" for n in range(4)))
    assert cluster.choose(vm("web-4", 1, 1, 1.0), "worst-fit").host != hosts[0]
    decision = cluster.choose(vm("web-4", 1, 1, 1.0), "worst-fit", group=rule)
    assert decision.host == hosts[0]
    assert decision.ranking() == [hosts[0]]
    others = sorted(set(cluster.hosts) - {hosts[0]})
    assert sorted(decision.refusals()) == others
    assert (
        f"keeps to the hosts holding its members, {hosts[0]} (web-0, web-1, web-2, web-3)"
        in decision.explain()
    )


def test_affinity_with_a_full_host_refuses_rather_than_breaking_the_group(cluster):
    cluster.deploy_on("h1", vm("web-0", 8, 1, 1.0))  # h1 is full of CPUs
    rule = GroupRule("web", AFFINITY, frozenset({"web-0"}))
    decision = cluster.choose(vm("web-1", 1, 1, 1.0), group=rule)
    assert decision.host is None
    refusals = decision.refusals()
    assert refusals["h1"].code is RefusalCode.NOT_ENOUGH_CPU  # capacity first, then the group
    assert refusals["h0"].code is refusals["h2"].code is RefusalCode.GROUP_POLICY
    assert decision.explain().startswith(
        "0/3 hosts fit: 2 group policy: web (affinity), 1 not enough cpu at 1.0"
    )


def test_soft_anti_affinity_spreads_then_doubles_up_instead_of_refusing(cluster):
    hosts = place(cluster, SOFT_ANTI, 5)
    assert hosts == ["h0", "h1", "h2", "h0", "h1"]


def test_soft_affinity_packs_but_goes_elsewhere_when_the_host_is_full(cluster):
    rule = GroupRule("db", SOFT)
    cluster.deploy_on("h0", vm("other", 2, 1, 1.0))
    cluster.deploy_on("h2", vm("db-0", 6, 1, 1.0))  # 2 CPUs left on h2
    rule = rule.with_member("db-0")
    spec = vm("db-1", 2, 1, 1.0)
    decision = cluster.choose(spec, "first-fit", group=rule)
    assert decision.host == "h2"  # first-fit alone would say h0
    assert decision.ranking() == ["h2", "h0", "h1"]
    cluster.deploy_on("h2", spec)
    decision = cluster.choose(vm("db-2", 1, 1, 1.0), "first-fit", group=rule.with_member("db-1"))
    assert decision.host == "h0"  # h2 is full: soft, so not refused


@pytest.mark.parametrize("policy", list(GroupPolicy))
@pytest.mark.parametrize("scoring", list(POLICIES))
def test_best_host_agrees_with_choose_with_many_empty_hosts(i7, policy, scoring):
    c = Cluster()
    for n in range(40):  # enough empty hosts for best_host to score only a few
        c.add_host(f"h{n:02}", HostAllocator(i7))
    rule = GroupRule("g", policy)
    rng = np.random.default_rng(7)
    for n in range(30):
        spec = vm(f"g-{n}", int(rng.integers(1, 4)), float(rng.integers(1, 6)), 1.0)
        chosen = c.choose(spec, scoring, group=rule).host
        assert c.best_host(spec, scoring, group=rule) == chosen
        if chosen is None:
            continue
        c.deploy_on(chosen, spec)
        rule = rule.with_member(spec.name)


@pytest.mark.parametrize("policy", list(GroupPolicy))
def test_the_one_host_check_agrees_with_the_cluster_choice(cluster, policy):
    cluster.deploy_on("h1", vm("m-0", 1, 1, 1.0))
    cluster.deploy_on("h1", vm("m-1", 1, 1, 1.0))
    rule = GroupRule("m", policy, frozenset({"m-0", "m-1"}))
    decision = cluster.choose(vm("m-2", 1, 1, 1.0), group=rule)
    where = {name: cluster.host_of(name) for name in rule.members}
    for host in cluster.hosts:
        by_choice = decision.refusals().get(host)
        assert host_refusal(rule, host, where) == by_choice, host


def test_a_group_with_no_member_placed_constrains_nothing(cluster):
    for policy in GroupPolicy:
        plain = cluster.choose(vm("x", 1, 1, 1.0))
        grouped = cluster.choose(vm("x", 1, 1, 1.0), group=GroupRule("g", policy, frozenset({"x", "gone"})))
        assert grouped.host == plain.host
        assert grouped.ranking() == plain.ranking()
        assert grouped.explain() == plain.explain()
