"""Distances of DESIGN.md on the real SlackVM topology files."""

import json

import numpy as np

from tests.conftest import EPYC


def test_i7_distances_are_10_for_smt_siblings_and_40_otherwise(i7):
    d = i7.distances
    for a in range(8):
        for b in range(8):
            if a == b:
                continue
            expected = 10 if b == (a + 4) % 8 else 40
            assert d[a, b] == expected, (a, b)


def test_epyc_distances_follow_cache_then_numa(epyc):
    d = epyc.distances
    assert d[0, 128] == 10  # SMT siblings share L1
    assert d[0, 1] == 40  # same L3 (CCX of 4 cores)
    assert d[0, 4] == 50  # same socket, other L3: 40 + local SLIT 10
    assert d[0, 64] == 72  # other socket: 40 + SLIT 32
    assert d[0, 200] == 72
    assert d[130, 1] == 40  # sibling of 2 shares L3 with 1


def test_stored_distances_in_the_file_are_ignored(epyc):
    stored = json.loads(EPYC.read_text())["cpuset"]["distances"]
    # the file carries an older formula for other-socket pairs
    assert stored["0"]["64"] != 72
    assert epyc.distance(0, 64) == 72


def test_distance_matrix_is_symmetric_and_read_only(epyc_exp):
    d = epyc_exp.distances
    assert d.shape == (256, 256)
    assert np.array_equal(d, d.T)
    assert not d.flags.writeable


def test_excluded_cpus_of_exp_file_are_not_usable(epyc_exp):
    assert epyc_exp.host_count == 256
    assert len(epyc_exp.usable_cpus) == 232
    assert not set(epyc_exp.usable_cpus) & (set(range(12)) | set(range(128, 140)))
