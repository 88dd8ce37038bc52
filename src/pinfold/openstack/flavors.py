"""Which of a cloud's flavors a VM gets, and which level a flavor is (pure).

The smallest flavor that fits: among the flavors with at least the VM's
vCPUs, memory and disk, the first by vCPUs, then memory, then disk, ties by
name, so that the choice is the same on every call and the VM wastes least
of what is scarcest first (vCPUs). An explicit flavor (id or name) is taken
as it is, or refused if the cloud has none of that name.

A level (docs/design.md, "Levels on OpenStack") is named by a flavor's extra
spec `trait:CUSTOM_PINFOLD_LEVEL_<n>=required` (Nova's Placement prefilter
then sends its servers to the hosts whose resource provider has that trait),
or, for 1:1 only, by `hw:cpu_policy=dedicated` (PCPU inventory). A flavor
naming none is of no level. A VM of a level gets a flavor of that level; a VM
of no level a flavor of no level (never a dedicated one by chance of size).

An image may ask more of the flavor than the VM does (`ImageNeeds`: Glance's
`min_ram`, `min_disk` and the image's size); Nova refuses a flavor short of
them with a 400 that names neither, so where the image is known the choice
passes over such flavors, and says so when none is left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pinfold.model.errors import ErrorCode, PinfoldError

__all__ = [
    "LEVEL_TRAIT_PREFIX", "Flavor", "ImageNeeds", "choose_flavor", "cloud_level", "flavor_level",
    "level_trait", "trait_level",
]  # fmt: skip

LEVEL_TRAIT_PREFIX = "CUSTOM_PINFOLD_LEVEL_"
GIB = 2**30


@dataclass(frozen=True)
class Flavor:
    """A cloud's flavor as far as the choice needs it (`Cloud.flavors` reads them)."""

    id: str
    name: str
    vcpus: int
    memory_mib: int
    disk_gb: int
    extra_specs: Mapping[str, str] = field(default_factory=dict)

    @property
    def level(self) -> float | None:
        return flavor_level(self.extra_specs)

    @property
    def names_a_pinfold_level(self) -> bool:
        """Whether it requires a pinfold level's trait (a cloud set up for
        pinfold's levels has such flavors; `hw:cpu_policy` alone is any cloud's)."""
        return any(
            key.startswith("trait:")
            and value == "required"
            and trait_level(key.removeprefix("trait:")) is not None
            for key, value in self.extra_specs.items()
        )

    def fits(self, vcpus: int, memory_mib: int, disk_gb: int) -> bool:
        return self.vcpus >= vcpus and self.memory_mib >= memory_mib and self.disk_gb >= disk_gb

    def describe(self) -> str:
        return f"{self.name} ({self.vcpus} vCPUs, {self.memory_mib} MiB, {self.disk_gb} GB)"


@dataclass(frozen=True)
class ImageNeeds:
    """What an image asks of a flavor, as Nova checks it at a create: memory
    of at least `min_ram_mib`, and a root disk of at least `min_disk_gb` and
    of the image's size, unless the flavor's disk is 0 (then the root disk is
    the image's own size and Nova checks neither)."""

    id: str
    name: str
    min_ram_mib: int = 0
    min_disk_gb: int = 0
    size_bytes: int = 0

    def allows(self, flavor: Flavor) -> bool:
        if flavor.memory_mib < self.min_ram_mib:
            return False
        if flavor.disk_gb == 0:
            return True
        return flavor.disk_gb >= self.min_disk_gb and flavor.disk_gb * GIB >= self.size_bytes

    def describe(self) -> str:
        return (
            f"image {self.name} needs {self.min_ram_mib} MiB, {self.min_disk_gb} GB disk "
            f"(min_ram, min_disk) and holds {self.size_bytes} bytes"
        )


def level_trait(level: float) -> str:
    """The trait naming a level: `CUSTOM_PINFOLD_LEVEL_2` for 2:1, `..._1_5` for 1.5:1
    (a trait has only capitals, digits and underscores)."""
    text = f"{float(level):g}"
    if not level > 0 or "e" in text:
        raise ValueError(f"a level is a positive ratio, not {level!r}")
    return LEVEL_TRAIT_PREFIX + text.replace(".", "_")


