"""The flavor a VM gets on a cloud: the smallest that fits (vCPUs, then
memory, then disk, ties by name), an explicit one by id or name, a level's
only when a level is asked, and a refusal that says what the cloud has."""

from __future__ import annotations

import pytest

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.openstack.flavors import (
    Flavor,
    ImageNeeds,
    choose_flavor,
    flavor_level,
    level_trait,
    trait_level,
)

LEVEL2 = {"trait:CUSTOM_PINFOLD_LEVEL_2": "required"}
FLAVORS = [
    Flavor("f-big", "m1.large", 4, 8192, 80),
    Flavor("f-tiny", "m1.tiny", 1, 512, 1),
    Flavor("f-small", "m1.small", 1, 2048, 20),
    Flavor("f-b", "b.1-1024", 1, 1024, 20),
    Flavor("f-a", "a.1-1024", 1, 1024, 20),
    Flavor("f-2", "l2.small", 2, 1024, 20, LEVEL2),
    Flavor("f-ded", "ded.small", 2, 2048, 20, {"hw:cpu_policy": "dedicated"}),
]


@pytest.mark.parametrize(
    ("vcpus", "memory", "disk", "chosen"),
    [
        (1, 256, 0, "m1.tiny"),
        (1, 1024, 0, "a.1-1024"),  # a tie (1/1024/20 twice): by name
        (1, 1500, 10, "m1.small"),  # memory before disk
        (2, 512, 0, "m1.large"),  # no level asked: none of a level (l2.small, ded.small)
        (3, 512, 0, "m1.large"),
    ],
)
def test_the_smallest_flavor_that_fits(vcpus: int, memory: int, disk: int, chosen: str) -> None:
    assert choose_flavor(FLAVORS, vcpus, memory, disk).name == chosen


def test_an_explicit_flavor_by_id_or_name_whatever_its_size() -> None:
    assert choose_flavor(FLAVORS, 8, 99999, explicit="f-tiny").name == "m1.tiny"
    assert choose_flavor(FLAVORS, 1, 1, explicit="m1.large").id == "f-big"
    # a name that is another flavor's id: the id wins
    named_like_an_id = [*FLAVORS, Flavor("x", "f-big", 1, 1, 1)]
    assert choose_flavor(named_like_an_id, 1, 1, explicit="f-big").name == "m1.large"
    with pytest.raises(PinfoldError) as caught:
        choose_flavor(FLAVORS, 1, 1, explicit="m9.huge")
    assert (caught.value.code, caught.value.detail) == (
        ErrorCode.UNKNOWN_FLAVOR,
        "the cloud has no flavor 'm9.huge'",
    )


def test_a_level_takes_only_its_flavors() -> None:
    assert choose_flavor(FLAVORS, 1, 256, level=2.0).name == "l2.small"
    assert choose_flavor(
        [*FLAVORS, Flavor("f-22", "l2.big", 2, 2048, 20, LEVEL2)], 2, 1024, level=2.0
    ).name == (
        "l2.small"  # vCPUs first, then memory
    )
    assert choose_flavor(FLAVORS, 1, 256, level=1.0).name == "ded.small"
    with pytest.raises(PinfoldError) as caught:
        choose_flavor(FLAVORS, 1, 256, level=4.0)
    assert caught.value.code is ErrorCode.UNKNOWN_FLAVOR
    assert (
        caught.value.detail
        == "no flavor fits 1 vCPUs, 256 MiB, 0 GB disk at level 4: the cloud has no flavor at level 4"
    )


def test_none_fits_names_the_largest() -> None:
    with pytest.raises(PinfoldError) as caught:
        choose_flavor(FLAVORS, 8, 1024, 20)
    assert caught.value.detail == (
        "no flavor fits 8 vCPUs, 1024 MiB, 20 GB disk of no level: "
        "the largest is m1.large (4 vCPUs, 8192 MiB, 80 GB)"
    )
    with pytest.raises(PinfoldError) as caught:
        choose_flavor(FLAVORS[:1], 8, 1024, 20, level=2)
    assert caught.value.code is ErrorCode.UNKNOWN_FLAVOR
    assert caught.value.detail == (
        "no flavor fits 8 vCPUs, 1024 MiB, 20 GB disk at level 2: the cloud has no flavor at level 2"
    )
    assert caught.value.code.status == 422


