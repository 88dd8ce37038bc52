"""Replays on small hand-made traces (i7 hosts: 8 CPUs, 31,776 MiB) whose
outcome can be worked out by hand, and a check that a replay is exactly a
sequence of calls to the placement core."""

from __future__ import annotations

import numpy as np
import pytest

from pinfold.placement import Cluster, HostAllocator, NoHostError, VMSpec
from pinfold.sim.events import order_events
from pinfold.sim.generator import TraceShape, generate_shape
from pinfold.sim.replay import SEGREGATED, Scenario, simulate
from pinfold.sim.report import summarize
from pinfold.sim.trace import NO_DEPARTURE, Trace
from pinfold.topology import Topology

GIB = 1024


def trace_of(rows: list[tuple[str, int, int, int, int, float]]) -> Trace:
    ids, arrival, departure, vcpus, memory, ratio = (list(c) for c in zip(*rows, strict=True))
    return Trace.from_columns(ids, arrival, departure, vcpus, memory, ratio)


def test_elastic_cluster_opens_a_host_when_none_fits(i7):
    trace = trace_of([("a", 0, NO_DEPARTURE, 6, GIB, 1.0), ("b", 10, NO_DEPARTURE, 6, GIB, 1.0)])
    result = simulate(trace, i7, Scenario("progress"))
    assert result.hosts_opened == 2
    assert result.rejected == []
    assert list(result.series.hosts_in_use) == [1, 2]
    assert summarize(result)["peak_hosts"] == 2


def test_hosts_are_reused_after_departures(i7):
    trace = trace_of([("a", 0, 5, 8, GIB, 1.0), ("b", 5, NO_DEPARTURE, 8, GIB, 1.0)])
    result = simulate(trace, i7, Scenario("first-fit"))
    assert result.hosts_opened == 1  # a leaves at 5 before b arrives at 5


def test_fixed_cluster_rejects_and_lists_what_does_not_fit(i7):
    trace = trace_of([("a", 0, 100, 6, GIB, 1.0), ("b", 10, 100, 6, GIB, 1.0), ("c", 20, 30, 1, GIB, 2.0)])
    result = simulate(trace, i7, Scenario("progress", hosts=1))
    assert result.rejected == ["b"]
    assert result.never_fit == []
    summary = summarize(result)
    assert summary["placed"] == 2
    assert summary["rejected"] == 1
    assert summary["cluster"] == "fixed, 1 hosts"


def test_a_vm_larger_than_any_host_is_rejected_even_when_elastic(i7):
    trace = trace_of([("huge", 0, 10, 9, GIB, 1.0), ("ok", 0, 10, 1, GIB, 1.0)])
    result = simulate(trace, i7, Scenario("progress"))
    assert result.rejected == ["huge"]
    assert result.never_fit == ["huge"]
    assert result.hosts_opened == 1


def test_segregated_gives_each_level_its_own_hosts(i7):
    trace = trace_of([("p", 0, 10, 2, GIB, 1.0), ("q", 0, 10, 2, GIB, 2.0), ("r", 0, 10, 2, GIB, 3.0)])
    shared = simulate(trace, i7, Scenario("progress"))
    segregated = simulate(trace, i7, Scenario(SEGREGATED))
    assert shared.hosts_opened == 1
    assert segregated.hosts_opened == 3
    assert segregated.cluster_hosts == {"L1-": 1, "L2-": 1, "L3-": 1}
    assert summarize(segregated)["peak_hosts"] == 3


def test_lower_bound_takes_the_larger_of_cpu_and_memory(i7):
    # CPU demand: 3 x 4 vCPUs at 2:1 = 6 CPUs -> 1 host; memory: 3 x 12 GiB = 36 GiB -> 2 hosts
    trace = trace_of([(f"v{i}", 0, 10, 4, 12 * GIB, 2.0) for i in range(3)])
    result = simulate(trace, i7, Scenario("progress"))
    assert list(result.series.lower_bound) == [2, 0]
    assert result.hosts_opened == 2
    assert summarize(result)["peak_hosts_over_lower_bound"] == 1.0


def test_unallocated_capacity_at_peak(i7):
    trace = trace_of([("a", 0, 10, 2, 4 * GIB, 1.0)])
    summary = summarize(simulate(trace, i7, Scenario("progress")))
    assert summary["unallocated_cpus_at_peak"] == 6
    assert summary["unallocated_cpu_fraction_at_peak"] == 0.75
    assert summary["unallocated_memory_mib_at_peak"] == 31776 - 4096


