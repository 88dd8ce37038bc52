"""A server's CPU % from two readings of its diagnostics, as Ceilometer's
cpu_util: the CPU time used between them over the wall time, per vCPU; with
nothing to compare to, the driver's utilisation if it reports one, else none."""

from __future__ import annotations

import pytest

from pinfold.openstack.records import Diagnostics
from pinfold.openstack.usage import cpu_percent


def reading(
    at_s: float, cpu_ns: int | None, *, vcpus: int = 2, utilisation: float | None = None, server: str = "s1"
) -> Diagnostics:
    return Diagnostics(server, at_s, cpu_ns, utilisation, vcpus, 100.0, 512.0)


def test_the_rate_between_two_readings_per_vcpu() -> None:
    # 2 vCPUs over 10 s: 5 s of CPU time is a quarter of what they could use
    assert cpu_percent(reading(100.0, 1_000_000_000), reading(110.0, 6_000_000_000)) == pytest.approx(25.0)
    # the driver's utilisation does not override a rate
    assert cpu_percent(reading(0.0, 0), reading(4.0, 2 * 10**9, utilisation=90.0)) == pytest.approx(25.0)


def test_an_idle_server_is_zero_and_an_overshoot_is_one_hundred() -> None:
    assert cpu_percent(reading(0.0, 5), reading(3.0, 5)) == 0.0
    assert cpu_percent(reading(0.0, 0, vcpus=1), reading(1.0, 1_200_000_000, vcpus=1)) == 100.0


def test_the_first_reading_gives_the_drivers_utilisation_or_nothing() -> None:
    assert cpu_percent(None, reading(1.0, 10**9, utilisation=15.0)) == 15.0
    assert cpu_percent(None, reading(1.0, 10**9)) is None


@pytest.mark.parametrize(
    "before",
    [
        reading(0.0, 9 * 10**9),  # the counter went down: the server rebooted or was resized
        reading(0.0, 10**9, vcpus=4),  # a resize changed the vCPUs
        reading(0.0, 10**9, server="s0"),  # another server under the same name
        reading(1.0, 10**9),  # no time between the readings
        reading(0.0, None),  # the driver gave no CPU time
    ],
)
def test_nothing_to_compare_to_falls_back_to_the_drivers_utilisation(before: Diagnostics) -> None:
    assert cpu_percent(before, reading(1.0, 2 * 10**9, utilisation=40.0)) == 40.0
    assert cpu_percent(before, reading(1.0, 2 * 10**9)) is None
