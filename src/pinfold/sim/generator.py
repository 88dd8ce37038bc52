"""Seeded synthetic traces for scale tests (`pinfold trace generate`).

Arrivals are uniform over the duration (a Poisson process, sorted); each VM
draws a vCPU count from `sizes`, MiB per vCPU from `memory`, a lifetime from
an exponential distribution whose mean is drawn from `lifetimes`, and a level
from `levels`. Lifetimes that run past the end leave the departure empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pinfold.sim.mix import Mix, format_mix, parse_mix
from pinfold.sim.trace import NO_DEPARTURE, Trace

__all__ = ["TraceShape", "generate", "generate_shape"]


@dataclass(frozen=True)
class TraceShape:
    vms: int = 10_000
    duration_s: int = 7 * 86_400
    sizes: str = "1=0.5,2=0.2,4=0.15,8=0.1,16=0.05"
    memory: str = "1024=0.3,2048=0.4,4096=0.3"
    lifetimes: str = "1800=0.6,36000=0.3,432000=0.1"
    levels: str = "1.0=0.5,2.0=0.3,3.0=0.2"
    seed: int = 0


def generate(shape: TraceShape, sizes: Mix, memory: Mix, lifetimes: Mix, levels: Mix) -> Trace:
    if shape.vms < 1 or shape.duration_s < 1:
        raise ValueError("a trace needs at least one VM and a duration of at least 1 s")
    rng = np.random.default_rng(shape.seed)
    n = shape.vms
    arrival = np.sort(rng.integers(0, shape.duration_s, size=n))
    vcpus = _draw(rng, sizes, n).astype(np.int64)
    memory_mib = vcpus * _draw(rng, memory, n).astype(np.int64)
    lifetime = np.maximum(1, rng.exponential(_draw(rng, lifetimes, n))).astype(np.int64)
    departure = arrival + lifetime
    departure[departure > shape.duration_s] = NO_DEPARTURE
    ratio = _draw(rng, levels, n)
    width = len(str(n))
    trace = Trace.from_columns(
        [f"syn-{i:0{width}d}" for i in range(n)], arrival, departure, vcpus, memory_mib, ratio,
        source=f"synthetic, {n} VMs over {shape.duration_s} s, seed {shape.seed}",
    )  # fmt: skip
    note = f"levels drawn per VM from the mix {format_mix(levels)} with seed {shape.seed}"
    return trace.with_levels(trace.ratio, note)


def generate_shape(shape: TraceShape) -> Trace:
    """`generate` with the shape's own mixes parsed (ValueError on a bad mix)."""
    return generate(
        shape,
        parse_mix(shape.sizes, "--sizes", minimum_key=1),
        parse_mix(shape.memory, "--memory", minimum_key=1),
        parse_mix(shape.lifetimes, "--lifetimes", minimum_key=1),
        parse_mix(shape.levels, "--levels", minimum_key=1.0),
    )


def _draw(rng: np.random.Generator, mix: Mix, n: int) -> np.ndarray:
    keys = np.array(list(mix), dtype=np.float64)
    weights = np.array(list(mix.values()), dtype=np.float64)
    return keys[rng.choice(len(keys), size=n, p=weights / weights.sum())]
