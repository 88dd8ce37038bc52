"""RAPID's VM type table and flavor rounding, against PROTOCOL.md section 4.2."""

from __future__ import annotations

import pytest

from pinfold.rapid.flavors import VM_TYPES, suitable_type


def test_the_table_has_eighteen_types_cpu_outer_disk_inner():
    assert len(VM_TYPES) == 18
    assert [(t.vcpus, t.memory_mb, t.disk_gb) for t in VM_TYPES[:3]] == [
        (1, 1024, 20),
        (1, 1024, 40),
        (1, 2048, 20),
    ]
    assert [t.id for t in VM_TYPES] == list(range(18))
    assert (VM_TYPES[-1].vcpus, VM_TYPES[-1].memory_mb, VM_TYPES[-1].disk_gb) == (4, 4096, 40)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ((1, 512, 20), (1, 1024, 20)),
        ((3, 3000, 30), (2, 2048, 20)),
        ((8, 8192, 100), (4, 4096, 40)),
        ((0, 0, 0), (1, 1024, 20)),
        ((-5, -1, -1), (1, 1024, 20)),
        ((8, 8192, 20), (4, 4096, 20)),
        ((2, 4095, 39), (2, 2048, 20)),
    ],
)
def test_each_dimension_rounds_down_independently(request_, expected):
    chosen = suitable_type(*request_)
    assert (chosen.vcpus, chosen.memory_mb, chosen.disk_gb) == expected
