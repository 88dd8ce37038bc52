"""Warm pools (RAPID's helper VMs, generalised): VMs of a given size and image
created and suspended ahead of time, so that a matching create only resumes one.

A member is an ordinary stored VM with its `pool` set: it holds its place in
the allocator like any other VM, so the pool can never take room the host
does not have. It boots ("warming"), is suspended after `warmup_s` ("pooled"),
and is handed out by renaming it in the store and the allocator (its domain
keeps its name) and resuming it. `PoolKeeper` refills the pools in the
background, one member at a time so that requests are never kept waiting long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PoolKeeper", "PoolSpec"]

log = logging.getLogger(__name__)


class PoolSpec(BaseModel):
    """One pool, as written in the agent's TOML file under `[[pools]]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    size: int = Field(ge=0, le=1000)
    vcpus: int = Field(ge=1, le=1024)
    memory_mib: int = Field(ge=1, le=16 * 1024 * 1024)
    ratio: float = Field(default=1.0, ge=1.0, le=64.0)
    image: str = ""
    #: how long a new member runs (boots) before it is suspended and can be handed out
    warmup_s: float = Field(default=30.0, ge=0)

    def member_name(self, index: int) -> str:
        return f"pool-{self.name}-{index}"


class PoolKeeper:
    """Calls `tend(now)` until it reports nothing left to do, then every
    `period_s`, or at once when `wake()` is called (after a hand-out). A
    failure is logged (once while it stays the same), kept in `last_error`,
    and tried again next period; the agent shows it per pool."""

    def __init__(self, tend: Callable[[float], bool], period_s: float = 1.0) -> None:
        self._tend = tend
        self._period_s = period_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pinfold-pools", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self._tend(time.monotonic())
            except Exception as error:  # keep tending: the next round may succeed
                message = str(error) or type(error).__name__
                if message != self.last_error:
                    log.warning("warm pools: %s (trying again every %g s)", message, self._period_s)
                self.last_error, busy = message, False
            else:
                if self.last_error is not None:
                    log.info("warm pools: tending works again")
                self.last_error = None
            if not busy:
                self._wake.wait(self._period_s)
                self._wake.clear()
