"""What the host and its VMs use, sampled every period.

- per-CPU use from the kernel's CPU times (psutil), as busy / elapsed between
  two samples; a vNode's use is the sum over its CPUs, in cores, as SlackVM;
- memory available (not "free": the kernel's MemAvailable);
- per-VM CPU (cores, from the driver's cumulative CPU time) and memory;
- GPUs through NVML, falling back to `nvidia-smi`; "no GPU" is a state of its
  own, never reported as 0% busy.

The sampling thread outlives a failed sample (libvirtd restarting makes the
driver's stats raise): it logs the error, keeps the last good sample and tries
again next period; `health()` tells readers how old that sample is and why.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from pinfold.placement import level_key

__all__ = ["GPU", "GpuProbe", "GpuReport", "HostSample", "Monitor", "busy_fractions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    utilization_pct: float
    memory_used_mib: float
    memory_total_mib: float


@dataclass(frozen=True)
class GpuReport:
    """`source` is "nvml", "nvidia-smi" or "none"; with "none", `reason` says why."""

    source: str
    gpus: tuple[GPU, ...] = ()
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.source != "none"


class GpuProbe:
    """NVML first (nvidia-ml-py), then the `nvidia-smi` binary at a path."""

    QUERY = "--query-gpu=index,name,utilization.gpu,memory.used,memory.total"

    def __init__(self, nvidia_smi: str = "nvidia-smi", timeout_s: float = 10.0) -> None:
        self.nvidia_smi = nvidia_smi
        self.timeout_s = timeout_s

    def read(self) -> GpuReport:
        import pynvml

        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            return self._from_nvidia_smi(f"NVML: {error}")
        try:
            gpus = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(GPU(index, name.decode() if isinstance(name, bytes) else str(name),
                                float(rates.gpu), memory.used / 2**20, memory.total / 2**20))  # fmt: skip
            return GpuReport("nvml", tuple(gpus)) if gpus else GpuReport("none", reason="NVML sees no GPU")
        except pynvml.NVMLError as error:
            return self._from_nvidia_smi(f"NVML: {error}")
        finally:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    def _from_nvidia_smi(self, why_not_nvml: str) -> GpuReport:
        command = [self.nvidia_smi, self.QUERY, "--format=csv,noheader,nounits"]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return GpuReport("none", reason=f"{why_not_nvml}; nvidia-smi: {exc}")
        if result.returncode != 0:
            return GpuReport("none", reason=f"{why_not_nvml}; nvidia-smi: {result.stdout.strip()}")
        gpus = []
        for line in result.stdout.splitlines():
            fields = [part.strip() for part in line.split(",")]
            if len(fields) != 5:
                continue
            try:
                gpus.append(
                    GPU(int(fields[0]), fields[1], float(fields[2]), float(fields[3]), float(fields[4]))
                )
            except ValueError:
                continue
        if not gpus:
            return GpuReport("none", reason=f"{why_not_nvml}; nvidia-smi lists no GPU")
        return GpuReport("nvidia-smi", tuple(gpus))


def busy_fractions(before: Sequence[Any], after: Sequence[Any]) -> list[float]:
    """Per CPU, the busy share of the time between two psutil.cpu_times
    samples (idle and iowait count as not busy); 0.0 when no time passed."""
    shares = []
    for old, new in zip(before, after, strict=True):
        total = sum(new) - sum(old)
        idle = (new.idle + getattr(new, "iowait", 0.0)) - (old.idle + getattr(old, "iowait", 0.0))
        shares.append(min(1.0, max(0.0, (total - idle) / total)) if total > 0 else 0.0)
    return shares


@dataclass(frozen=True)
class HostSample:
    time: float
    cpu: dict[int, float]
    host_cpu: float
    memory_total_mib: float
    memory_available_mib: float
    vms: dict[str, dict[str, float]]
    vnodes: dict[str, dict[str, float]]
    gpus: GpuReport = field(default_factory=lambda: GpuReport("none", reason="not sampled"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu": {str(cpu): round(share, 4) for cpu, share in self.cpu.items()},
            "host_cpu": round(self.host_cpu, 4),
            "memory_mib": {
                "total": round(self.memory_total_mib),
                "available": round(self.memory_available_mib),
            },
            "vms": self.vms,
            "vnodes": self.vnodes,
            "gpus": {
                "available": self.gpus.available,
                "source": self.gpus.source,
                "reason": self.gpus.reason,
                "devices": [g.__dict__ for g in self.gpus.gpus],
            },
        }


class Monitor:
    """Samples on demand (`sample`) or every `period_s` in a thread (`start`).
    `vnodes()` and `vm_stats()` are read from the agent under its lock."""

    def __init__(
        self,
        cpu_ids: Sequence[int],
        vnodes: Callable[[], dict[float, list[int]]],
        vm_stats: Callable[[], dict[str, tuple[int, float]]],
        gpu: GpuProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        simulated_memory: Callable[[], tuple[float, float]] | None = None,
    ) -> None:
        """`simulated_memory` (total, available MiB) stands in for the machine's
        memory, and makes every CPU idle, for an agent whose host is simulated
        (the `sim` driver): it reports its model, not the machine it runs on."""
        self.cpu_ids = list(cpu_ids)
        self.vnodes = vnodes
        self.vm_stats = vm_stats
        self.gpu = gpu
        self.clock = clock
        self.simulated_memory = simulated_memory
        self.latest: HostSample | None = None
        #: why the last attempt failed (None once a sample succeeds again), and when
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.period_s: float | None = None
        self._times = psutil.cpu_times(percpu=True)
        self._vm_times: dict[str, int] = {}
        self._at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> HostSample:
        now = self.clock()
        times = psutil.cpu_times(percpu=True)
        shares = (
            busy_fractions(self._times, times) if self.simulated_memory is None else [0.0] * len(self.cpu_ids)
        )
        per_cpu = dict(zip(self.cpu_ids, shares, strict=False))
        elapsed_ns = max(1.0, (now - self._at) * 1e9)
        vms: dict[str, dict[str, float]] = {}
        current = self.vm_stats()
        for name, (cpu_time_ns, memory_mib) in current.items():
            previous = self._vm_times.get(name)
            cores = (cpu_time_ns - previous) / elapsed_ns if previous is not None else 0.0
            vms[name] = {"cpu_cores": round(max(0.0, cores), 4), "memory_mib": round(memory_mib, 1)}
        vnodes = {
            level_key(ratio): {
                "cpus": len(cpus),
                "used_cores": round(sum(per_cpu.get(c, 0.0) for c in cpus), 4),
            }
            for ratio, cpus in self.vnodes().items()
        }
        if self.simulated_memory is None:
            memory = psutil.virtual_memory()
            total, available = memory.total / 2**20, memory.available / 2**20
        else:
            total, available = self.simulated_memory()
        sample = HostSample(
            time=now,
            cpu=per_cpu,
            host_cpu=sum(shares) / len(shares) if shares else 0.0,
            memory_total_mib=total,
            memory_available_mib=available,
            vms=vms,
            vnodes=vnodes,
            gpus=self.gpu.read()
            if self.gpu is not None
            else GpuReport("none", reason="GPU probing disabled"),
        )
        self._times, self._at = times, now
        self._vm_times = {name: stats[0] for name, stats in current.items()}
        self.latest = sample
        return sample

    def sample_safely(self) -> HostSample | None:
        """`sample()`, its failure logged and kept in `last_error` instead of
        raised: the thread must outlive a hypervisor that restarts."""
        try:
            sample = self.sample()
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            if message != self.last_error:  # once per new error, not once per period
                log.warning("monitor: sampling failed, keeping the last sample: %s", message, exc_info=True)
            self.last_error, self.last_error_at = message, self.clock()
            return None
        if self.last_error is not None:
            log.info("monitor: sampling works again")
        self.last_error = self.last_error_at = None
        return sample

    def health(self) -> dict[str, Any]:
        """How fresh `latest` is: its age, and `stale` when there is none, the
        last attempt failed, or it is older than two periods."""
        now = self.clock()
        age = now - self.latest.time if self.latest is not None else None
        too_old = age is not None and self.period_s is not None and age > 2 * self.period_s
        return {
            "period_s": self.period_s,
            "sample_age_s": round(age, 3) if age is not None else None,
            "stale": age is None or self.last_error is not None or too_old,
            "last_error": self.last_error,
            "last_error_age_s": round(now - self.last_error_at, 3)
            if self.last_error_at is not None
            else None,
        }

    def start(self, period_s: float) -> None:
        self.period_s = period_s

        def loop() -> None:
            while not self._stop.wait(period_s):
                self.sample_safely()

        self._thread = threading.Thread(target=loop, name="pinfold-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
