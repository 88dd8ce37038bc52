"""One VM request, many descriptions (model/vm.py's docstring says which is
which): each gives back the `VMRequest` it was made from, so no caller
rebuilds one field by field."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from pinfold.agent.store import Pending, Store, StoredVM
from pinfold.bodies import CreateVM
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import (
    MAX_SSH_KEY_LENGTH,
    MAX_SSH_KEYS,
    MAX_USER_DATA_BYTES,
    NIC,
    VMRequest,
    first_boot_problem,
    nic_problem,
    ssh_key_problem,
)
from pinfold.placement import HostSnapshot, VMSpec

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPJQep4eS/coYUOy+Uh+HQ/PXtPmYwjCkZNEkZnPROFW alice@laptop"
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


def test_the_create_body_has_the_requests_fields() -> None:
    fields = {"name", "vcpus", "memory_mib", "ratio", "owner", "image", "nics", "ssh_keys", "user_data"}
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


def test_the_create_body_carries_keys_and_user_data_to_the_request() -> None:
    body = {"name": "k", "vcpus": 1, "memory_mib": 128, "ssh_keys": [ED25519], "user_data": "#cloud-config\n"}
    request = CreateVM.model_validate(body).to_request()
    assert (request.ssh_keys, request.user_data) == ((ED25519,), "#cloud-config\n")


@pytest.mark.parametrize(
    "bad",
    [
        {"ssh_keys": ED25519},  # a string is no list
        {"ssh_keys": [""]},
        {"ssh_keys": ["k" * (MAX_SSH_KEY_LENGTH + 1)]},
        {"ssh_keys": [ED25519] * (MAX_SSH_KEYS + 1)},
        {"user_data": "x" * (MAX_USER_DATA_BYTES + 1)},
        {"user_data": 1},
    ],
)
def test_the_create_body_bounds_keys_and_user_data(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CreateVM.model_validate({"name": "k", "vcpus": 1, "memory_mib": 128, **bad})


def _key(kind: str, blob: bytes) -> str:
    return f"{kind} {base64.b64encode(blob).decode()}"


def _blob(kind: str) -> bytes:
    return len(kind).to_bytes(4, "big") + kind.encode() + b"\x00" * 40


@pytest.mark.parametrize(
    "key",
    [
        ED25519,
        ED25519.rsplit(" ", 1)[0],  # no comment
        ED25519 + " and a comment with spaces",
        _key("ssh-rsa", _blob("ssh-rsa")),
        _key("ecdsa-sha2-nistp256", _blob("ecdsa-sha2-nistp256")),
        _key("sk-ssh-ed25519@openssh.com", _blob("sk-ssh-ed25519@openssh.com")),
    ],
)
def test_public_key_lines_of_known_types_are_taken(key: str) -> None:
    assert ssh_key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "a public key line"),
        ("ssh-ed25519", "a public key line"),
        ("ssh-dss " + base64.b64encode(_blob("ssh-dss")).decode(), "a public key line"),
        ('from="10.0.0.1" ' + ED25519, "a public key line"),  # authorized_keys options
        ("ssh-ed25519 not!base64", "not base64"),
        (_key("ssh-ed25519", _blob("ssh-rsa")), "not a ssh-ed25519 key"),
        (ED25519 + "\nssh-rsa AAAA", "one line"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "a public key line"),
        ("ssh-ed25519 " + "A" * MAX_SSH_KEY_LENGTH, "longer than"),
    ],
)
def test_anything_but_a_public_key_line_is_refused(key: str, why: str) -> None:
    problem = ssh_key_problem(key)
    assert problem is not None
    assert why in problem


def test_first_boot_inputs_are_bounded() -> None:
    assert first_boot_problem((ED25519,) * MAX_SSH_KEYS, "x" * MAX_USER_DATA_BYTES) is None
    assert "at most 32 keys" in (first_boot_problem((ED25519,) * (MAX_SSH_KEYS + 1), "") or "")
    assert "ssh key" in (first_boot_problem((ED25519, "nope"), "") or "")
    # counted in UTF-8 bytes: 2 bytes each, so half the characters already fill it
    assert "bytes, at most" in (first_boot_problem((), "é" * (MAX_USER_DATA_BYTES // 2 + 1)) or "")
    assert "UTF-8" in (first_boot_problem((), "\ud800") or "")  # a lone surrogate JSON can carry


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
