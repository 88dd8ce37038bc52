"""A VM as pinfold's shells ask for it: the name rule, the bounds of its
sizes at the edges (REST, SlackVM's query strings), the shape of a base
image path, and `VMRequest`, the request the agent and the controller act on.

The rules live here, below the agent and the controller, so that both judge
a request the same way without one importing the other (tests/test_layers.py).

One request, and the other descriptions of a VM, each for a reason:

- `VMRequest` (here): the VM asked for, and all that both shells take: the
  agent's `Agent.create`, the controller's `Controller.create` and its store's
  `reserve`, and `AgentClient.create`, which sends it on to an agent.
- `pinfold.bodies.CreateVM`: the JSON body of `POST /api/v1/vms` in both
  APIs, bounded by the constants below, with `to_request()`; the
  controller's subclass adds `policy` (how to place it, not part of the VM).
  `pinfold.slackvm.Deploy` is SlackVM's `/deploy` query in the same role.
- `pinfold.placement.VMSpec`: what the placement core places (name, sizes,
  level); the core sits below this package and knows no owner or image, so
  it keeps its own type (`VMRequest.spec`).
- `pinfold.agent.store.StoredVM`: the agent's row: the spec with owner and
  image, its state, the operation under way, its domain's name (a warm-pool
  VM keeps its member's) and its pool (`StoredVM.request`).
- `pinfold.controller.store.VMRecord`: the controller's row: the request's
  fields with the host, the reservation order, state, detail and times
  (`VMRecord.request`, what a stale reservation's agent is asked to create).
- `pinfold.agent.domain.DomainSpec`: the driver's input, in the hypervisor's
  terms: the domain's name, the CPUs it is pinned to, its disk overlay and
  how it boots, made by the agent from a `StoredVM` and its allocator.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pinfold.placement import VMSpec

__all__ = [
    "MAX_BULK",
    "MAX_IMAGE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_NICS",
    "MAX_NIC_ADDRESSES",
    "MAX_OWNER_LENGTH",
    "MAX_RATIO",
    "MAX_SSH_KEYS",
    "MAX_SSH_KEY_LENGTH",
    "MAX_USER_DATA_BYTES",
    "MAX_VCPUS",
    "MAX_VM_MEMORY_MIB",
    "NAME_PATTERN",
    "NIC",
    "SSH_KEY_TYPES",
    "VMRequest",
    "first_boot_digest",
    "first_boot_problem",
    "image_path_problem",
    "nic_problem",
    "same_first_boot",
    "ssh_key_problem",
    "valid_name",
]

# Names become file names (disk overlays) and appear in logs: keep them plain.
#: The one definition of a valid VM name; the HTTP layers validate with it too.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
#: the bounds a request's fields are checked against at every edge (far above a real VM)
MAX_NAME_LENGTH = 63
MAX_VCPUS = 1024
MAX_VM_MEMORY_MIB = 64 * 1024 * 1024
MAX_RATIO = 64.0
MAX_OWNER_LENGTH = 128
MAX_IMAGE_LENGTH = 4096
#: NICs one VM may have (a PCI bus holds many more; a request with more is a mistake)
MAX_NICS = 8
#: addresses a NIC shows (a heartbeat carries, the controller keeps): the first ones, IPv4 first
MAX_NIC_ADDRESSES = 16
#: a libvirt network's name as pinfold accepts it (the same plain characters as a VM's)
NETWORK_PATTERN = NAME_PATTERN
#: a Linux interface name (a host bridge): at most 15 characters, no '/' or blank
BRIDGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"
#: six octets, colon-separated (any case; stored lower-case)
MAC_PATTERN = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"

#: cloud-init's inputs: a few keys, each one line (an RSA key of 16384 bits is ~2.8 KiB),
#: and user data of at most 64 KiB in UTF-8 (the NoCloud seed is made in memory)
MAX_SSH_KEYS = 32
MAX_SSH_KEY_LENGTH = 8192
MAX_USER_DATA_BYTES = 64 * 1024
#: the most VMs one bulk create may ask for (POST /api/v1/vms with count or names)
MAX_BULK = 1000
#: the public key types OpenSSH accepts today (DSA is gone from it)
SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


def valid_name(name: str) -> bool:
    """1-63 characters of letters, digits, '.', '_' and '-', starting with a
    letter or digit: safe as a libvirt name and a file name."""
    return bool(_NAME.fullmatch(name))


def image_path_problem(image: str) -> str | None:
    """Why `image`, as a request names a base image, cannot be one on any
    host, or None. Only its shape is judged (no file is looked at): an
    absolute path, with no NUL and no '.', '..' or empty part, so that a path
    means one file whatever the agent's working directory, and one file is
    named one way (a create sent again compares the image as written)."""
    if "\x00" in image:
        return "image: a path has no NUL character"
    if not image.startswith("/"):
        return f"image {image[:200]!r}: an absolute path is required"
    for part in image.split("/")[1:]:
        if part in ("", ".", ".."):
            return f"image {image[:200]!r}: no {part!r} part in the path (name the file itself)"
    return None


def ssh_key_problem(key: str) -> str | None:
    """Why `key` is not one SSH public key line ("TYPE BASE64 [COMMENT]", no
    authorized_keys options), or None. The blob must decode and name its own
    type first, as OpenSSH's do, so that a pasted private key, a truncated
    line or a key of another type is refused here rather than in the guest."""
    shown = key[:60]
    if len(key) > MAX_SSH_KEY_LENGTH:
        return f"ssh key {shown!r}...: longer than {MAX_SSH_KEY_LENGTH} characters"
    if not key.isprintable():
        return f"ssh key {shown!r}: one line of printable characters"
    fields = key.split(maxsplit=2)
    if len(fields) < 2 or fields[0] not in SSH_KEY_TYPES:
        return f"ssh key {shown!r}: a public key line starting with one of {', '.join(sorted(SSH_KEY_TYPES))}"
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return f"ssh key {shown!r}: its key is not base64"
    kind = fields[0].encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4 : 4 + len(kind)] != kind:
        return f"ssh key {shown!r}: its key is not a {fields[0]} key"
    return None


def first_boot_problem(ssh_keys: Sequence[str], user_data: str) -> str | None:
    """Why the SSH keys or the user data cannot go into a VM's cloud-init
    seed, or None: at most `MAX_SSH_KEYS` keys, each `ssh_key_problem`-free,
    and user data of at most `MAX_USER_DATA_BYTES` in UTF-8."""
    if len(ssh_keys) > MAX_SSH_KEYS:
        return f"ssh_keys: at most {MAX_SSH_KEYS} keys, not {len(ssh_keys)}"
    for key in ssh_keys:
        problem = ssh_key_problem(key)
        if problem is not None:
            return problem
    try:
        size = len(user_data.encode("utf-8"))
    except UnicodeEncodeError:
        return "user_data: not valid UTF-8 text"
    if size > MAX_USER_DATA_BYTES:
        return f"user_data: {size} bytes, at most {MAX_USER_DATA_BYTES} (UTF-8)"
    return None


#: the scheme of a stored `first_boot_digest`: salted SHA-256 (the salt is in the digest)
FIRST_BOOT_SCHEME = "s256"
_SALT_BYTES = 16


def first_boot_digest(ssh_keys: Sequence[str], user_data: str, salt: bytes | None = None) -> str:
    """What a create's SSH keys and user data are remembered by, so that the
    same create sent again can be told from another one under the same name
    without keeping the inputs (user data may hold passwords or tokens):
    "s256$<salt hex>$<SHA-256 hex of the salt and the canonical inputs>".

    Canonical: JSON of the keys sorted (cloud-init gives the same accounts
    whatever their order) and the user data as given, UTF-8. Salted with 16
    random bytes per VM (`salt`, given only to check one: `same_first_boot`),
    not keyed: two VMs with the same user data have unrelated digests, and no
    table of digests of known user data matches one, while every controller
    replica checks it with nothing but the row (a key would have to be shared
    by every replica, kept apart from the database, and never rotated). A
    guess of one VM's user data can still be checked against its row; the
    database also holds the agents' tokens, and is to be kept as secret."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    canonical = json.dumps(
        {"ssh_keys": sorted(ssh_keys), "user_data": user_data}, sort_keys=True, separators=(",", ":"),
        ensure_ascii=False,
    )  # fmt: skip
    hashed = hashlib.sha256(salt + canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{FIRST_BOOT_SCHEME}${salt.hex()}${hashed}"


def same_first_boot(stored: str | None, ssh_keys: Sequence[str], user_data: str) -> bool:
    """Whether `ssh_keys` and `user_data` are those `stored` (a
    `first_boot_digest`) was made of; True for None: a VM reserved before
    the digest was kept (migration 0009), whose inputs nobody knows."""
    if stored is None:
        return True
    scheme, _, rest = stored.partition("$")
    salt_hex, _, _ = rest.partition("$")
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != FIRST_BOOT_SCHEME:
        return False
    return hmac.compare_digest(stored, first_boot_digest(ssh_keys, user_data, salt))


@dataclass(frozen=True)
class NIC:
    """One virtio NIC: on a libvirt network (`network`) or a host bridge
    (`bridge`), exactly one of the two; `mac` "" lets the agent choose one
    (then kept for the VM's life)."""

    network: str = ""
    bridge: str = ""
    mac: str = ""

    @property
    def kind(self) -> str:
        """libvirt's interface type: "network" or "bridge"."""
        return "bridge" if self.bridge else "network"

    @property
    def source(self) -> str:
        """The network's or the bridge's name."""
        return self.bridge or self.network


def nic_problem(nic: NIC) -> str | None:
    """Why `nic` cannot be a NIC on any host, or None: exactly one of network
    and bridge, each a plain name, and a MAC (when given) of six octets that
    is unicast (a multicast source address is refused by every switch). A
    locally administered MAC is fine (QEMU's own 52:54:00 range is one)."""
    if bool(nic.network) == bool(nic.bridge):
        return "nic: name exactly one of network and bridge"
    if nic.network and not re.fullmatch(NETWORK_PATTERN, nic.network):
        return f"nic network {nic.network[:80]!r}: use 1-63 letters, digits, '.', '_', '-'"
    if nic.bridge and not re.fullmatch(BRIDGE_PATTERN, nic.bridge):
        return f"nic bridge {nic.bridge[:80]!r}: an interface name of 1-15 letters, digits, '.', '_', '-'"
    if nic.mac:
        if not re.fullmatch(MAC_PATTERN, nic.mac):
            return f"nic mac {nic.mac[:80]!r}: six hexadecimal octets separated by ':'"
        if int(nic.mac[:2], 16) & 1:
            return f"nic mac {nic.mac}: a multicast address (the first octet is odd), not a NIC's"
    return None


@dataclass(frozen=True)
class VMRequest:
    """A VM to create: its sizes, oversubscription level, owner and base image
    ("" for a diskless guest); `spec` is the placement core's view of it.
    `nics` are its network interfaces (none: the agent's default network's,
    if it has one); `ssh_keys` and `user_data` go into the VM's cloud-init
    seed (the agent's `seed` module; `first_boot_problem` judges them)."""

    name: str
    vcpus: int
    memory_mib: int
    ratio: float = 1.0
    owner: str = ""
    image: str = ""
    nics: tuple[NIC, ...] = ()
    ssh_keys: tuple[str, ...] = ()
    user_data: str = ""

    @property
    def spec(self) -> VMSpec:
        """What the placement core places: the sizes and the level (a float, whatever was given)."""
        return VMSpec(self.name, self.vcpus, self.memory_mib, float(self.ratio))
