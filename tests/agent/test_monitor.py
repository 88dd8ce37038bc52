"""The monitor: CPU shares, vNode usage, and GPUs through NVML (patched to
raise the real pynvml exceptions) or a fake nvidia-smi printing the real
tool's CSV."""

from __future__ import annotations

import logging
import stat
import threading
import time
from pathlib import Path

import psutil
import pynvml
import pytest

from pinfold.agent.drivers import DriverError
from pinfold.agent.monitor import GpuProbe, Monitor, busy_fractions


def times(**values: float):
    base = psutil.cpu_times(percpu=True)[0]
    return base._replace(**dict.fromkeys(base._fields, 0.0))._replace(**values)


def test_busy_share_is_non_idle_time_over_elapsed_time():
    before = [times(user=10, idle=10), times(user=5, idle=5)]
    after = [times(user=13, idle=11), times(user=5, idle=9)]
    assert busy_fractions(before, after) == [0.75, 0.0]
    assert busy_fractions(before, before) == [0.0, 0.0]


def test_vnode_usage_is_the_sum_of_its_cpus():
    monitor = Monitor([0, 1], lambda: {2.0: [0, 1], 1.0: []}, lambda: {"vm": (10**9, 128.0)})
    first = monitor.sample()
    assert set(first.cpu) == {0, 1}
    assert all(0.0 <= share <= 1.0 for share in first.cpu.values())
    assert first.vnodes["2.0"]["used_cores"] == pytest.approx(sum(first.cpu.values()), abs=1e-3)
    assert first.vms["vm"] == {"cpu_cores": 0.0, "memory_mib": 128.0}  # no earlier sample yet
    assert 0 < first.memory_available_mib <= first.memory_total_mib
    assert not first.gpus.available


def fake_nvidia_smi(tmp_path: Path, output: str, code: int = 0) -> str:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def no_nvml(monkeypatch: pytest.MonkeyPatch, code: int = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND) -> None:
    def init() -> None:
        raise pynvml.NVMLError(code)  # pynvml maps the code to its subclass, as the real library does

    monkeypatch.setattr(pynvml, "nvmlInit", init)


def test_this_host_has_no_gpu_and_says_so():
    report = GpuProbe("/nonexistent/nvidia-smi").read()
    assert report.source == "none"
    assert not report.available
    assert "NVML Shared Library Not Found" in report.reason


def test_nvidia_smi_is_the_fallback_when_nvml_is_missing(tmp_path, monkeypatch):
    no_nvml(monkeypatch)
    smi = fake_nvidia_smi(
        tmp_path, "0, NVIDIA A100-SXM4-40GB, 35, 1024, 40960\n1, NVIDIA A100-SXM4-40GB, 0, 3, 40960"
    )
    report = GpuProbe(smi).read()
    assert report.source == "nvidia-smi"
    seen = [(g.index, g.utilization_pct, g.memory_total_mib) for g in report.gpus]
    assert seen == [(0, 35.0, 40960.0), (1, 0.0, 40960.0)]


def test_a_failing_nvidia_smi_means_no_gpu_not_zero_percent(tmp_path, monkeypatch):
    no_nvml(monkeypatch, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    smi = fake_nvidia_smi(
        tmp_path,
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.",
        code=9,
    )
    report = GpuProbe(smi).read()
    assert report.source == "none"
    assert report.gpus == ()
    assert "Driver Not Loaded" in report.reason
    assert "couldn't communicate" in report.reason


def test_nvml_is_read_when_present(monkeypatch):
    utilization = pynvml.c_nvmlUtilization_t()
    utilization.gpu, utilization.memory = 42, 10
    memory = pynvml.c_nvmlMemory_t()
    memory.total, memory.used, memory.free = 16 * 2**30, 2**30, 15 * 2**30
    calls: list[str] = []
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: calls.append("init"))
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 1)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: object())
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda handle: "Tesla T4")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda handle: utilization)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lambda handle: memory)
    report = GpuProbe("/nonexistent").read()
    assert report.source == "nvml"
    assert report.gpus[0].name == "Tesla T4"
    assert report.gpus[0].utilization_pct == 42.0
    assert report.gpus[0].memory_total_mib == 16384.0
    assert calls == ["init", "shutdown"]


def test_a_simulated_host_reports_its_model_not_this_machine():
    monitor = Monitor(
        list(range(64)), lambda: {2.0: [0, 1]}, dict, simulated_memory=lambda: (262144.0, 200000.0)
    )
    sample = monitor.sample()
    assert (sample.memory_total_mib, sample.memory_available_mib) == (262144.0, 200000.0)
    assert set(sample.cpu) == set(range(64))
    assert set(sample.cpu.values()) == {0.0}
    assert sample.vnodes["2.0"] == {"cpus": 2, "used_cores": 0.0}


def wait_until(predicate, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_sampling_thread_outlives_a_failing_driver_and_says_so(caplog):
    """libvirtd restarting makes the driver's stats raise: the thread logs it,
    keeps sampling, and works again once the driver does."""
    failing = threading.Event()
    failing.set()
    calls = [0]

    def vm_stats() -> dict[str, tuple[int, float]]:
        calls[0] += 1
        if failing.is_set():
            raise DriverError("failed", "read domain stats: Cannot recv data: Connection reset by peer")
        return {}

    monitor = Monitor([0], dict, vm_stats)
    with caplog.at_level(logging.WARNING, logger="pinfold.agent.monitor"):
        monitor.start(0.05)
        try:
            wait_until(lambda: monitor.last_error is not None, "a failed sample")
            health = monitor.health()
            assert health["stale"] is True
            assert "Connection reset by peer" in health["last_error"]
            assert monitor.latest is None
            failed = calls[0]  # several more failing samples: logged once, not once per period
            wait_until(lambda: calls[0] >= failed + 3, "three more failed samples")
            assert len([r for r in caplog.records if "sampling failed" in r.getMessage()]) == 1
            failing.clear()
            wait_until(lambda: monitor.latest is not None, "a sample after the driver came back")
            wait_until(lambda: not monitor.health()["stale"], "a fresh sample")
        finally:
            monitor.stop()
    assert monitor.health()["last_error"] is None
    warnings = [r for r in caplog.records if "sampling failed" in r.getMessage()]
    assert len(warnings) == 1


def test_a_sample_older_than_two_periods_is_stale():
    now = [100.0]
    monitor = Monitor([0], dict, dict, clock=lambda: now[0])
    monitor.period_s = 10.0
    monitor.sample()
    assert monitor.health() == {
        "period_s": 10.0, "sample_age_s": 0.0, "stale": False, "last_error": None, "last_error_age_s": None,
    }  # fmt: skip
    now[0] += 25.0
    assert (monitor.health()["sample_age_s"], monitor.health()["stale"]) == (25.0, True)
