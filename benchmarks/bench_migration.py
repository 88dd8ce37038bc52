"""Live migration of a TCG guest between two agents (issue 15): the send's time,
libvirt's job time and downtime, and the guest's own counter gap.

    python -m benchmarks.bench_migration [--rounds 6] [--storage copy shared-local]   # as root

Everything runs in the migration lab (tests/migrationlab.py, imported from the
tests as bench_network imports the network lab): two private libvirt daemons,
each in its own mount namespace, both in one network namespace, so that QEMU's
migration stream goes over that namespace's loopback. Two real agents (their
HTTP APIs served on loopback, as tests/agent/test_migration_lab.py builds
them) stand in for two hosts. One guest, the tests' counting guest (TCG,
1 vCPU, 128 MiB, Debian's cloud kernel, the busybox initramfs with `tick`: it
prints "pinfold-guest-tick N" every 20 ms), boots on host a and is moved a->b,
b->a, ... `--rounds` times through the agents' routes as the controller calls
them: prepare on the target, send on the source, commit on the target.

- storage `copy`: each host has its own disk (a qcow2 overlay on a 64 MiB base
  both hosts have), which libvirt copies over NBD; `shared-local`: one disk in
  a directory both daemons see (`VIR_MIGRATE_UNSAFE`, nothing copied). Each
  storage mode gets its own lab.
- per migration: `send_wall_s`, the wall time of the send's HTTP call;
  `job_s` and `downtime_ms`, libvirt's job time and downtime (the send's
  answer); `routes_wall_s`, prepare + send + commit; `gap_s`, the guest's
  counter gap: the largest interval between successive counts around the
  migration, from host timestamps taken as each console line arrives (both
  hosts' console logs are read every POLL_S). Not the guest's clock: the
  counter does not print it, and under TCG the guest's clock stands still
  while QEMU is paused, so it would hide exactly the downtime we look for.
  `tick_s` is the median interval between counts in the 2 s before the send
  (the guest's period under the machine's load), a floor on any gap's
  resolution; `continuous` says the counts went on n, n+1, ... (no restart).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.agent.guest import TICK
from tests.agent.test_migration_lab import AUTH, LabAgent, lab_agents
from tests.migrationlab import MigrationLab

from benchmarks.common import poll
from pinfold.agent.core import MigrationStorage

ROOT = Path(__file__).resolve().parents[1]
NAME = "mover"
POLL_S = 0.005  # the console logs' read period: the gaps' resolution on our side
SETTLE_COUNTS = 25  # counts the guest prints on the target before a migration is measured
BEFORE_S = 2.0  # the window before the send whose ticks give the guest's normal period
TIMEOUT_S = 180.0
COUNT = re.compile(rf"^{re.escape(TICK)} (\d+)\r?$".encode())


@dataclass(frozen=True)
class Arrival:
    count: int
    at: float  # time.monotonic() when the line was read
    host: str


class CounterWatch:
    """Reads the guest's console log on every host every POLL_S and stamps
    each complete count line with the host's clock as it arrives."""

    def __init__(self, logs: dict[str, Path]) -> None:
        self._logs = logs
        self._offsets = dict.fromkeys(logs, 0)
        self._partial = dict.fromkeys(logs, b"")
        self._inodes: dict[str, int] = {}
        self._arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counter-watch", daemon=True)

    def __enter__(self) -> CounterWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def last(self) -> Arrival | None:
        with self._lock:
            return self._arrivals[-1] if self._arrivals else None

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            for host, log in self._logs.items():
                self._read(host, log)

    def _read(self, host: str, log: Path) -> None:
        try:
            with log.open("rb") as file:
                stat = os.fstat(file.fileno())
                inode = stat.st_ino
                # the source removes the log of a VM that left; the file made when it
                # comes back may even reuse the inode, but starts shorter
                if inode != self._inodes.get(host) or stat.st_size < self._offsets[host]:
                    self._inodes[host], self._offsets[host], self._partial[host] = inode, 0, b""
                file.seek(self._offsets[host])
                data = file.read()
        except FileNotFoundError:
            return
        now = time.monotonic()
        self._offsets[host] += len(data)
        *lines, self._partial[host] = (self._partial[host] + data).split(b"\n")
        found = [Arrival(int(m.group(1)), now, host) for line in lines if (m := COUNT.match(line))]
        if found:
            with self._lock:
                self._arrivals.extend(found)


def counted_past(watch: CounterWatch, host: str, past: int) -> Arrival:
    """Wait until the guest, on `host`, has printed a count above `past`."""

    def found() -> Arrival | None:
        last = watch.last()
        return last if last is not None and last.host == host and last.count > past else None

    return poll(found, f"a count past {past} on host {host}", TIMEOUT_S)


def post(agent: LabAgent, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = agent.http.post(path, json=body, headers=AUTH, timeout=TIMEOUT_S)
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"POST {path} on host {agent.host.name}: {answer.status_code} {answer.text}")
    return dict(answer.json())


