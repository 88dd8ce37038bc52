"""RAPID's `configuration.xml` (PROTOCOL.md section 7), read into settings.

The Java VMM reads each key with XPath `//*/<key>` (the first element of that
name anywhere), as done here. It gave up silently on the first missing or bad
number, leaving the later keys at values it then crashed on (`dataPath`);
here every key of section 7 is read and checked, and a bad file stops the
agent with a message naming the file and the key. Per key:

- required (missing: an error), as RAPID's VMM could not run without them:
  `vmmPort`, `vmmMaxConnection`, `vmmIpAddress` (an IP address, not 0.0.0.0:
  peers connect to it), `gpuCores`, `availableType` (ten digits),
  `gpuDeviceNum`, `dataPath`; and RAPID's libvirt keys `normalVmImagePath`,
  `helperVmImagePath1/2`, `vmImageFolder`, `ipShellPath`, which may be left
  empty here (no base image, no fallback script: the agent does without);
- with RAPID's default when missing: `dsIpAddress` (127.0.0.1), `dsPort`
  (9001) (the `<DS>` section is absent from the VMM's shipped file),
  `nvidiaSmiPath` (/usr/bin/nvidia-smi), `openStackSupport` (libvirt, as
  RAPID reads anything but "1"), `vmShellPath` (none);
- the OpenStack keys are read as text (missing: empty, as RAPID) and kept.
  With `openStackSupport` 1, RAPID's VMs are servers of that cloud
  (`pinfold.rapid.openstack_backend`): the keys become `cloud_settings`
  (`pinfold.openstack.settings.from_rapid_keys` says how), those that reach
  Keystone (`authAddress`, `openStackUserId`, `openStackPasswd`,
  `projectId1`) must be given, and the libvirt keys may be left out (RAPID
  read them only in libvirt mode).

How they map onto pinfold: `vmmPort`, `vmmIpAddress` and `vmmMaxConnection`
are the RAPID server's port, announced address and worker count;
`dsIpAddress`/`dsPort` where the DS is; `gpuCores`, `availableType`,
`gpuDeviceNum` what is reported to it, `nvidiaSmiPath` the agent's GPU probe;
`normalVmImagePath` and `helperVmImagePath1/2` the base images of user and
helper VMs (the agent makes qcow2 overlays on them instead of RAPID's full
copies, so their directories and `vmImageFolder` become image directories);
`ipShellPath` the fallback for a VM's address. `dataPath` and `vmShellPath`
are not used: the agent keeps RAPID's state in its own store, and RAPID
never ran the VM-PID script.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from pinfold.openstack.settings import CloudSettings, from_rapid_keys, rapid_image

__all__ = ["OPENSTACK_KEYS", "RapidConfig", "RapidConfigError", "read_rapid_config"]

OPENSTACK_KEYS = (
    "defaultFlavorId", "type2_1024_20FlavorId", "type4_1024_20FlavorId", "linuxNormalVmImageId",
    "linuxHelperVmImageId", "androidNormalVmImageId", "androidHelperVmImageId", "authAddress",
    "openStackUserId", "openStackPasswd", "projectId1", "projectId2", "networkId", "publicKey",
    "offloadingSecurity",
)  # fmt: skip
#: the OpenStack keys without which no token can be had
KEYSTONE_KEYS = ("authAddress", "openStackUserId", "openStackPasswd", "projectId1")


class RapidConfigError(ValueError):
    """A key of configuration.xml that is missing or malformed; names it."""


@dataclass(frozen=True)
class RapidConfig:
    vmm_port: int = 9000
    max_connections: int = 100
    vmm_ip: str = "127.0.0.1"
    ds_ip: str = "127.0.0.1"
    ds_port: int = 9001
    gpu_cores: int = 0
    available_type: str = "1000000000"
    nvidia_smi: str = "/usr/bin/nvidia-smi"
    gpu_device: int = 0
    normal_image: Path | None = None
    helper_images: tuple[Path | None, Path | None] = (None, None)
    image_folder: Path | None = None
    ip_script: Path | None = None
    vm_script: Path | None = None
    data_path: Path | None = None
    #: the OpenStack keys as written (used with `openstack_support`, through `cloud_settings`)
    openstack: dict[str, str] = field(default_factory=dict)
    #: openStackSupport 1: RAPID's VMs are servers of the cloud the OpenStack keys name
    openstack_support: bool = False

    @property
    def cloud_settings(self) -> CloudSettings:
        """The cloud RAPID's OpenStack keys name (see the module)."""
        return from_rapid_keys(self.openstack)

    def user_image(self, os_type: int) -> str:
        """A user VM's base image: `normalVmImagePath`, or on OpenStack the
        Glance image of its osType (`rapid_image`); "" for none."""
        if self.openstack_support:
            return rapid_image(self.cloud_settings.images, helper=False, os_type=os_type)
        return str(self.normal_image or "")

    def helper_image(self, slot: int) -> str:
        """Helper `slot`'s (1, 2) base image: `helperVmImagePath<slot>`, or on
        OpenStack the helpers' Glance image; "" for none."""
        if self.openstack_support:
            return rapid_image(self.cloud_settings.images, helper=True)
        image = self.helper_images[slot - 1]
        return str(image or "")

    @property
    def image_dirs(self) -> tuple[Path, ...]:
        """Directories the agent must accept base images from."""
        paths = [self.normal_image, *self.helper_images]
        dirs = [path.parent for path in paths if path is not None]
        if self.image_folder is not None:
            dirs.append(self.image_folder)
        return tuple(dict.fromkeys(dirs))


