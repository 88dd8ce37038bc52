from __future__ import annotations

import numpy as np
import pytest

from pinfold.sim.events import order_events, walk
from pinfold.sim.generator import TraceShape, generate_shape
from pinfold.sim.mix import assign_levels, parse_mix
from pinfold.sim.trace import NO_DEPARTURE, Trace


def test_parse_mix_reads_keys_and_weights():
    assert parse_mix("1.0=0.5,2.0=0.3,3.0=0.2") == {1.0: 0.5, 2.0: 0.3, 3.0: 0.2}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1.0=0.5,2.0=0.3", "add up to 0.8"),
        ("1.0:0.5", "not KEY=WEIGHT"),
        ("a=1", "with numbers"),
        ("1.0=0.5,1.0=0.5", "given twice"),
        ("1.0=-1,2.0=2", "positive"),
        ("0.5=1", "must be >= 1"),
    ],
)
def test_parse_mix_rejects_bad_syntax(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_mix(text, "--levels", minimum_key=1.0)


def tiny_trace(n: int = 2000) -> Trace:
    return Trace.from_columns([f"v{i}" for i in range(n)], [0] * n, [NO_DEPARTURE] * n, [1] * n, [1024] * n)


def test_assign_levels_is_seeded_and_follows_the_mix():
    mix = parse_mix("1.0=0.5,2.0=0.3,3.0=0.2")
    a = assign_levels(tiny_trace(), mix, seed=7)
    b = assign_levels(tiny_trace(), mix, seed=7)
    c = assign_levels(tiny_trace(), mix, seed=8)
    assert np.array_equal(a.ratio, b.ratio)
    assert not np.array_equal(a.ratio, c.ratio)
    share = {level: float(np.mean(a.ratio == level)) for level in (1.0, 2.0, 3.0)}
    assert share[1.0] == pytest.approx(0.5, abs=0.04)
    assert share[3.0] == pytest.approx(0.2, abs=0.04)
    assert "1=0.5,2=0.3,3=0.2" in a.level_note
    assert "seed 7" in a.level_note


def test_departures_go_before_arrivals_at_the_same_instant():
    trace = Trace.from_columns(["a", "b", "c"], [0, 10, 10], [10, 20, NO_DEPARTURE], [1, 1, 1], [1, 1, 1])
    events = order_events(trace)
    order = list(zip(events.times.tolist(), events.arrivals.tolist(), events.vms.tolist(), strict=True))
    assert order == [(0, True, 0), (10, False, 0), (10, True, 1), (10, True, 2), (20, False, 1)]
    assert events.instants == 3


def test_zero_lifetime_vms_are_skipped_and_counted():
    trace = Trace.from_columns(["a", "b"], [0, 5], [0, 9], [1, 1], [1, 1])
    events = order_events(trace)
    assert events.zero_lifetime == 1
    assert events.vms.tolist() == [1, 1]


def test_walk_calls_back_per_event_and_per_instant():
    trace = Trace.from_columns(["a", "b", "c"], [0, 0, 3], [3, 7, NO_DEPARTURE], [1, 1, 1], [1, 1, 1])
    seen: list[object] = []
    progress: list[int] = []
    walk(order_events(trace), lambda t, vm, arrival: seen.append((vm, arrival)), lambda t: seen.append(t),
         progress.append, progress_every=2)  # fmt: skip
    assert seen == [(0, True), (1, True), 0, (0, False), (2, True), 3, (1, False), 7]
    assert progress == [2, 4, 5]


def test_generator_is_seeded_and_honours_the_shape():
    shape = TraceShape(vms=5000, duration_s=86_400, seed=3)
    a, b = generate_shape(shape), generate_shape(shape)
    assert np.array_equal(a.arrival, b.arrival)
    assert np.array_equal(a.ratio, b.ratio)
    assert len(a) == 5000
    assert a.arrival.min() >= 0
    assert a.arrival.max() < 86_400
    assert set(np.unique(a.vcpus)) <= {1, 2, 4, 8, 16}
    assert set(np.unique(a.memory_mib // a.vcpus)) <= {1024, 2048, 4096}
    leaving = a.departure != NO_DEPARTURE
    assert (a.departure[leaving] > a.arrival[leaving]).all()
    assert (a.departure[leaving] <= 86_400).all()
    assert a.has_levels
