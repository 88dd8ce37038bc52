"""cloud-init seeds: a small NoCloud ISO per VM, attached read-only as a CD-ROM.

A NoCloud seed is an ISO 9660 volume labelled `cidata` holding `meta-data`
(instance-id, local-hostname = the VM's name, and the VM's SSH keys as
`public-keys`), `user-data`, and `network-config` (version 2: DHCP on each
NIC, matched by its MAC and named eth0, eth1... in order) when the VM has
NICs. cloud-init in the guest finds it by its label and reads it at first boot.

How keys and user data meet: the keys always go into meta-data's
`public-keys`, which cloud-init gives the default user whatever the user data
says. The user data is the user's, byte for byte, when given (a
`#cloud-config`, a script or a MIME multipart alike: pinfold does not parse
it); with keys only it is a `#cloud-config` naming the hostname and the keys
(`ssh_authorized_keys`), and with neither no seed is made at all.

Every document is written as JSON, which YAML reads as it is (a
`#cloud-config` is YAML after its first line): nothing is pasted into YAML.

The ISO is built with pycdlib, in memory: pure Python, so the agent runs no
extra program (xorriso or genisoimage would be one more Debian package on
every host and a subprocess per create) and the bytes can be written the
way every other agent file is: to a temporary name, 0600, synced, then
renamed. Rock Ridge and Joliet carry the lower-case names cloud-init reads.

The seed's path is derived from the VM's domain name, next to its overlay
(`Seeds.path`), never stored: a VM has a seed when that file exists.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

__all__ = [
    "LABEL",
    "MAX_SEED_BYTES",
    "SUFFIX",
    "Seeds",
    "build_iso",
    "image_problem",
    "meta_data",
    "network_config",
    "user_data",
]

#: the volume label cloud-init's NoCloud looks for
LABEL = "cidata"
#: a seed's file name is the domain's name and this
SUFFIX = ".cidata.iso"
#: the largest seed a migration carries: `write`'s largest (32 keys of 8 KiB, 64 KiB of user
#: data) is about 380 KiB; in a prepare's JSON body (base64) this stays below the 1 MiB limit
MAX_SEED_BYTES = 512 * 1024
#: every ISO 9660 volume has this at byte 32769 (its primary volume descriptor's identifier)
ISO_MAGIC = (32769, b"CD001")
#: a seed while it is written (no VM name starts with '.'), renamed when complete
PARTIAL = ".partial-seed-"


def meta_data(hostname: str, ssh_keys: Sequence[str], instance_id: str) -> bytes:
    """NoCloud's meta-data: a new instance-id per VM made (cloud-init runs
    its first-boot modules once per instance-id), the hostname, the keys."""
    document: dict[str, object] = {"instance-id": instance_id, "local-hostname": hostname}
    if ssh_keys:
        document["public-keys"] = list(ssh_keys)
    return _json(document)


def user_data(hostname: str, ssh_keys: Sequence[str], given: str) -> bytes:
    """The user's user data as given; else a `#cloud-config` with the hostname and the keys."""
    if given:
        return given.encode()
    config = {"hostname": hostname, "ssh_authorized_keys": list(ssh_keys)}
    return b"#cloud-config\n" + _json(config)


def network_config(macs: Sequence[str]) -> bytes | None:
    """Netplan-style version 2: DHCPv4 on each NIC, matched by its MAC and
    named eth0, eth1... in the order given (`set-name`); None for a VM
    without NICs.

    Why the names: cloud-init renders an entry under the name it is given
    (its `set-name`, else its key), and renames the guest's interfaces only
    for entries with a `set-name`. Netplan matches by MAC whatever the key,
    but the other renderers do not: ifupdown's `auto nic0` and networkd's
    `[Match] Name=nic0` name an interface that does not exist at first boot
    (the guest has ens2), and the NIC stays down. With a `set-name`
    cloud-init renames the NIC before any renderer sees it, as its own
    fallback configuration does, and as Proxmox's NoCloud seeds (eth0,
    eth1...) do. ethN, because those are the kernel's own names: a guest
    booted with net.ifnames=0 needs no rename at all."""
    if not macs:
        return None
    ethernets = {
        f"eth{index}": {"match": {"macaddress": mac.lower()}, "set-name": f"eth{index}", "dhcp4": True}
        for index, mac in enumerate(macs)
    }
    return _json({"version": 2, "ethernets": ethernets})


