"""Fixtures shared by the placement tests."""

from __future__ import annotations

import pytest

from pinfold.placement import Cluster, HostAllocator
from pinfold.topology import Topology


@pytest.fixture
def cluster(i7: Topology) -> Cluster:
    """Three empty i7 hosts (8 CPUs each), h0, h1, h2, registered in that order."""
    c = Cluster()
    for name in ("h0", "h1", "h2"):
        c.add_host(name, HostAllocator(i7))
    return c
