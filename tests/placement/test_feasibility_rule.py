"""One feasibility rule (issue 12): the cluster's per-host refusals and the
allocator's own check are the same objects, host by host, and the element-wise
rule gives the same answers on scalars and on columns."""

from __future__ import annotations

import numpy as np
import pytest

from pinfold.placement import Cluster, HostAllocator
from pinfold.placement.arithmetic import admits, capacity_refusal
from tests.placement.helpers import vm


def test_cluster_refusals_equal_each_allocators_check(i7, epyc_exp):
    cluster = Cluster()
    for h in range(24):
        topology = epyc_exp if h % 6 == 0 else i7
        cluster.add_host(f"h{h:02d}", HostAllocator(topology, reserved_memory_mib=1024 * (h % 4)))
    rng = np.random.default_rng(12)
    compared = refused = 0
    for i in range(400):
        spec = vm(
            f"v{i}", int(rng.integers(1, 12)), float(rng.integers(1, 40)), float(rng.choice([1, 1.5, 2, 3]))
        )
        decision = cluster.choose(spec)
        for index, host in enumerate(cluster.hosts):
            expected = cluster.allocator(host).check(spec)
            got = decision.refusal(index)
            assert got == expected, (host, spec)
            assert (got is None) or got.describe() == expected.describe()  # type: ignore[union-attr]
            compared += 1
            refused += got is not None
        if decision.host is not None:
            cluster.deploy_on(decision.host, spec)
    assert refused > compared // 4  # full hosts were compared, not only empty ones


def test_admits_is_elementwise_and_matches_scalars():
    needed = np.array([0.0, 2.0, 3.0, 5.0])
    free = np.array([0.0, 2.0, 2.0, 8.0])
    mem_alloc = np.array([0.0, 1024.0, 3072.0, 4096.0])
    usable_mem = np.array([1.0, 2048.0, 4096.0, 4096.0])
    cpu_ok, mem_ok = admits(needed, free, mem_alloc, 1024, usable_mem)
    assert cpu_ok.tolist() == [True, True, False, True]
    assert mem_ok.tolist() == [False, True, True, False]
    for i in range(4):
        scalar = admits(int(needed[i]), int(free[i]), int(mem_alloc[i]), 1024, int(usable_mem[i]))
        assert scalar == (cpu_ok[i], mem_ok[i])


@pytest.mark.parametrize(
    ("cpu_ok", "mem_ok", "reason"),
    [
        (True, True, None),
        (False, True, "not enough cpu"),
        (False, False, "not enough cpu"),
        (True, False, "not enough memory"),
    ],
)
def test_capacity_refusal_checks_cpu_before_memory(cpu_ok, mem_ok, reason):
    refusal = capacity_refusal(
        cpu_ok, mem_ok, level=2.0, vcpus=4, needed=2, free_cpus=1, usable_cpus=3,
        memory_mib=2048, memory_free=1024, memory_usable=1536,
    )  # fmt: skip
    assert (None if refusal is None else refusal.reason) == reason
    if refusal is not None:
        assert not refusal.fits_empty  # 4 vCPUs > 3 CPUs; 2048 MiB > 1536 MiB
