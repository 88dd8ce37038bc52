"""Weighted mixes written "key=weight,key=weight" (levels, sizes, lifetimes),
and the seeded assignment of levels to a trace that records none."""

from __future__ import annotations

import math

import numpy as np

from pinfold.sim.trace import Trace

__all__ = ["DEFAULT_LEVELS", "Mix", "assign_levels", "parse_mix"]

DEFAULT_LEVELS = "1.0=0.5,2.0=0.3,3.0=0.2"

Mix = dict[float, float]


def parse_mix(text: str, what: str = "mix", minimum_key: float | None = None) -> Mix:
    """Parse "1.0=0.5,2.0=0.3,3.0=0.2" into {1.0: 0.5, ...}.

    Weights must be positive and add up to 1 (within 1e-6), keys unique; any
    other syntax is a ValueError that quotes the offending part.
    """
    mix: Mix = {}
    for part in text.split(","):
        key_text, equals, weight_text = part.strip().partition("=")
        if not equals:
            raise ValueError(f"{what}: {part.strip()!r} is not KEY=WEIGHT (in {text!r})")
        try:
            key, weight = float(key_text), float(weight_text)
        except ValueError:
            raise ValueError(f"{what}: {part.strip()!r} is not KEY=WEIGHT with numbers") from None
        if not (math.isfinite(key) and math.isfinite(weight)) or weight <= 0:
            raise ValueError(f"{what}: weight of {key_text.strip()} must be a positive number")
        if minimum_key is not None and key < minimum_key:
            raise ValueError(f"{what}: {key_text.strip()} must be >= {minimum_key:g}")
        if key in mix:
            raise ValueError(f"{what}: {key_text.strip()} is given twice")
        mix[key] = weight
    total = sum(mix.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{what}: weights add up to {total:g}, not 1")
    return mix


def format_mix(mix: Mix) -> str:
    return ",".join(f"{key:g}={weight:g}" for key, weight in mix.items())


def assign_levels(trace: Trace, levels: Mix, seed: int, keep_recorded: bool = False) -> Trace:
    """Give VMs a level drawn from `levels` with a seeded generator; the same
    trace, mix and seed always give the same levels. With `keep_recorded`, VMs
    whose level the trace records keep it and only the others are drawn."""
    rng = np.random.default_rng(seed)
    keys = np.array(list(levels), dtype=np.float64)
    weights = np.array(list(levels.values()), dtype=np.float64)
    drawn = keys[rng.choice(len(keys), size=len(trace), p=weights / weights.sum())]
    missing = np.isnan(trace.ratio)
    if keep_recorded and not missing.all():
        ratio = np.where(missing, drawn, trace.ratio)
        note = (
            f"levels from the trace, and for the {int(missing.sum()):,} VMs without one drawn from the mix "
            f"{format_mix(levels)} with seed {seed}"
        )
        return trace.with_levels(ratio, note)
    note = f"levels drawn per VM from the mix {format_mix(levels)} with seed {seed}"
    return trace.with_levels(drawn, note)
