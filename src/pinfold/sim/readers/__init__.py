"""Trace readers. Each returns a `Trace` and raises `TraceError` naming the
file, the line and the problem. `tests/sim/test_readers.py` runs the same
conformance checks on the row-per-VM readers (neutral, Azure); the SlackVM
monitoring reader, whose VMs span many rows, has its own in
`tests/sim/test_slackvm.py`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pinfold.sim.readers._common import open_text
from pinfold.sim.readers.azure import read_azure
from pinfold.sim.readers.neutral import read_neutral
from pinfold.sim.readers.slackvm import read_slackvm
from pinfold.sim.trace import Trace, TraceError

__all__ = ["FORMATS", "detect_format", "read_trace"]

FORMATS: dict[str, Callable[[str | Path], Trace]] = {
    "neutral": read_neutral,
    "azure": read_azure,
    "slackvm": read_slackvm,
}


def detect_format(path: str | Path) -> str:
    """ "neutral" when the first line is the neutral header, "slackvm" for a
    tab-separated SlackVM monitoring header, else "azure" (no header)."""
    with open_text(path) as handle:
        first = handle.readline()
    if first.startswith("vm_id,"):
        return "neutral"
    if first.startswith("tmp\t"):
        return "slackvm"
    return "azure"


def read_trace(path: str | Path, trace_format: str = "auto") -> Trace:
    if trace_format == "auto":
        trace_format = detect_format(path)
    reader = FORMATS.get(trace_format)
    if reader is None:
        raise TraceError(
            path, None, f"unknown trace format {trace_format!r}; valid: auto, {', '.join(FORMATS)}"
        )
    return reader(path)
