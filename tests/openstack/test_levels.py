"""A cloud's capacity and use per level, grouped from Placement's providers:
a level trait names a provider's level, else its VCPU allocation ratio does;
PCPU inventory is level 1; reserved CPUs are not capacity."""

from __future__ import annotations

from pinfold.openstack.levels import Inventory, Provider, by_level


def test_providers_grouped_by_their_level() -> None:
    providers = [
        Provider(
            "c1",
            frozenset({"CUSTOM_PINFOLD_LEVEL_2", "HW_CPU_X86_AVX"}),
            {"VCPU": Inventory(8, 2, 16.0), "MEMORY_MB": Inventory(16384, 512, 1.5)},
            {"VCPU": 5, "MEMORY_MB": 4096},
        ),
        Provider("c2", frozenset(), {"VCPU": Inventory(4, 0, 2.0)}, {"VCPU": 1}),
        Provider("c3", frozenset(), {"VCPU": Inventory(4), "PCPU": Inventory(4, 1)}, {"PCPU": 2}),
        Provider("storage", frozenset(), {"DISK_GB": Inventory(100)}),
    ]
    levels = by_level(providers)
    assert list(levels) == [1.0, 2.0]
    one, two = levels[1.0], levels[2.0]
    # c1: the trait says 2 even though its allocation ratio is 16: (8 - 2) * 16 vCPUs
    assert (two.hosts, two.cpus, two.vcpus, two.vcpus_used) == (["c1", "c2"], 10, 6 * 16.0 + 8.0, 6)
    assert (two.memory_mib, two.memory_used_mib) == ((16384 - 512) * 1.5, 4096)
    assert two.vcpus_free == 96 + 8 - 6
    # c3: its VCPUs at ratio 1 and its PCPUs (4 - 1 reserved) both at level 1
    assert (one.hosts, one.cpus, one.vcpus, one.vcpus_used) == (["c3"], 7, 7.0, 2)


def test_no_providers_no_levels() -> None:
    assert by_level([]) == {}
    assert by_level([Provider("disk only", inventories={"DISK_GB": Inventory(10)})]) == {}
