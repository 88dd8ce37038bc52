"""One VM request, many descriptions (model/vm.py's docstring says which is
which): each gives back the `VMRequest` it was made from, so no caller
rebuilds one field by field."""

from __future__ import annotations

from pinfold.model.vm import VMRequest
from pinfold.placement import VMSpec

WEB = VMRequest("web-1", 2, 2048, 2.0, "alice", "/images/debian.qcow2")


def test_a_request_gives_the_spec_the_placement_core_places() -> None:
    assert WEB.spec == VMSpec("web-1", 2, 2048, 2.0)
    assert isinstance(VMRequest("a", 1, 128, 2).spec.ratio, float)  # an int level is a float level
