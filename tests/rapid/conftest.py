"""Fixtures of the RAPID tests: fake DS and SLAM peers, and a started rig."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rapid.peers import FakeDS, FakeSLAM
from tests.rapid.rig import Rig, close, make_rig


@pytest.fixture
def peers() -> Iterator[tuple[FakeDS, FakeSLAM]]:
    slam = FakeSLAM()
    ds = FakeDS(slam.port)
    yield ds, slam
    ds.stop()
    slam.stop()


@pytest.fixture
def rig(tmp_path, i7, peers) -> Iterator[Rig]:
    """Registered with the DS and the SLAM, its two helpers made."""
    made = make_rig(tmp_path, i7, peers[0], peers[1])
    assert made.vmm.registered.wait(10)
    yield made
    close(made)