def test_mean_hosts_is_weighted_by_time(i7):
    trace = trace_of([("a", 0, 100, 8, GIB, 1.0), ("b", 0, 10, 8, GIB, 1.0)])
    summary = summarize(simulate(trace, i7, Scenario("progress")))
    # 2 hosts for 10 s, 1 host for 90 s
    assert summary["mean_hosts"] == pytest.approx((2 * 10 + 1 * 90) / 100)


def test_trace_without_levels_is_refused(i7):
    trace = Trace.from_columns(["a"], [0], [1], [1], [1])
    with pytest.raises(ValueError, match="no levels"):
        simulate(trace, i7, Scenario())


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [({"policy": "nope"}, "unknown policy"), ({"policy": SEGREGATED, "hosts": 3}, "without --hosts"),
     ({"hosts": 0}, "at least one host")],
)  # fmt: skip
def test_bad_scenarios_are_refused(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        Scenario(**kwargs)


def replay_by_hand(trace: Trace, topology: Topology, hosts: int, policy: str) -> tuple[list[str], list[int]]:
    """Drive a Cluster by hand in the documented event order: the rejected VMs
    and the hosts in use after each instant."""
    cluster = Cluster()
    for h in range(hosts):
        cluster.add_host(f"h{h}", HostAllocator(topology))
    events = order_events(trace)
    rejected, in_use = [], []
    times = events.times.tolist()
    for i, (vm, arrival) in enumerate(zip(events.vms.tolist(), events.arrivals.tolist(), strict=True)):
        name = trace.vm_ids[vm]
        if arrival:
            spec = VMSpec(name, int(trace.vcpus[vm]), int(trace.memory_mib[vm]), float(trace.ratio[vm]))
            try:
                cluster.deploy(spec, policy)
            except NoHostError:
                rejected.append(name)
        elif cluster.host_of(name) is not None:
            cluster.remove(name)
        if i + 1 == len(times) or times[i + 1] != times[i]:
            in_use.append(sum(1 for h in cluster.hosts if len(cluster.allocator(h))))
    return rejected, in_use


@pytest.mark.parametrize("policy", ["progress", "best-fit", "dot-product"])
def test_replay_is_exactly_a_sequence_of_placement_core_calls(i7, policy):
    """The replay must reject the same VMs and have the same hosts in use at
    every instant as calls to the placement core made by hand."""
    shape = TraceShape(vms=400, duration_s=20_000, sizes="1=0.5,2=0.3,4=0.2", lifetimes="3000=1", seed=4)
    trace = generate_shape(shape)
    result = simulate(trace, i7, Scenario(policy, hosts=4))
    rejected, in_use = replay_by_hand(trace, i7, 4, policy)
    assert rejected == result.rejected
    assert rejected  # the 4-host cluster is too small for this trace: rejections happen
    assert in_use == result.series.hosts_in_use.tolist()
    assert np.all(result.series.hosts_in_use <= 4)


def test_fixed_cluster_reports_vms_that_fit_no_host(i7):
    trace = trace_of(
        [("huge", 0, 10, 9, GIB, 1.0), ("crowd", 0, 10, 8, GIB, 1.0), ("late", 5, 10, 8, GIB, 1.0)]
    )
    result = simulate(trace, i7, Scenario("progress", hosts=1))
    assert result.rejected == ["huge", "late"]
    assert result.never_fit == ["huge"]


def test_duplicate_vm_ids_are_refused(i7):
    trace = trace_of([("a", 0, 10, 1, GIB, 1.0), ("a", 5, 10, 1, GIB, 1.0)])
    with pytest.raises(ValueError, match="twice"):
        simulate(trace, i7, Scenario("progress"))


@pytest.mark.parametrize("policy", ["progress", "best-fit"])
def test_replay_on_a_mostly_empty_large_cluster_matches_the_full_choice(i7, policy):
    """60 hosts, most of them empty: best_host prunes them; the replay must still
    make exactly the choices of Cluster.deploy (which scores every host)."""
    shape = TraceShape(vms=300, duration_s=20_000, sizes="1=0.5,2=0.3,4=0.2", lifetimes="3000=1", seed=6)
    trace = generate_shape(shape)
    result = simulate(trace, i7, Scenario(policy, hosts=60))
    rejected, in_use = replay_by_hand(trace, i7, 60, policy)
    assert rejected == result.rejected == []
    assert in_use == result.series.hosts_in_use.tolist()
    assert max(in_use) < 30  # most of the 60 hosts stayed empty: the pruned path ran