def read_rapid_config(path: Path) -> RapidConfig:
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise RapidConfigError(f"{path}: {exc}") from None
    keys = _Keys(root, path)
    openstack = {key: keys.text(key, default="") for key in OPENSTACK_KEYS}
    openstack_support = keys.text("openStackSupport", default="") == "1"
    if openstack_support:
        lacking = [key for key in KEYSTONE_KEYS if not openstack[key]]
        if lacking:
            raise RapidConfigError(
                f"{path}: openStackSupport is 1, but the OpenStack keys lack {', '.join(lacking)} "
                "(Keystone's URL, a user id, its password and a project id)"
            )
    libvirt_default = "" if openstack_support else None  # RAPID read them in libvirt mode only
    vmm_ip = keys.text("vmmIpAddress")
    try:
        announced = ipaddress.ip_address(vmm_ip)
    except ValueError:
        raise RapidConfigError(f"{path}: vmmIpAddress: {vmm_ip!r} is not an IP address") from None
    if announced.is_unspecified:
        raise RapidConfigError(
            f"{path}: vmmIpAddress: {vmm_ip} is announced to the DS and SLAM: give this host's address"
        )
    available_type = keys.text("availableType")
    if len(available_type) < 10 or not available_type.isdigit():
        raise RapidConfigError(f"{path}: availableType: ten digits expected, not {available_type!r}")
    ds_ip = keys.text("dsIpAddress", default="127.0.0.1")
    if not ds_ip:
        raise RapidConfigError(f"{path}: dsIpAddress: empty (leave the key out for 127.0.0.1)")
    data_path = keys.path("dataPath")
    if data_path is None:
        raise RapidConfigError(f"{path}: dataPath: empty: RAPID's VMM needs a directory there")
    return RapidConfig(
        vmm_port=keys.number("vmmPort", 1, 65535),
        max_connections=keys.number("vmmMaxConnection", 1, 10_000),
        vmm_ip=vmm_ip,
        ds_ip=ds_ip,
        ds_port=keys.number("dsPort", 1, 65535, default=9001),
        gpu_cores=keys.number("gpuCores", 0, 10_000_000),
        available_type=available_type,
        nvidia_smi=keys.text("nvidiaSmiPath", default="") or "/usr/bin/nvidia-smi",
        gpu_device=keys.number("gpuDeviceNum", 0, 1024),
        normal_image=keys.path("normalVmImagePath", libvirt_default),
        helper_images=(
            keys.path("helperVmImagePath1", libvirt_default),
            keys.path("helperVmImagePath2", libvirt_default),
        ),
        image_folder=keys.path("vmImageFolder", libvirt_default),
        ip_script=keys.path("ipShellPath", libvirt_default),
        vm_script=keys.path("vmShellPath", default=""),
        data_path=data_path,
        openstack=openstack,
        openstack_support=openstack_support,
    )


class _Keys:
    """The first element of each name anywhere in the document, as RAPID
    reads it; a key without a default must be there."""

    def __init__(self, root: ElementTree.Element, path: Path) -> None:
        self._root = root
        self._path = path

    def text(self, key: str, default: str | None = None) -> str:
        element = next(self._root.iter(key), None)
        if element is not None:
            return (element.text or "").strip()
        if default is None:
            raise RapidConfigError(f"{self._path}: {key}: missing (RAPID's VMM needs it)")
        return default

    def number(self, key: str, low: int, high: int, default: int | None = None) -> int:
        raw = self.text(key, None if default is None else str(default))
        try:
            value = int(raw)
        except ValueError:
            raise RapidConfigError(f"{self._path}: {key}: a whole number expected, not {raw!r}") from None
        if not low <= value <= high:
            raise RapidConfigError(f"{self._path}: {key}: {value} is outside {low}..{high}")
        return value

    def path(self, key: str, default: str | None = None) -> Path | None:
        """An absolute path, or None for an empty value."""
        raw = self.text(key, default)
        if not raw:
            return None
        path = Path(raw)
        if not path.is_absolute():
            raise RapidConfigError(f"{self._path}: {key}: an absolute path expected, not {raw!r}")
        return path