def gaps(arrivals: list[Arrival], since: float, until: float) -> tuple[float, float, list[int]]:
    """The largest interval between successive counts whose later one arrived
    in [since, until], the median one in the BEFORE_S before `since`, and
    the steps between successive counts in that span (all 1: no repeat, no hole)."""
    window = sorted((a for a in arrivals if since - BEFORE_S <= a.at <= until), key=lambda a: a.count)
    pairs = list(itertools.pairwise(window))
    during = [b.at - a.at for a, b in pairs if b.at >= since]
    before = [b.at - a.at for a, b in pairs if b.at < since]
    steps = [b.count - a.count for a, b in pairs]
    return max(during), statistics.median(before) if before else float("nan"), steps


def migrate_once(source: LabAgent, target: LabAgent, watch: CounterWatch) -> dict[str, Any]:
    """Prepare, send, commit (the controller's steps 1-3), then wait until the
    guest has counted SETTLE_COUNTS on the target; the migration's figures."""
    started = time.monotonic()
    vm = source.http.get(f"/api/v1/vms/{NAME}").json()
    prepared = post(target, "/api/v1/migrations", {"vm": vm, "source": source.host.name})
    body = {"target": target.host.name, **{k: prepared[k] for k in ("cpus", "libvirt_uri", "migrate_uri")}}
    before = watch.last()
    sending = time.monotonic()
    sent = post(source, f"/api/v1/vms/{NAME}/migrate", body)
    sent_at = time.monotonic()
    post(target, f"/api/v1/migrations/{NAME}/commit")
    committed = time.monotonic()
    settled = counted_past(watch, target.host.name, (before.count if before else 0) + SETTLE_COUNTS)
    gap, tick, steps = gaps(watch.arrivals(), sending, settled.at)
    return {
        "direction": f"{source.host.name}->{target.host.name}",
        "send_wall_s": round(sent_at - sending, 3),
        "job_s": round(float(sent["seconds"]), 3),
        "downtime_ms": sent["downtime_ms"],
        "routes_wall_s": round(committed - started, 3),
        "gap_s": round(gap, 3),
        "tick_s": round(tick, 3),
        "continuous": set(steps) == {1},
        "repeated": steps.count(0),
        "missing": sum(step - 1 for step in steps if step > 1),
    }


def back_and_forth(
    lab: MigrationLab, kernel: Path, initrd: Path, storage: MigrationStorage, rounds: int
) -> list[dict[str, Any]]:
    """The guest boots on host a and moves `rounds` times between the hosts."""
    base = lab.images / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    with lab_agents(lab, kernel, initrd, storage) as (a, b):
        a.create(NAME, 1.0, image=str(base))
        with CounterWatch({"a": a.log(NAME), "b": b.log(NAME)}) as watch:
            counted_past(watch, "a", SETTLE_COUNTS)
            results = []
            for round_ in range(rounds):
                source, target = (a, b) if round_ % 2 == 0 else (b, a)
                results.append(migrate_once(source, target, watch))
        deleted = (a if rounds % 2 == 0 else b).http.delete(f"/api/v1/vms/{NAME}", headers=AUTH)
        if deleted.status_code != 204:
            raise RuntimeError(f"the guest was not deleted: {deleted.status_code} {deleted.text}")
        return results


def summary(migrations: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max of each timing."""
    found: dict[str, Any] = {"continuous": all(m["continuous"] for m in migrations)}
    for key in ("send_wall_s", "job_s", "downtime_ms", "gap_s", "tick_s", "routes_wall_s"):
        values = [m[key] for m in migrations if m[key] is not None]
        if values:
            found[key] = {"median": round(statistics.median(values), 3), "max": max(values)}
    return found


def guest_files(tmp: Path, cache: Path) -> tuple[Path, Path]:
    import shutil

    from tests.agent.guest import build_initramfs

    kernel = Path(subprocess.run([str(ROOT / "scripts" / "guest-kernel"), str(cache)], capture_output=True,
                                 text=True, check=True).stdout.split()[-1])  # fmt: skip
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("busybox is missing: run scripts/libvirt-up")
    modules = kernel.parent.parent / "lib" / "modules" / kernel.name.removeprefix("vmlinuz-")
    return kernel, build_initramfs(Path(busybox), tmp / "initramfs.cpio", modules)


def run(storage: MigrationStorage, rounds: int, kernel: Path, initrd: Path) -> dict[str, Any]:
    """One storage mode on a lab of its own, torn down whatever happens."""
    lab = MigrationLab.start()
    try:
        migrations = back_and_forth(lab, kernel, initrd, storage, rounds)
    finally:
        lab.close()
        left = lab.leftovers()
    if left:
        raise RuntimeError(f"the lab left {left}")
    return {"storage": storage, "migrations": migrations, **summary(migrations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--storage", nargs="+", choices=("copy", "shared-local"), default=["copy", "shared-local"]
    )
    parser.add_argument("--guest-cache", type=Path, default=ROOT / ".cache" / "guest")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "migration.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        kernel, initrd = guest_files(Path(name), args.guest_cache)
        result: dict[str, Any] = {"rounds": args.rounds, "load_average_before": os.getloadavg()}
        result["modes"] = [run(storage, args.rounds, kernel, initrd) for storage in args.storage]
        result["load_average_after"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