def trait_level(trait: str) -> float | None:
    """The level a trait names (`level_trait`'s inverse); None for another trait."""
    if not trait.startswith(LEVEL_TRAIT_PREFIX):
        return None
    text = trait.removeprefix(LEVEL_TRAIT_PREFIX).replace("_", ".", 1)
    try:
        level = float(text)
    except ValueError:
        return None
    return level if level > 0 and level_trait(level) == trait else None


def flavor_level(extra_specs: Mapping[str, str]) -> float | None:
    """The level a flavor's extra specs name (see the module); None for none.
    A required level trait wins over `hw:cpu_policy`."""
    for key, value in sorted(extra_specs.items()):
        if key.startswith("trait:") and value == "required":
            level = trait_level(key.removeprefix("trait:"))
            if level is not None:
                return level
    if extra_specs.get("hw:cpu_policy") == "dedicated":
        return 1.0
    return None


def cloud_level(flavors: Iterable[Flavor], ratio: float) -> float | None:
    """The level a VM of `ratio` asks of this cloud's flavors: `ratio` on a cloud set up
    for pinfold's levels (some flavor requires a level trait), else None (flavors of no
    level), so that a cloud never set up for levels works as it is (RAPID's back-end and
    the agent's openstack driver both choose so)."""
    return float(ratio) if any(flavor.names_a_pinfold_level for flavor in flavors) else None


def choose_flavor(
    flavors: Iterable[Flavor],
    vcpus: int,
    memory_mib: int,
    disk_gb: int = 0,
    *,
    explicit: str = "",
    level: float | None = None,
    image: ImageNeeds | None = None,
) -> Flavor:
    """The flavor a VM of these sizes gets (see the module): `explicit` (an
    id or a name) if given, else the smallest that fits, of `level` if one is
    asked (else of no level), and that `image` allows if it is known. `unknown
    flavor` when none is, fits or is allowed, saying what the cloud has."""
    known = list(flavors)
    if explicit:
        return _explicit(known, explicit, image)
    candidates = [flavor for flavor in known if flavor.level == level]
    fitting = sorted(
        (
            flavor
            for flavor in candidates
            if flavor.fits(vcpus, memory_mib, disk_gb) and (image is None or image.allows(flavor))
        ),
        key=lambda flavor: (flavor.vcpus, flavor.memory_mib, flavor.disk_gb, flavor.name),
    )
    if fitting:
        return fitting[0]
    at_level = " of no level" if level is None else f" at level {level:g}"
    wanted = f"{vcpus} vCPUs, {memory_mib} MiB, {disk_gb} GB disk{at_level}"
    if image is not None:
        wanted += f" for {image.describe()}"
    if not candidates:
        raise PinfoldError(
            ErrorCode.UNKNOWN_FLAVOR, f"no flavor fits {wanted}: the cloud has no flavor{at_level}"
        )
    largest = max(
        candidates, key=lambda flavor: (flavor.vcpus, flavor.memory_mib, flavor.disk_gb, flavor.name)
    )
    raise PinfoldError(
        ErrorCode.UNKNOWN_FLAVOR, f"no flavor fits {wanted}: the largest is {largest.describe()}"
    )


def _explicit(flavors: list[Flavor], explicit: str, image: ImageNeeds | None) -> Flavor:
    """The flavor of that id (first) or name, if `image` allows it; `unknown flavor` else."""
    for flavor in sorted(flavors, key=lambda flavor: flavor.id != explicit):  # an id before a name
        if explicit in (flavor.id, flavor.name):
            if image is not None and not image.allows(flavor):
                raise PinfoldError(
                    ErrorCode.UNKNOWN_FLAVOR, f"flavor {flavor.describe()} is too small: {image.describe()}"
                )
            return flavor
    raise PinfoldError(ErrorCode.UNKNOWN_FLAVOR, f"the cloud has no flavor {explicit!r}")
