"""The controller's in-memory history of heartbeat samples: the last hour,
bounded by count too, and aged by the controller's clock."""

from __future__ import annotations

from typing import Any

from pinfold.controller.history import History

BEAT = {"vnodes": {"2.0": [0, 1]}, "usage": {"vnodes": {"2.0": {"used_cores": 0.5}}}}


def test_samples_span_the_last_hour_whatever_the_period():
    history = History()
    for tick in range(2 * 3600 * 4):  # two hours at 4 heartbeats a second... bounded by count
        history.record("h1", tick / 4, BEAT)
    samples = history.of("h1", now=7200.0)
    assert len(samples) == 3600
    history = History()
    for tick in range(0, 2 * 3600, 5):  # two hours at one every 5 s: the last hour, all of it
        history.record("h1", float(tick), BEAT)
    samples = history.of("h1", now=7195.0)
    assert (samples[0].time, samples[-1].time, len(samples)) == (3595.0, 7195.0, 721)
    assert (samples[-1].sizes, samples[-1].used) == ({"2.0": 2}, {"2.0": 0.5})


def test_a_silent_hosts_samples_age_out_by_the_controllers_clock():
    history = History()
    history.record("h1", 100.0, BEAT)
    assert len(history.of("h1", now=200.0)) == 1
    assert history.of("h1", now=100.0 + 3601) == []
    assert history.of("h1", now=200.0, since=150.0) == []
    assert history.of("nowhere", now=200.0) == []


def test_a_sample_leaves_out_what_is_not_of_the_expected_shape():
    """The API checks a heartbeat's shape; the history does not trust it to."""
    history = History()
    beats: list[dict[str, Any]] = [
        {"vnodes": [[0, 1]], "usage": {"vnodes": []}},
        {"vnodes": {"2.0": 3}, "usage": {"vnodes": {"2.0": {"used_cores": "x"}, "1.0": [1]}}},
        {"vnodes": {"2.0": [0, 1]}, "usage": {"vnodes": {"2.0": {"used_cores": float("nan")}}}},
        {"usage": "busy"},
    ]
    for beat in beats:
        history.record("h1", 1.0, beat)
    assert [(s.sizes, s.used) for s in history.of("h1", now=2.0)] == [
        ({}, {}),
        ({}, {}),
        ({"2.0": 2}, {}),
        ({}, {}),
    ]
