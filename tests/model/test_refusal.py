"""A placement refusal as JSON (`pinfold.model.refusal`): what the agent
writes, the controller reads back whole, and anything else it reads as none."""

from __future__ import annotations

import pytest

from pinfold.model.refusal import refusal_from_json, refusal_json
from pinfold.placement import Refusal, RefusalCode

CPU = RefusalCode.NOT_ENOUGH_CPU


@pytest.mark.parametrize(
    "refusal",
    [
        Refusal(CPU, level=2.0, requested=9.0, available=8.0, capacity=8.0, fits_empty=False),
        Refusal(RefusalCode.NOT_ENOUGH_MEMORY, level=1.0, requested=512.0, available=0.0, capacity=4096.0),
        Refusal(RefusalCode.HOST_UNAVAILABLE, detail="h2 is draining"),
        Refusal(RefusalCode.INVALID_REQUEST, detail="ratio 0.5"),
    ],
)
def test_a_refusal_reads_back_as_it_was_written(refusal):
    assert refusal_from_json(refusal_json(refusal)) == refusal


GOOD = refusal_json(Refusal(CPU, level=1.0, requested=2.0, available=0.0, capacity=8.0))


@pytest.mark.parametrize(
    "document",
    [
        None,
        "not enough cpu",
        [GOOD],
        {**GOOD, "code": "no such code"},
        {**GOOD, "needed": "2"},
        {**GOOD, "free": True},
        {**GOOD, "fits_ever": "yes"},
        {**GOOD, "detail": 3},
        {key: value for key, value in GOOD.items() if key != "code"},
    ],
    ids=["null", "a-string", "a-list", "unknown-code", "needed-a-string", "free-a-bool", "fits-a-string",
         "detail-a-number", "no-code"],
)  # fmt: skip
def test_anything_else_is_no_refusal(document):
    assert refusal_from_json(document) is None


def test_integers_are_numbers_too():
    refusal = refusal_from_json({**GOOD, "needed": 2, "free": 0, "capacity": 8, "level": 1})
    assert refusal == Refusal(CPU, level=1.0, requested=2.0, available=0.0, capacity=8.0)
