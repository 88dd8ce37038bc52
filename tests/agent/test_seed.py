"""cloud-init seeds (agent/seed.py): the NoCloud ISO read back with pycdlib
holds the hostname, the keys, the user data and the network-config."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib

from pinfold.agent.seed import LABEL, PARTIAL, Seeds, build_iso
from pinfold.model.vm import MAX_USER_DATA_BYTES

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
