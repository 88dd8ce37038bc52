"""One VM request, many descriptions (model/vm.py's docstring says which is
which): each gives back the `VMRequest` it was made from, so no caller
rebuilds one field by field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pinfold.agent.store import Pending, Store, StoredVM
from pinfold.bodies import CreateVM
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import NIC, VMRequest, nic_problem
from pinfold.placement import HostSnapshot, VMSpec

WEB = VMRequest("web-1", 2, 2048, 2.0, "alice", "/images/debian.qcow2")


def test_a_request_gives_the_spec_the_placement_core_places() -> None:
    assert WEB.spec == VMSpec("web-1", 2, 2048, 2.0)
    assert isinstance(VMRequest("a", 1, 128, 2).spec.ratio, float)  # an int level is a float level


def test_the_create_body_gives_its_request() -> None:
    body = {"name": "web-1", "vcpus": 2, "memory_mib": 2048, "ratio": 2.0, "owner": "alice",
            "image": "/images/debian.qcow2"}  # fmt: skip
    assert CreateVM.model_validate(body).to_request() == WEB
    assert CreateVM.model_validate({"name": "d", "vcpus": 1, "memory_mib": 128}).to_request() == VMRequest(
        "d", 1, 128
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"vcpus": 0},
        {"vcpus": "1"},
        {"name": "x<y>"},
        {"ratio": 0.5},
        {"owner": "o" * 129},
        {"image": "/" * 4097},
        {"nics": [{"network": "default"}] * 9},
        {"nics": [{"network": "default", "bridge": "br0"}]},
        {"nics": [{}]},
        {"nics": [{"network": "default", "mac": "52:54:00:00:00"}]},
        {"nics": [{"network": "default", "speed": 10}]},
        {"nics": [{"bridge": "a-bridge-name-too-long"}]},
        {"nics": "default"},
    ],
)
def test_the_create_body_keeps_the_models_bounds(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CreateVM.model_validate({"name": "web-1", "vcpus": 2, "memory_mib": 2048, **bad})


def test_the_create_body_has_no_room_for_keys_or_user_data_yet() -> None:
    fields = {"name", "vcpus", "memory_mib", "ratio", "owner", "image", "nics"}
    assert set(CreateVM.model_fields) == fields


def test_the_create_body_hands_its_nics_on_with_macs_lower_case() -> None:
    body = CreateVM.model_validate(
        {"name": "web-1", "vcpus": 1, "memory_mib": 64,
         "nics": [{"network": "default"}, {"bridge": "br0", "mac": "02:AA:00:00:00:01"}]}
    )  # fmt: skip
    assert body.to_request().nics == (NIC(network="default"), NIC(bridge="br0", mac="02:aa:00:00:00:01"))


@pytest.mark.parametrize(
    ("nic", "problem"),
    [
        (NIC(network="default"), None),
        (NIC(bridge="br0", mac="02:00:00:00:00:01"), None),
        (NIC(), "exactly one"),
        (NIC(network="a b"), "letters"),
        (NIC(network="default", mac="ff:ff:ff:ff:ff:ff"), "multicast"),
        (NIC(network="default", mac="52:54:00:00:00:0g"), "octets"),
    ],
)
def test_nic_problems(nic: NIC, problem: str | None) -> None:
    found = nic_problem(nic)
    assert (found is None) if problem is None else (problem in (found or "")), found


def test_an_agent_store_row_gives_back_its_request(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    try:
        stored = StoredVM(WEB.spec, WEB.owner, WEB.image, VMState.CREATING, Pending.CREATE)
        store.save_vm(stored, HostSnapshot({}, (WEB.spec,)))
        _, loaded = store.load()
    finally:
        store.close()
    assert stored.request == WEB
    assert loaded["web-1"].request == WEB
