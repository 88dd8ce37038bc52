"""cloud-init seeds (agent/seed.py): the NoCloud ISO read back with pycdlib
holds the hostname, the keys, the user data and the network-config; the
agent writes one for a VM with keys or user data, attaches it to the domain,
and removes it with the VM, after a failed create, and at start when a crash
left it half written or for no VM."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib
import pytest

from pinfold.agent.domain import DomainSpec
from pinfold.agent.drivers import SimDriver
from pinfold.agent.pools import PoolSpec
from pinfold.agent.seed import LABEL, PARTIAL, Seeds, build_iso
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Pending, Store, StoredVM
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import MAX_USER_DATA_BYTES
from pinfold.placement import VMSpec
from pinfold.topology import Topology

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPJQep4eS/coYUOy+Uh+HQ/PXtPmYwjCkZNEkZnPROFW alice@laptop"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILgGd5NvHywU0a9ldOLZJ+d+vxVQCdQzEJ3g/qYt3FRX bob"
USER_DATA = "#cloud-config\npackages: [nginx]\nruncmd:\n  - echo héllo > /root/hi\n"


def read_iso(path: Path) -> tuple[str, dict[str, bytes]]:
    """The volume label and every file at the root of the ISO, by its Joliet name."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for child in iso.list_children(joliet_path="/"):
            name = child.file_identifier().decode("utf-16-be")
            if name in (".", "..", "\x00", "\x01"):
                continue
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            files[name] = out.getvalue()
        # the Rock Ridge names say the same (Linux shows those first)
        for name in files:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue() == files[name]
    finally:
        iso.close()
    return label, files


def test_a_seed_with_keys_only_holds_a_cloud_config_the_hostname_and_the_network(tmp_path: Path) -> None:
    path = Seeds(tmp_path).write("web-1", [KEY, KEY2], "", macs=["52:54:00:AB:cd:01", "52:54:00:ab:cd:02"])
    assert path == tmp_path / "web-1.cidata.iso"
    assert path.stat().st_mode & 0o777 == 0o600
    label, files = read_iso(path)
    assert label == LABEL
    assert set(files) == {"meta-data", "user-data", "network-config"}
    meta = json.loads(files["meta-data"])
    assert meta["local-hostname"] == "web-1"
    assert meta["instance-id"].startswith("iid-web-1-")
    assert meta["public-keys"] == [KEY, KEY2]
    first_line, _, rest = files["user-data"].decode().partition("\n")
    assert first_line == "#cloud-config"
    assert json.loads(rest) == {"hostname": "web-1", "ssh_authorized_keys": [KEY, KEY2]}
    assert json.loads(files["network-config"]) == {
        "version": 2,
        "ethernets": {
            "nic0": {"match": {"macaddress": "52:54:00:ab:cd:01"}, "dhcp4": True},
            "nic1": {"match": {"macaddress": "52:54:00:ab:cd:02"}, "dhcp4": True},
        },
    }


def test_the_users_data_is_kept_byte_for_byte_and_the_keys_go_to_the_meta_data(tmp_path: Path) -> None:
    _, files = read_iso(Seeds(tmp_path).write("db", [KEY], USER_DATA))
    assert files["user-data"] == USER_DATA.encode()
    assert json.loads(files["meta-data"])["public-keys"] == [KEY]
    assert "network-config" not in files  # no NICs: cloud-init's own fallback (DHCP on the first)


def test_user_data_without_keys_has_no_public_keys(tmp_path: Path) -> None:
    _, files = read_iso(Seeds(tmp_path).write("db", [], "#!/bin/sh\necho hi\n"))
    assert "public-keys" not in json.loads(files["meta-data"])
    assert files["user-data"] == b"#!/bin/sh\necho hi\n"


def test_every_seed_gets_its_own_instance_id(tmp_path: Path) -> None:
    """A VM deleted and made again under its name is a new instance: cloud-init runs again."""
    seeds = Seeds(tmp_path)
    first = json.loads(read_iso(seeds.write("v", [KEY], ""))[1]["meta-data"])["instance-id"]
    second = json.loads(read_iso(seeds.write("v", [KEY], ""))[1]["meta-data"])["instance-id"]
    assert first != second


def test_user_data_at_the_limit_fits_in_the_iso(tmp_path: Path) -> None:
    big = "#" + "x" * (MAX_USER_DATA_BYTES - 1)
    _, files = read_iso(Seeds(tmp_path).write("v", [], big))
    assert files["user-data"] == big.encode()


