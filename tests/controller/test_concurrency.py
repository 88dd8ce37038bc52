"""Two controllers on one database must not over-allocate a host.

Two ControllerStores on two engines (as two controller replicas would have),
eight threads each, all reserving 1-vCPU VMs on one small host at once. The
host must end up holding exactly what fits when the same VMs are placed one
by one: no more (two reservations both taking the last room), no fewer (a
reservation refused, or failed on a lock, while there was room).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pinfold.controller.database import connect
from pinfold.controller.feasibility import fits
from pinfold.controller.store import ControllerStore, Holding, HostRecord, RefusedError
from pinfold.model.vm import VMRequest
from pinfold.placement import HostAllocator, PlacementError, VMSpec
from pinfold.topology import slackvm_json

STORES = 2
THREADS_PER_STORE = 8
ATTEMPTS_PER_THREAD = 4
RATIO = 2.0
MEMORY_MIB = 256


def capacity(topology: dict[str, Any]) -> int:
    """How many of the test's VMs fit on the host, placed one by one."""
    allocator = HostAllocator(slackvm_json.from_dict(topology), report_pins=False)
    count = 0
    while allocator.fits(VMSpec(f"vm-{count}", 1, MEMORY_MIB, RATIO)):
        allocator.deploy(VMSpec(f"vm-{count}", 1, MEMORY_MIB, RATIO))
        count += 1
    return count


def test_two_controllers_do_not_over_allocate_a_host(database_url: str, i7_topology: dict[str, Any]) -> None:
    expected = capacity(i7_topology)
    assert expected < STORES * THREADS_PER_STORE * ATTEMPTS_PER_THREAD  # the threads must run out of room
    engines = [connect(database_url) for _ in range(STORES)]
    stores = [ControllerStore(engine) for engine in engines]
    stores[0].register_host("h1", "http://h1:8000", i7_topology, 6, 0, now=1.0)
    seen: list[tuple[int, bool]] = []  # (VMs on the host as fits saw them, admitted)
    seen_lock = threading.Lock()

    def recording(host: HostRecord, existing: Sequence[Holding], new: VMRequest) -> str | None:
        reason = fits(host, existing, new)
        with seen_lock:
            seen.append((len(existing), reason is None))
        return reason

    start = threading.Barrier(STORES * THREADS_PER_STORE)

    def hammer(store: ControllerStore, thread: str) -> tuple[int, int]:
        start.wait()
        reserved = refused = 0
        for attempt in range(ATTEMPTS_PER_THREAD):
            try:
                store.reserve(
                    VMRequest(f"{thread}-{attempt}", 1, MEMORY_MIB, RATIO), "h1", recording, now=2.0
                )
                reserved += 1
            except RefusedError:
                refused += 1
        return reserved, refused

    try:
        with ThreadPoolExecutor(max_workers=STORES * THREADS_PER_STORE) as pool:
            futures = [
                pool.submit(hammer, store, f"c{s}-t{t}")
                for s, store in enumerate(stores)
                for t in range(THREADS_PER_STORE)
            ]
            results = [future.result() for future in futures]  # re-raises any other error
        stored = stores[1].vms("h1")
    finally:
        for engine in engines:
            engine.dispose()

    assert sum(reserved for reserved, _ in results) == len(stored) == expected
    assert (
        sum(refused for _, refused in results) == STORES * THREADS_PER_STORE * ATTEMPTS_PER_THREAD - expected
    )
    # Each admission saw the one before it committed: counts 0, 1, ... once each;
    # each refusal saw a full host.
    assert sorted(count for count, admitted in seen if admitted) == list(range(expected))
    assert {count for count, admitted in seen if not admitted} == {expected}
    # What is stored replays through the allocator, in seq order, and leaves no room.
    allocator = HostAllocator(slackvm_json.from_dict(i7_topology), report_pins=False)
    for vm in stored:
        allocator.deploy(vm.spec)
    with pytest.raises(PlacementError):
        allocator.deploy(VMSpec("one-more", 1, MEMORY_MIB, RATIO))
