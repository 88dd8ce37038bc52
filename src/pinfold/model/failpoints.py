"""Crash points, for the tests that kill the agent between two steps.

Off unless PINFOLD_AGENT_CRASH_AT names a point: then the agent sends itself
SIGKILL there, exactly as `kill -9` would, with nothing flushed or cleaned.
Here, below every shell, so that the agent's steps and those of the cloud
RAPID's VMM runs on inside the agent's process (`pinfold.openstack`, which
imports only the model) can both have one.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "crash_point"]

ENV = "PINFOLD_AGENT_CRASH_AT"
POINTS = (
    "create:seeded", "create:stored", "create:defined", "create:made", "delete:marked", "delete:unmade",
    "take:stored",
    # a batch of creates (`Agent.create_many`): all stored pending; the first of them made
    "batch:stored", "batch:made",
    # a batch of deletes (`Agent.delete_many`): all marked; the first of their domains removed
    "deletions:marked", "deletions:unmade",
    # live migration: the target wrote the guest's seed, stored its reservation; the source
    # marked, or sent, the guest; the target found it arrived
    "incoming:seeded", "incoming:stored", "migrate:marked", "migrate:sent", "incoming:arrived",
    "cloud:accepted",  # pinfold.openstack: Nova took the server (202); not ACTIVE, nor recorded by RAPID
    "rapid:created",  # pinfold.rapid: the back-end made the VM, RAPID has not recorded it
)  # fmt: skip


def crash_point(name: str) -> None:
    """SIGKILL to this process if PINFOLD_AGENT_CRASH_AT names `name` (one of POINTS)."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
