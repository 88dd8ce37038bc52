"""A server's CPU use in % of its vCPUs from two readings of its diagnostics, as
Ceilometer's `cpu_util` was (RAPID's SLAM_GET_VMCPU_VMM read that meter): the
CPU time the server's vCPUs used between the readings over the wall time between
them, times its vCPUs. Pure, so that the arithmetic is tested without a cloud.

A reading with nothing to compare to (the first of a server, a server replaced
under its name, a CPU time that went down: a reboot or a resize restarts the
counter, a change of vCPUs) gives the driver's own `utilisation` where every
vCPU reports one, else no figure: a rate needs two readings.
"""

from __future__ import annotations

from pinfold.openstack.records import Diagnostics

__all__ = ["cpu_percent"]


def cpu_percent(before: Diagnostics | None, now: Diagnostics) -> float | None:
    """% of the server's vCPUs used between `before` and `now` (see the module),
    kept within 0-100: the readings' times are when pinfold got Nova's answers,
    not when the hypervisor sampled, so a short interval can overshoot a little."""
    rate = _rate(before, now)
    if rate is None:
        return now.cpu_utilisation
    return min(100.0, max(0.0, rate))


def _rate(before: Diagnostics | None, now: Diagnostics) -> float | None:
    if before is None or before.server_id != now.server_id or before.vcpus != now.vcpus:
        return None
    if before.cpu_ns is None or now.cpu_ns is None or now.cpu_ns < before.cpu_ns or now.vcpus == 0:
        return None
    elapsed_ns = (now.at_s - before.at_s) * 1e9
    if elapsed_ns <= 0:
        return None
    return (now.cpu_ns - before.cpu_ns) / (elapsed_ns * now.vcpus) * 100
