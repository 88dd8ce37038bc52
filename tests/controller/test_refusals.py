"""The one-line summary of a refused placement, built from the hosts' refusals."""

from __future__ import annotations

import pytest

from pinfold.controller.refusals import refusal_json, summary
from pinfold.placement import Refusal, RefusalCode

CPU, MEM, GONE = RefusalCode.NOT_ENOUGH_CPU, RefusalCode.NOT_ENOUGH_MEMORY, RefusalCode.HOST_UNAVAILABLE


@pytest.mark.parametrize(
    ("refusals", "hosts", "expected"),
    [
        ({"a": Refusal(MEM), "b": Refusal(MEM)}, 2, "0/2 hosts fit: 2 not enough memory"),
        (
            {"a": Refusal(CPU, level=2.0), "b": Refusal(MEM), "c": Refusal(CPU, level=2.0)},
            3,
            "0/3 hosts fit: 2 not enough cpu at 2.0, 1 not enough memory",
        ),
        (  # ties: by code, then level
            {
                "a": Refusal(MEM),
                "b": Refusal(CPU, level=2.0),
                "c": Refusal(CPU, level=1.0),
                "d": Refusal(GONE),
            },
            4,
            "0/4 hosts fit: 1 host unavailable, 1 not enough cpu at 1.0, 1 not enough cpu at 2.0, "
            "1 not enough memory",
        ),
        (  # a host refused without a code of the placement core
            {"a": Refusal(CPU)},
            2,
            "0/2 hosts fit: 1 not enough cpu, 1 refused otherwise",
        ),
        ({}, 0, "0/0 hosts fit: no host registered"),
    ],
)
def test_summary_counts_by_code_and_level(refusals, hosts, expected):
    assert summary(refusals, hosts) == expected


def test_a_refusal_as_json_names_its_numbers_and_null_for_what_is_unknown():
    refusal = Refusal(CPU, level=2.0, requested=9.0, available=8.0, capacity=8.0, fits_empty=False)
    assert refusal_json(refusal) == {
        "code": "not enough cpu", "level": 2.0, "needed": 9.0, "free": 8.0, "capacity": 8.0,
        "fits_ever": False, "detail": "",
    }  # fmt: skip
    assert refusal_json(Refusal(GONE, detail="h2 is draining")) == {
        "code": "host unavailable", "level": None, "needed": None, "free": None, "capacity": None,
        "fits_ever": None, "detail": "h2 is draining",
    }  # fmt: skip
