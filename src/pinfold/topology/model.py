"""The host CPU topology as plain data, and the CPU distance matrix.

Pure: no file or sysfs access here (see `sysfs` and `slackvm_json` for that), so
the placement core can import this module and stay free of I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # for annotations only: the model itself touches no file
    from pathlib import Path

__all__ = ["CACHE_STEP", "CPU", "Topology"]

#: Distance added for each cache level two CPUs do not share (DESIGN.md).
CACHE_STEP = 10


@dataclass(frozen=True, slots=True)
class CPU:
    """One logical CPU.

    `cache_ids` holds the id of its cache at each level in sysfs index order
    (L1d, L1i, L2, L3, ...); two CPUs share a cache level when the ids are
    equal. `max_freq_khz` is informative only: many virtual machines and
    containers have no cpufreq, so nothing may depend on it.
    """

    cpu_id: int
    numa_node: int
    cache_ids: tuple[int, ...]
    smt_siblings: tuple[int, ...] = ()
    package_siblings: tuple[int, ...] = ()
    max_freq_khz: int | None = None


@dataclass(frozen=True)
class Topology:
    """The logical CPUs of a host, its NUMA distances and its memory.

    `host_count` counts every logical CPU of the machine, usable or not, so that
    pin masks have the right length; `cpus` lists the CPUs the topology knows
    (a SlackVM file may omit the ones reserved for the host) and `excluded`
    removes more of them from placement. Memory is in MiB.
    """

    cpus: tuple[CPU, ...]
    numa_distances: Mapping[int, tuple[int, ...]]
    host_count: int
    memory_total_mib: int
    memory_allowed_mib: int
    excluded: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        ids = [cpu.cpu_id for cpu in self.cpus]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate cpu_id in topology")
        if not ids:
            raise ValueError("topology has no CPUs")
        if min(ids) < 0 or max(ids) >= self.host_count:
            raise ValueError(f"cpu ids must lie in 0..{self.host_count - 1}")
        levels = {len(cpu.cache_ids) for cpu in self.cpus}
        if len(levels) != 1:
            raise ValueError("every CPU must list the same number of cache levels")
        for cpu in self.cpus:
            row = self.numa_distances.get(cpu.numa_node)
            if row is None or len(row) <= max(self._nodes):
                raise ValueError(f"no NUMA distances for node {cpu.numa_node}")
        if self.memory_total_mib < 0 or self.memory_allowed_mib < 0:
            raise ValueError("memory must not be negative")

    @cached_property
    def _nodes(self) -> tuple[int, ...]:
        return tuple(sorted({cpu.numa_node for cpu in self.cpus}))

    @cached_property
    def usable_cpus(self) -> tuple[int, ...]:
        """CPU ids open to placement, ascending."""
        return tuple(sorted(c.cpu_id for c in self.cpus if c.cpu_id not in self.excluded))

    @cached_property
    def usable_set(self) -> frozenset[int]:
        """`usable_cpus` as a set: one for every allocator of this host's shape."""
        return frozenset(self.usable_cpus)

    @cached_property
    def usable_mask(self) -> npt.NDArray[np.bool_]:
        """`host_count` booleans, True for the usable CPUs: an empty host's free
        mask. Read-only and shared; an allocator copies it (building it at each
        allocator was most of a 10,000-host picture's build at a restart)."""
        mask = np.zeros(self.host_count, dtype=bool)
        mask[list(self.usable_cpus)] = True
        mask.setflags(write=False)
        return mask

    @cached_property
    def cache_levels(self) -> int:
        return len(self.cpus[0].cache_ids)

    def with_exclusions(self, exclude: Iterable[int]) -> Topology:
        """The same host with more CPUs reserved for the host itself."""
        extra = frozenset(exclude)
        known = {cpu.cpu_id for cpu in self.cpus}
        unknown = sorted(extra - known)
        if unknown:
            raise ValueError(f"cannot exclude unknown CPUs {unknown}")
        return Topology(
            cpus=self.cpus,
            numa_distances=self.numa_distances,
            host_count=self.host_count,
            memory_total_mib=self.memory_total_mib,
            memory_allowed_mib=self.memory_allowed_mib,
            excluded=self.excluded | extra,
        )

    @cached_property
    def distances(self) -> npt.NDArray[np.int64]:
        """host_count x host_count matrix of CPU distances (DESIGN.md).

        Walk the cache levels in index order adding CACHE_STEP at each, and stop
        at the first level whose cache id both CPUs share; when none is shared,
        add the NUMA (SLIT) distance between their nodes. Rows of CPUs the
        topology does not know stay zero: such CPUs are never placed on.
        The matrix is read-only, as it is shared by every allocator of a host.
        """
        ids = np.array([cpu.cpu_id for cpu in self.cpus], dtype=np.int64)
        caches = np.array([cpu.cache_ids for cpu in self.cpus], dtype=np.int64)
        nodes = np.array([cpu.numa_node for cpu in self.cpus], dtype=np.int64)
        size = max(self._nodes) + 1
        slit = np.zeros((size, size), dtype=np.int64)
        for node in self._nodes:
            slit[node, :] = self.numa_distances[node][:size]
        known = slit[nodes[:, None], nodes[None, :]] + CACHE_STEP * caches.shape[1]
        undecided = np.ones_like(known, dtype=bool)
        for level in range(caches.shape[1]):
            column = caches[:, level]
            shared = undecided & (column[:, None] == column[None, :])
            known[shared] = CACHE_STEP * (level + 1)
            undecided &= ~shared
        np.fill_diagonal(known, 0)
        matrix = np.zeros((self.host_count, self.host_count), dtype=np.int64)
        matrix[np.ix_(ids, ids)] = known
        matrix.setflags(write=False)
        return matrix

    def distance(self, a: int, b: int) -> int:
        return int(self.distances[a, b])

    # The I/O lives in sibling modules; these entry points only delegate, so
    # that importing the model (as the placement core does) reads no file.

    @classmethod
    def discover(cls, exclude: Iterable[int] = (), root: str | Path = "/") -> Topology:
        """The running host, from sysfs; `exclude` reserves CPUs for the host."""
        from pinfold.topology import sysfs

        return sysfs.discover(exclude=exclude, root=root)

    @classmethod
    def load(cls, path: str | Path, exclude: Iterable[int] = ()) -> Topology:
        """A topology file in SlackVM's JSON format."""
        from pinfold.topology import slackvm_json

        return slackvm_json.load(path, exclude=exclude)

    def save(self, path: str | Path) -> None:
        """Write SlackVM's JSON format, with freshly computed distances."""
        from pinfold.topology import slackvm_json

        slackvm_json.save(self, path)
