"""A refused placement as data, for the REST answer and the CLI.

The placement core says why each host refused a VM with a `Refusal` (a code, the
level, the numbers, whether the host could ever take it). The controller keeps
those objects up to the 409 `no host` answer, where each becomes a JSON object
(`refusal_json`, from `pinfold.model.refusal`: the agent's errors use the same
shape) and all of them one line (`summary`), counted by code and level as
Kubernetes' FitError does, so that people read the gist and scripts the codes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from pinfold.model.refusal import refusal_json
from pinfold.placement import Refusal, RefusalCode

__all__ = ["refusal_json", "summary"]


def summary(refusals: Mapping[str, Refusal], hosts: int) -> str:
    """ "0/3 hosts fit: 2 not enough cpu at 2.0, 1 not enough memory": the
    refusals counted by code and level, most first (ties: by code, then level),
    and the `hosts` that refused without a refusal as data counted as `refused
    otherwise`. Deterministic: the same refusals give the same line."""
    counts = Counter((_reason(refusal), refusal.level) for refusal in refusals.values())
    order = sorted(counts.items(), key=lambda item: (-item[1], item[0][0], item[0][1] or 0.0))
    parts = [
        f"{count} {code}" + (f" at {level}" if level is not None else "") for (code, level), count in order
    ]
    if hosts > len(refusals):
        parts.append(f"{hosts - len(refusals)} refused otherwise")
    return f"0/{hosts} hosts fit: " + (", ".join(parts) if parts else "no host registered")


def _reason(refusal: Refusal) -> str:
    """What a refusal is counted under: its code, and the group for a group's
    rule ("group policy: web (anti-affinity)"), which people need to read."""
    return refusal.reason if refusal.code is RefusalCode.GROUP_POLICY else refusal.code.value