def build_iso(files: Iterable[tuple[str, bytes]]) -> bytes:
    """An ISO 9660 volume labelled `cidata` holding `files` (name, content) at
    its root, with Rock Ridge and Joliet names so that the guest reads them
    under their own lower-case names."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, content in files:
            iso_name = "/" + name.upper().replace("-", "_") + ".;1"
            iso.add_fp(io.BytesIO(content), len(content), iso_name, rr_name=name, joliet_path="/" + name)
        out = io.BytesIO()
        iso.write_fp(out)
    except PyCdlibException as error:  # the files are ours: a bug, reported as a disk failure
        raise OSError(f"cannot build the seed ISO: {error}") from error
    finally:
        iso.close()
    return out.getvalue()


def seed_files(
    hostname: str, ssh_keys: Sequence[str], given_user_data: str, macs: Sequence[str], instance_id: str
) -> list[tuple[str, bytes]]:
    """The files of a NoCloud seed, by name."""
    files = [
        ("meta-data", meta_data(hostname, ssh_keys, instance_id)),
        ("user-data", user_data(hostname, ssh_keys, given_user_data)),
    ]
    network = network_config(macs)
    if network is not None:
        files.append(("network-config", network))
    return files


class Seeds:
    """The seeds of one agent, in its disk directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, domain: str) -> Path:
        return self.directory / f"{domain}{SUFFIX}"

    def write(
        self, domain: str, ssh_keys: Sequence[str], given_user_data: str, macs: Sequence[str] = ()
    ) -> Path:
        """The seed of `domain`, replacing any stale one: written whole under a
        temporary name, 0600 (the user data may hold secrets), synced, then
        renamed, so that a crash leaves either no seed or a complete one."""
        instance_id = f"iid-{domain}-{uuid.uuid4().hex[:12]}"
        return self.write_image(
            domain, build_iso(seed_files(domain, ssh_keys, given_user_data, macs, instance_id))
        )

    def write_image(self, domain: str, image: bytes) -> Path:
        """`image` as the seed of `domain` (a migration's target takes its
        source's seed byte for byte: the same instance-id, so cloud-init in
        the guest does not take it for a new instance), written as `write`
        says: a crash leaves no seed or a complete one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f"{PARTIAL}{uuid.uuid4().hex}.iso"
        target = self.path(domain)
        try:
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(image)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target

    def existing(self, domain: str) -> Path | None:
        """The seed of `domain` if it has one."""
        path = self.path(domain)
        return path if path.is_file() else None

    def read(self, domain: str) -> bytes | None:
        """The bytes of the seed of `domain`, None if it has none; OSError
        for one larger than `MAX_SEED_BYTES` (never made by `write`)."""
        try:
            with self.path(domain).open("rb") as handle:
                image = handle.read(MAX_SEED_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(image) > MAX_SEED_BYTES:
            raise OSError(f"the seed of {domain} is larger than {MAX_SEED_BYTES} bytes")
        return image

    def remove(self, domain: str) -> None:
        self.path(domain).unlink(missing_ok=True)

    def remove_leftovers(self, domains: Iterable[str]) -> None:
        """Seeds a crash left: half written ones, and those of no VM in
        `domains` (written, then the crash came before the VM was stored)."""
        keep = {f"{domain}{SUFFIX}" for domain in domains}
        if not self.directory.is_dir():
            return
        for path in self.directory.glob(f"{PARTIAL}*.iso"):
            path.unlink(missing_ok=True)
        for path in self.directory.glob(f"*{SUFFIX}"):
            if path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def image_problem(image: bytes) -> str | None:
    """Why `image` cannot be a seed another host sent, or None: at most
    `MAX_SEED_BYTES`, and an ISO 9660 volume (its magic where it goes)."""
    if len(image) > MAX_SEED_BYTES:
        return f"seed: {len(image)} bytes, at most {MAX_SEED_BYTES}"
    offset, magic = ISO_MAGIC
    if image[offset : offset + len(magic)] != magic:
        return "seed: not an ISO 9660 image"
    return None


def _json(document: object) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
