"""Refusals as data, and the one exception the placement core raises.

A refusal carries a stable code (assert on codes, not prose), the resource,
what was asked and what was there, and whether the request could ever fit on
that host. The same object feeds `HostAllocator.explain`, the cluster's "why no
host" summary, the REST error bodies and the simulator's counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["PlacementError", "Refusal", "RefusalCode"]


class RefusalCode(StrEnum):
    """The closed set of reasons a host refuses a request (DESIGN.md)."""

    NOT_ENOUGH_CPU = "not enough cpu"
    NOT_ENOUGH_MEMORY = "not enough memory"
    DUPLICATE_NAME = "duplicate name"
    INVALID_REQUEST = "invalid request"
    UNKNOWN_VM = "unknown vm"
    #: the host is excluded by the caller (down, draining, not a candidate)
    HOST_UNAVAILABLE = "host unavailable"
    #: the VM's group rules the host out (affinity, anti-affinity: `placement.groups`)
    GROUP_POLICY = "group policy"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one host refused one request: the first check that failed.

    For `not enough cpu`, `requested` is the number of CPUs the level's vNode
    would have to grow by and `available` the free CPUs; for memory, MiB.
    `fits_empty` tells whether the same request would fit that host when empty.
    """

    code: RefusalCode
    detail: str = ""
    level: float | None = None
    requested: float | None = None
    available: float | None = None
    capacity: float | None = None
    fits_empty: bool = True

    @property
    def reason(self) -> str:
        """The stable string of DESIGN.md: the code, plus detail for invalid
        requests and for a group's rule (the group it is: "group policy: web
        (anti-affinity)")."""
        if self.code in (RefusalCode.INVALID_REQUEST, RefusalCode.GROUP_POLICY) and self.detail:
            return f"{self.code.value}: {self.detail}"
        return self.code.value

    def describe(self) -> str:
        """A sentence for people: the reason and the numbers behind it."""
        if self.requested is None:
            return self.reason
        unit = "CPUs" if self.code is RefusalCode.NOT_ENOUGH_CPU else "MiB"
        where = f" at level {self.level}" if self.level is not None else ""
        text = (
            f"{self.reason}{where}: needs {_num(self.requested)} {unit}, "
            f"{_num(self.available)} free of {_num(self.capacity)}"
        )
        return text if self.fits_empty else text + " (would not fit even on the empty host)"


class PlacementError(Exception):
    """A refused deploy or remove. `str(error)` is the stable reason string;
    `error.refusal` holds the data behind it. Nothing changed on the host."""

    def __init__(self, refusal: Refusal | str) -> None:
        if isinstance(refusal, str):
            refusal = _refusal_from_reason(refusal)
        self.refusal = refusal
        super().__init__(refusal.reason)

    @property
    def code(self) -> RefusalCode:
        return self.refusal.code

    @property
    def reason(self) -> str:
        return self.refusal.reason


def _refusal_from_reason(reason: str) -> Refusal:
    for code in RefusalCode:
        if reason == code.value:
            return Refusal(code)
        if reason.startswith(code.value + ": "):
            return Refusal(code, detail=reason.removeprefix(code.value + ": "))
    raise ValueError(f"unknown refusal reason {reason!r}")


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
