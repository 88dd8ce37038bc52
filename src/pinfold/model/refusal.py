"""A placement refusal as JSON, one shape on both sides of the wire.

The placement core says why a host refused a VM with a `Refusal` (a code, the
level, the numbers, whether the host could ever take it). The controller's
409 `no host` answer carries one per host (`refusals`); the agent's JSON error
for a refused placement carries its own (`refusal`), so that the controller
passes the agent's numbers on instead of the code alone. Both write
`refusal_json`; the controller reads the agent's with `refusal_from_json`.
"""

from __future__ import annotations

from typing import Any

from pinfold.placement import Refusal, RefusalCode

__all__ = ["refusal_from_json", "refusal_json"]


def refusal_json(refusal: Refusal) -> dict[str, Any]:
    """One refusal as JSON.

    `needed`/`free`/`capacity` are CPUs for `not enough cpu`, MiB for memory,
    null where the refusal has no numbers (a drained host, an older agent's
    refusal); `fits_ever` (whether the empty host could take the VM) is null then too."""
    known = refusal.requested is not None
    return {
        "code": refusal.code.value,
        "level": refusal.level,
        "needed": refusal.requested,
        "free": refusal.available,
        "capacity": refusal.capacity,
        "fits_ever": refusal.fits_empty if known else None,
        "detail": refusal.detail,
    }


def refusal_from_json(document: object) -> Refusal | None:
    """`refusal_json`'s inverse; None for anything that is not one (a peer's
    answer is data to check: an unknown code or a number that is no number)."""
    if not isinstance(document, dict) or document.get("code") not in RefusalCode._value2member_map_:
        return None
    numbers = [document.get(key) for key in ("level", "needed", "free", "capacity")]
    if not all(_number_or_none(value) for value in numbers):
        return None
    fits_ever, detail = document.get("fits_ever"), document.get("detail", "")
    if not isinstance(fits_ever, bool | None) or not isinstance(detail, str):
        return None
    level, needed, free, capacity = (None if value is None else float(value) for value in numbers)
    return Refusal(
        RefusalCode(document["code"]), detail, level=level, requested=needed, available=free,
        capacity=capacity, fits_empty=True if fits_ever is None else fits_ever,
    )  # fmt: skip


def _number_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
