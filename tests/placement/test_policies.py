"""Each policy on hand-computed hosts; shared edge cases for all of them."""

from __future__ import annotations

import numpy as np
import pytest

from pinfold.placement import POLICIES, Demand, HostColumns, get_policy
from pinfold.placement.policies import balance_terms


def columns(*hosts: tuple[float, float, float, float]) -> HostColumns:
    """hosts as (usable_cpus, usable_mem, free_cpus, mem_alloc)."""
    data = np.array(hosts, dtype=float)
    return HostColumns.of(data[:, 0], data[:, 1], data[:, 2], data[:, 3])


def demand(cpus, memory):
    return Demand(np.asarray(cpus, dtype=float), float(memory))


def test_progress_rewards_moving_toward_the_hosts_memory_per_cpu():
    # R* = 4096 MiB per CPU on both hosts. Host 0 is CPU-heavy (2048/CPU); host 1 balanced.
    hosts = columns((8, 32768, 4, 8192), (8, 32768, 4, 16384))
    scores = POLICIES["progress"].score(hosts, demand([2, 2], 16384))
    # host 0: |2048-4096| - |(8192+16384)/6 - 4096| = 2048 - 0 = 2048
    assert scores[0] == pytest.approx(2048)
    # host 1: 0 - |(32768/6) - 4096| = -1365.33, times 1 + 4/8
    assert scores[1] == pytest.approx(-(32768 / 6 - 4096) * 1.5)


def test_progress_on_an_empty_host_uses_the_target_ratio():
    hosts = columns((8, 31776, 8, 0))
    assert POLICIES["progress"].score(hosts, demand([2], 2048))[0] == -2948.0


def test_progress_guards_a_zero_cpu_denominator():
    hosts = columns((8, 8000, 8, 0))
    score = POLICIES["progress"].score(hosts, demand([0], 1000))
    # no CPU before or after: Rnew is taken per 1 CPU (1000 MiB), exactly R*: no change, score 0
    assert score[0] == 0.0


def test_balance_terms_agree_for_scalars_and_arrays():
    rows = [(8, 31776, 3, 8192), (8, 31776, 8, 0), (232, 1031742, 40, 500000)]
    data = np.array(rows, dtype=float)
    target, deviation, penalty = balance_terms(data[:, 0], data[:, 1], data[:, 0] - data[:, 2], data[:, 3])
    for i, (usable, mem, free, alloc) in enumerate(rows):
        assert balance_terms(float(usable), float(mem), float(usable - free), float(alloc)) == (
            target[i], deviation[i], penalty[i])  # fmt: skip


def test_best_fit_prefers_the_fullest_host_and_worst_fit_the_emptiest():
    hosts = columns((8, 8000, 8, 0), (8, 8000, 2, 6000), (8, 8000, 5, 3000))
    d = demand([1, 1, 1], 1000)
    assert int(np.argmax(POLICIES["best-fit"].score(hosts, d))) == 1
    assert int(np.argmax(POLICIES["worst-fit"].score(hosts, d))) == 0


def test_dot_product_prefers_free_capacity_aligned_with_the_demand():
    # a CPU-hungry VM: host 0 has free CPUs, host 1 free memory
    hosts = columns((8, 8000, 8, 7000), (8, 8000, 1, 0))
    d = demand([4, 4], 100)
    scores = POLICIES["dot-product"].score(hosts, d)
    assert scores[0] > scores[1]
    assert scores[0] == pytest.approx(4 / 8 * 8 / 8 + 100 / 8000 * 1000 / 8000)


def test_first_fit_scores_every_host_alike():
    hosts = columns((8, 8000, 8, 0), (8, 8000, 1, 7000))
    assert list(POLICIES["first-fit"].score(hosts, demand([1, 1], 10))) == [0.0, 0.0]


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_returns_one_finite_score_per_host_without_mutating(name):
    hosts = columns((8, 8000, 8, 0), (4, 1000, 0, 1000), (1, 1, 1, 0))
    fields = ("usable_cpus", "usable_mem", "free_cpus", "mem_alloc", "cpu_alloc", "deviation", "penalty")
    snapshot = [getattr(hosts, f).copy() for f in fields]
    d = demand([2, 3, 1], 512)
    scores = get_policy(name).score(hosts, d)
    assert scores.shape == (3,)
    assert np.isfinite(scores).all()
    after = [getattr(hosts, f) for f in fields]
    assert all(np.array_equal(a, b) for a, b in zip(snapshot, after, strict=True))


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_ties_identical_hosts(name):
    hosts = columns((8, 8000, 4, 100), (8, 8000, 4, 100))
    scores = get_policy(name).score(hosts, demand([1, 1], 100))
    assert scores[0] == scores[1]


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="progress, first-fit, best-fit, worst-fit, dot-product"):
        get_policy("random")


def test_every_policy_documents_itself():
    for policy in POLICIES.values():
        assert policy.summary
        assert policy.summary != policy.name