def test_build_iso_names_survive_rock_ridge_and_joliet(tmp_path: Path) -> None:
    image = tmp_path / "x.iso"
    image.write_bytes(build_iso([("meta-data", b"{}"), ("user-data", b"u")]))
    assert read_iso(image) == (LABEL, {"meta-data": b"{}", "user-data": b"u"})


def test_leftovers_are_the_partial_seeds_and_those_of_no_vm(tmp_path: Path) -> None:
    seeds = Seeds(tmp_path)
    seeds.write("kept", [KEY], "")
    seeds.write("orphan", [KEY], "")
    partial = tmp_path / f"{PARTIAL}abc.iso"
    partial.write_bytes(b"half")
    overlay = tmp_path / "orphan.qcow2"
    overlay.write_bytes(b"not a seed")
    seeds.remove_leftovers(["kept"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.cidata.iso", "orphan.qcow2"]
    Seeds(tmp_path / "none").remove_leftovers([])  # no directory yet: nothing to do


# -- the agent ---------------------------------------------------------------------------------


def agent_in(
    tmp_path: Path, topology: Topology, driver: SimDriver | None = None, **settings: object
) -> Agent:
    return Agent.open(
        topology, driver or SimDriver(), Store(tmp_path / "agent.db"),
        AgentSettings(domain_type="qemu", disk_dir=tmp_path / "disks", **settings),  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_vm_with_keys_gets_its_seed_attached_and_loses_it_when_deleted(
    tmp_path: Path, i7: Topology
) -> None:
    driver = SimDriver()
    agent = agent_in(tmp_path, i7, driver)
    agent.create(VMRequest("web", 1, 128, 2.0, ssh_keys=(KEY,), user_data=USER_DATA))
    seed = tmp_path / "disks" / "web.cidata.iso"
    assert driver.info("web").spec.seed == seed  # type: ignore[union-attr]
    _, files = read_iso(seed)
    assert files["user-data"] == USER_DATA.encode()
    agent.delete("web")
    assert not seed.exists()


def test_a_vm_without_keys_or_user_data_has_no_seed(tmp_path: Path, i7: Topology) -> None:
    driver = SimDriver()
    agent = agent_in(tmp_path, i7, driver)
    agent.create(VMRequest("plain", 1, 128, 2.0))
    assert driver.info("plain").spec.seed is None  # type: ignore[union-attr]
    assert not (tmp_path / "disks").exists() or not list((tmp_path / "disks").iterdir())


def test_too_big_user_data_is_refused_with_nothing_made(tmp_path: Path, i7: Topology) -> None:
    driver = SimDriver()
    agent = agent_in(tmp_path, i7, driver)
    with pytest.raises(AgentError, match=f"at most {MAX_USER_DATA_BYTES}") as refused:
        agent.create(VMRequest("big", 1, 128, 2.0, user_data="é" * (MAX_USER_DATA_BYTES // 2 + 1)))
    assert refused.value.code == "invalid request"
    with pytest.raises(AgentError, match="ssh key"):
        agent.create(VMRequest("bad", 1, 128, 2.0, ssh_keys=("ssh-ed25519 not-base64!",)))
    assert driver.guests() == []
    assert agent.vms == {}
    assert not (tmp_path / "disks").exists() or not list((tmp_path / "disks").iterdir())


def test_a_failed_create_removes_its_seed(tmp_path: Path, i7: Topology) -> None:
    driver = SimDriver()
    agent = agent_in(tmp_path, i7, driver)
    driver.create(DomainSpec("clash", 1, 128, frozenset({0}), 1.0))  # a domain the store does not know
    with pytest.raises(AgentError, match="hypervisor failed"):
        agent.create(VMRequest("clash", 1, 128, 1.0, ssh_keys=(KEY,)))
    assert not (tmp_path / "disks" / "clash.cidata.iso").exists()


def test_a_seeded_vm_is_made_cold_not_handed_a_booted_pool_member(tmp_path: Path, i7: Topology) -> None:
    driver = SimDriver()
    pool = PoolSpec(name="small", size=1, vcpus=1, memory_mib=128, ratio=2.0, warmup_s=0.0)
    agent = agent_in(tmp_path, i7, driver, pools=(pool,))
    while agent.tend_pools(0.0):
        pass
    agent.tend_pools(1.0)
    assert agent.pool_status()["small"]["ready"] == 1
    members = {g.name for g in driver.guests()}
    assert len(members) == 1
    agent.create(VMRequest("keyed", 1, 128, 2.0, ssh_keys=(KEY,)))
    assert agent.vms["keyed"].domain == "keyed"  # its own domain, with its seed
    assert driver.info("keyed").spec.seed is not None  # type: ignore[union-attr]


def test_start_up_removes_leftover_seeds_and_keeps_a_stored_vms(tmp_path: Path, i7: Topology) -> None:
    """A crash after a seed was written but before its VM was stored leaves a
    seed of no VM; one during the write leaves a partial file; one after the
    store leaves a VM whose domain start-up makes again, with its seed."""
    driver = SimDriver()
    first = agent_in(tmp_path, i7, driver)
    first.create(VMRequest("kept", 1, 128, 2.0, ssh_keys=(KEY,)))
    seeds = Seeds(tmp_path / "disks")
    seeds.write("never-stored", [KEY], "")
    (tmp_path / "disks" / f"{PARTIAL}0.iso").write_bytes(b"half")
    # stored with a pending create, its seed written, its domain never made
    seeds.write("half-created", [KEY], "")
    first.allocator.deploy(VMSpec("half-created", 1, 128, 2.0))
    first.store.save_vm(
        StoredVM(VMSpec("half-created", 1, 128, 2.0), "", "", VMState.CREATING, Pending.CREATE),
        first.allocator.snapshot(),
    )
    first.store.close()
    agent = agent_in(tmp_path, i7, driver)
    assert sorted(p.name for p in (tmp_path / "disks").iterdir()) == [
        "half-created.cidata.iso", "kept.cidata.iso",
    ]  # fmt: skip
    assert driver.info("half-created").spec.seed == seeds.path("half-created")  # type: ignore[union-attr]
    assert agent.vms["half-created"].state == "running"


def test_a_vm_whose_domain_went_with_a_delete_loses_its_seed_at_start(tmp_path: Path, i7: Topology) -> None:
    driver = SimDriver()
    first = agent_in(tmp_path, i7, driver)
    first.create(VMRequest("gone", 1, 128, 2.0, ssh_keys=(KEY,)))
    first.store.set_state("gone", VMState.RUNNING, Pending.DELETE)  # the delete marked, then the crash
    driver.delete("gone")
    first.store.close()
    agent = agent_in(tmp_path, i7, driver)
    assert "gone" not in agent.vms
    assert not (tmp_path / "disks" / "gone.cidata.iso").exists()


def test_a_vm_without_keys_never_gets_a_stale_seed_of_its_name(tmp_path: Path, i7: Topology) -> None:
    """A seed left under a name (say, copied back by an operator's restore)
    is no VM's: a VM made under that name without keys must not boot with it."""
    driver = SimDriver()
    agent = agent_in(tmp_path, i7, driver)
    Seeds(tmp_path / "disks").write("plain", [KEY], "#!/bin/sh\necho not yours\n")
    agent.create(VMRequest("plain", 1, 128, 2.0))
    assert driver.info("plain").spec.seed is None  # type: ignore[union-attr]
    assert not (tmp_path / "disks" / "plain.cidata.iso").exists()


def test_a_repeated_create_with_other_keys_is_refused_and_leaves_the_seed_as_it_was(
    tmp_path: Path, i7: Topology
) -> None:
    """The agent has no idempotent create to hand the old VM back: a create
    of a name it has is `duplicate name` (409), whatever it carries, refused
    before a seed is written, so the seed the guest booted with stays (and no
    seed appears under the name of a VM handed out from a warm pool). The
    controller tells a repeat of the same create from another (its digest)."""
    driver = SimDriver()
    pool = PoolSpec(name="small", size=1, vcpus=1, memory_mib=128, ratio=2.0, warmup_s=0.0)
    agent = agent_in(tmp_path, i7, driver, pools=(pool,))
    agent.create(VMRequest("web", 1, 128, 2.0, ssh_keys=(KEY,), user_data=USER_DATA))
    seed = tmp_path / "disks" / "web.cidata.iso"
    before = seed.read_bytes()
    while agent.tend_pools(0.0):
        pass
    agent.tend_pools(1.0)
    assert agent.create(VMRequest("warm", 1, 128, 2.0)).domain != "warm"  # handed out, seedless
    for name in ("web", "warm"):
        for other in (
            VMRequest(name, 1, 128, 2.0, ssh_keys=(KEY2,), user_data=USER_DATA),
            VMRequest(name, 1, 128, 2.0, ssh_keys=(KEY,)),
        ):
            with pytest.raises(AgentError) as refused:
                agent.create(other)
            assert (refused.value.code, refused.value.code.status) == ("duplicate name", 409)
    assert seed.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "disks").glob("*.cidata.iso")) == ["web.cidata.iso"]
