"""The Linux kernel's CPU list syntax ("0-3,8,10-11"), used all over sysfs.

Kept separate so that the sysfs reader, the CLI and the agent's configuration
(excluded CPUs) all parse lists the same way and reject the same mistakes.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["format_cpulist", "parse_cpulist"]


def parse_cpulist(text: str) -> list[int]:
    """Parse a kernel CPU list into sorted, unique CPU ids.

    An empty string (a memoryless or CPU-less NUMA node) is an empty list.
    Raises ValueError on anything the kernel would not print, so that a typo
    in an exclusion list is an error rather than a silently ignored CPU.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise ValueError(f"bad CPU list element {part!r} in {text!r}") from None
        if low < 0 or high < low:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """The inverse of parse_cpulist: compact ranges, ascending."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    start = previous = None
    for cpu in ordered:
        if previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            parts.append(_range_text(start, previous))
        start = previous = cpu
    if start is not None:
        parts.append(_range_text(start, previous))
    return ",".join(parts)


def _range_text(start: int, end: int | None) -> str:
    return str(start) if end == start else f"{start}-{end}"
