import numpy as np
import pytest

from pinfold.placement import cpus_to_add, shrunk_size


@pytest.mark.parametrize(
    ("cpus", "allocated", "ratio", "vcpus", "expected"),
    [
        (0, 0, 1.0, 2, 2),  # new vNode starts with v CPUs
        (0, 0, 3.0, 2, 2),  # ... whatever the ratio
        (2, 2, 2.0, 2, 0),  # room 2 admits 2
        (2, 4, 2.0, 2, 1),  # room 0: ceil(2/2)
        (1, 1, 2.0, 4, 3),  # ceil(3/2) = 2 is not enough: C + added >= v
        (3, 3, 3.0, 3, 0),
        (4, 8, 2.0, 1, 1),  # ceil(1/2)
        (3, 3, 1.1, 1, 1),  # room 0.3 (float error must not add a second CPU)
        (10, 11, 1.1, 0, 0),
    ],
    ids=lambda value: str(value),
)
def test_cpus_to_add_follows_design_table(cpus, allocated, ratio, vcpus, expected):
    assert cpus_to_add(cpus, allocated, ratio, vcpus) == expected


def test_cpus_to_add_is_exact_at_float_boundaries():
    # 3 CPUs at 1.2 with 3 vCPUs allocated: room 0.6 in exact arithmetic, and 3 more
    # vCPUs need ceil(2.4 / 1.2) = 2 CPUs; in floats the quotient is 2.0000000000000004
    assert (3 - (3 * 1.2 - 3)) / 1.2 > 2
    assert cpus_to_add(3, 3, 1.2, 3) == 2
    assert cpus_to_add(6, 6, 1.2, 6) == 4


@pytest.mark.parametrize(
    ("allocated", "largest", "ratio", "expected"),
    [(0, 0, 2.0, 0), (6, 2, 3.0, 2), (5, 1, 2.0, 3), (4, 3, 2.0, 3), (7, 1, 1.0, 7)],
)
def test_shrunk_size_is_max_of_ceil_and_largest(allocated, largest, ratio, expected):
    assert shrunk_size(allocated, largest, ratio) == expected


def test_arithmetic_is_elementwise_on_arrays_and_matches_scalars():
    rng = np.random.default_rng(7)
    cpus = rng.integers(0, 20, 200).astype(float)
    ratios = rng.choice([1.0, 1.5, 2.0, 3.0], 200)
    allocated = np.floor(cpus * ratios * rng.random(200))
    vcpus = 3
    vector = cpus_to_add(cpus, allocated, ratios, vcpus)
    scalar = [cpus_to_add(c, a, r, vcpus) for c, a, r in zip(cpus, allocated, ratios, strict=True)]
    assert list(vector) == scalar
