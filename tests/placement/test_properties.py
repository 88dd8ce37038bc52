"""Property tests: random deploy/remove sequences on the EPYC topologies keep
every invariant of DESIGN.md and return to empty."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfold.placement import HostAllocator, PlacementError, VMSpec
from pinfold.topology import Topology
from tests.conftest import EPYC, EPYC_EXP

TOPOLOGIES = {"epyc": Topology.load(EPYC), "epyc-exp": Topology.load(EPYC_EXP, exclude=[12, 13, 140])}
EXCLUDED = {name: set(range(t.host_count)) - set(t.usable_cpus) for name, t in TOPOLOGIES.items()}

requests = st.builds(
    VMSpec,
    name=st.just(""),
    vcpus=st.sampled_from([1, 1, 2, 2, 4, 8, 16, 32, 64]),
    memory_mib=st.sampled_from([512, 2048, 8192, 65536, 262144]),
    ratio=st.sampled_from([1.0, 1.0, 1.5, 2.0, 3.0, 4.0]),
)
operations = st.lists(
    st.one_of(st.tuples(st.just("deploy"), requests), st.tuples(st.just("remove"), st.integers(0, 10**6))),
    max_size=120,
)


def check_host(host: HostAllocator, excluded: set[int]) -> None:
    host.check_invariants()
    for level in host.levels:
        assert not set(host.vnode(level)) & excluded
    for ratio in host.levels:
        cpus, allocated = host.level_usage(ratio)
        largest = max(s.vcpus for s in host.vms.values() if float(s.ratio) == ratio)
        assert cpus * ratio >= allocated - 1e-9
        assert cpus >= largest
    assert host.memory_allocated_mib <= host.memory_usable_mib
    # expected pins worked out from the vNodes alone (DESIGN.md), not from the pin cache
    usable = set(host.topology.usable_cpus)
    sharing = host.critical_size > 0 and any(
        sum(1 for s in host.vms.values() if float(s.ratio) == r) < host.critical_size
        for r in host.levels
        if r > 1
    )
    assert host.sharing() == sharing
    for name, spec in host.vms.items():
        own = set(host.vnode(spec.ratio))
        expected = own if spec.ratio == 1.0 or not sharing else usable - set(host.vnode(1.0))
        assert host.pinning(name) == expected
        assert not expected & excluded


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topology=st.sampled_from(sorted(TOPOLOGIES)), ops=operations, critical=st.sampled_from([0, 3, 6]))
def test_random_sequences_keep_invariants_and_return_to_empty(topology, ops, critical):
    host = HostAllocator(TOPOLOGIES[topology], critical_size=critical, reserved_memory_mib=1024)
    excluded = EXCLUDED[topology]
    pins: dict[str, frozenset[int]] = {}
    for step, (kind, arg) in enumerate(ops):
        if kind == "deploy":
            spec = VMSpec(f"vm{step}", arg.vcpus, arg.memory_mib, arg.ratio)
            before = host.status()
            try:
                change = host.deploy(spec)
            except PlacementError as error:
                assert host.status() == before
                assert str(error) in ("not enough cpu", "not enough memory")  # noqa: PT017
                continue
            assert change.pinning is not None
            pins[spec.name] = change.pinning
        elif host.vms:
            names = sorted(host.vms)
            name = names[arg % len(names)]
            change = host.remove(name)
            del pins[name]
        else:
            continue
        pins.update(change.repinned)
        # the reported pins are exactly the current pins: nothing stale, nothing missed
        assert pins == {name: host.pinning(name) for name in host.vms}
        check_host(host, excluded)
    for name in sorted(host.vms):
        host.remove(name)
    assert host.levels == ()
    assert host.free_cpu_count == len(TOPOLOGIES[topology].usable_cpus)
    assert host.memory_allocated_mib == 0
    check_host(host, excluded)