@pytest.mark.parametrize(
    ("level", "trait"),
    [(1, "CUSTOM_PINFOLD_LEVEL_1"), (2.0, "CUSTOM_PINFOLD_LEVEL_2"), (1.5, "CUSTOM_PINFOLD_LEVEL_1_5")],
)
def test_a_level_and_its_trait(level: float, trait: str) -> None:
    assert level_trait(level) == trait
    assert trait_level(trait) == level


@pytest.mark.parametrize(
    "trait",
    [
        "HW_CPU_X86_AVX",
        "CUSTOM_PINFOLD_LEVEL_",
        "CUSTOM_PINFOLD_LEVEL_X",
        "CUSTOM_PINFOLD_LEVEL_0",
        "CUSTOM_PINFOLD_LEVEL_2_0",
    ],
)
def test_other_traits_name_no_level(trait: str) -> None:
    assert trait_level(trait) is None


@pytest.mark.parametrize("level", [0, -1, float("nan"), 1e-9])
def test_a_level_that_is_no_ratio_has_no_trait(level: float) -> None:
    with pytest.raises(ValueError, match="positive ratio"):
        level_trait(level)


def test_a_flavors_level_from_its_extra_specs() -> None:
    assert flavor_level({}) is None
    assert flavor_level({"trait:CUSTOM_PINFOLD_LEVEL_3": "required"}) == 3.0
    assert flavor_level({"trait:CUSTOM_PINFOLD_LEVEL_3": "forbidden"}) is None
    assert flavor_level({"hw:cpu_policy": "dedicated"}) == 1.0
    assert flavor_level({"hw:cpu_policy": "shared"}) is None
    assert flavor_level({"hw:cpu_policy": "dedicated", "trait:CUSTOM_PINFOLD_LEVEL_2": "required"}) == 2.0


def test_a_flavor_names_a_pinfold_level_by_its_trait_only() -> None:
    assert Flavor("a", "a", 1, 1, 1, LEVEL2).names_a_pinfold_level
    assert not Flavor("b", "b", 1, 1, 1, {"hw:cpu_policy": "dedicated"}).names_a_pinfold_level
    assert not Flavor("c", "c", 1, 1, 1, {"trait:CUSTOM_PINFOLD_LEVEL_2": "forbidden"}).names_a_pinfold_level


@pytest.mark.parametrize(
    ("needs", "chosen"),
    [
        (ImageNeeds("i", "img", min_ram_mib=1024), "a.1-1024"),  # m1.tiny's 512 MiB is too little
        (ImageNeeds("i", "img", min_disk_gb=2), "a.1-1024"),  # m1.tiny's 1 GB is too little
        (ImageNeeds("i", "img", size_bytes=2**30 + 1), "a.1-1024"),  # bigger than m1.tiny's disk
        (ImageNeeds("i", "img", min_disk_gb=30), "m1.large"),
        (ImageNeeds("i", "img", min_disk_gb=1, size_bytes=2**30), "m1.tiny"),  # exactly: it fits
    ],
)
def test_an_images_needs_pass_over_the_flavors_short_of_them(needs: ImageNeeds, chosen: str) -> None:
    assert choose_flavor(FLAVORS, 1, 256, 0, image=needs).name == chosen


def test_a_flavor_of_disk_0_takes_any_image_size_as_nova_does() -> None:
    zero = [Flavor("z", "z.1", 1, 512, 0), *FLAVORS]
    needs = ImageNeeds("i", "img", min_disk_gb=50, size_bytes=40 * 2**30)
    assert choose_flavor(zero, 1, 256, 0, image=needs).name == "z.1"


def test_no_flavor_the_image_allows_names_the_image_and_an_explicit_one_is_checked() -> None:
    needs = ImageNeeds("i", "big-image", min_ram_mib=16384)
    with pytest.raises(PinfoldError) as caught:
        choose_flavor(FLAVORS, 1, 256, 0, image=needs)
    assert caught.value.code is ErrorCode.UNKNOWN_FLAVOR
    assert "for image big-image needs 16384 MiB" in caught.value.detail
    with pytest.raises(PinfoldError) as caught:
        choose_flavor(FLAVORS, 1, 256, explicit="m1.tiny", image=needs)
    assert caught.value.code is ErrorCode.UNKNOWN_FLAVOR
    assert caught.value.detail.startswith(
        "flavor m1.tiny (1 vCPUs, 512 MiB, 1 GB) is too small: image big-image"
    )
    assert (
        choose_flavor(FLAVORS, 1, 256, explicit="m1.tiny", image=ImageNeeds("i", "small")).name == "m1.tiny"
    )
