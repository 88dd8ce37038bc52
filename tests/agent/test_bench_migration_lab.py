"""benchmarks/bench_migration.py: its console watch (no libvirt) and its core
at one migration on the migration lab, so that the benchmark keeps working.
No timing is asserted beyond what must hold whatever the load: benchmarks
are not timed tests."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.bench_migration import Arrival, CounterWatch, back_and_forth, gaps
from benchmarks.common import poll

from tests.agent.guest import TICK
from tests.migrationlab import MigrationLab, migration_lab  # noqa: F401  (fixture)


def ticks(first: int, last: int) -> bytes:
    return b"".join(f"{TICK} {n}\r\n".encode() for n in range(first, last + 1))


def seen(watch: CounterWatch, count: int) -> bool:
    return any(a.count == count for a in watch.arrivals())


def test_the_watch_follows_a_log_that_is_removed_and_made_again_shorter(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"boot noise\n" + ticks(1, 40) + f"{TICK} 4".encode())  # a line still being written
    with CounterWatch({"a": a, "b": b}) as watch:
        poll(lambda: seen(watch, 40), "count 40", timeout_s=10)
        with a.open("ab") as log:
            log.write(b"1\r\n")  # the end of "41"
        b.write_bytes(ticks(42, 50))  # the guest moved to b ...
        poll(lambda: seen(watch, 50), "count 50", timeout_s=10)
        a.unlink()  # ... and a's agent removed its log;
        a.write_bytes(ticks(51, 55))  # it comes back: a new, shorter log (maybe the same inode)
        poll(lambda: seen(watch, 55), "count 55", timeout_s=10)
        arrivals = watch.arrivals()
    assert [x.count for x in arrivals] == list(range(1, 56))
    assert {x.host for x in arrivals if 42 <= x.count <= 50} == {"b"}


def test_gaps_take_the_largest_interval_after_the_send_and_the_period_before() -> None:
    at = [0.0, 0.05, 0.1, 0.15, 0.2, 0.6, 0.65]  # paused between 0.2 and 0.6
    arrivals = [Arrival(n, t, "a" if t < 0.5 else "b") for n, t in enumerate(at, start=7)]
    gap, tick, steps = gaps(arrivals, since=0.18, until=1.0)
    assert round(gap, 3) == 0.4
    assert round(tick, 3) == 0.05
    assert steps == [1] * 6
    assert gaps([*arrivals, Arrival(9, 0.7, "b")], 0.18, 1.0)[2].count(0) == 1  # a count seen twice


def test_one_migration_of_the_benchmark(
    migration_lab: MigrationLab,  # noqa: F811
    guest_kernel: Path,
    guest_initramfs: Path,
) -> None:
    started = time.monotonic()
    (moved,) = back_and_forth(migration_lab, guest_kernel, guest_initramfs, "copy", 1)
    assert moved["direction"] == "a->b"
    # it went on counting, no restart: only the one line the serial port was writing as the
    # guest paused may show on both hosts' logs, or be split between them (CI saw this once)
    assert moved["repeated"] <= 1, f"{moved}"
    assert moved["missing"] <= 1, f"{moved}"
    assert isinstance(moved["downtime_ms"], int)
    assert moved["job_s"] > 0
    assert 0 < moved["gap_s"] < time.monotonic() - started
    assert migration_lab.hosts["a"].connection.listAllDomains() == []
    assert migration_lab.hosts["b"].connection.listAllDomains() == []  # deleted at the end
