"""Crash points, for the tests that kill the agent between two steps.

Off unless PINFOLD_AGENT_CRASH_AT names a point: then the agent sends itself
SIGKILL there, exactly as `kill -9` would, with nothing flushed or cleaned.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "crash_point"]

ENV = "PINFOLD_AGENT_CRASH_AT"
POINTS = ("create:seeded", "create:stored", "create:defined", "create:made", "delete:marked", "delete:unmade")


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
