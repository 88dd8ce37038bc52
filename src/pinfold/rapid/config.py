"""RAPID's `configuration.xml` (PROTOCOL.md section 7), read into settings.

The Java VMM reads each key with XPath `//*/<key>` (the first element of that
name anywhere) and gives up silently on the first bad number, leaving later
keys at their defaults. Here every key is read, and a missing or malformed
value stops the agent with a message naming the key; values the Java VMM
tolerated but no peer can use (an announced address of 0.0.0.0, the
OpenStack back-end this agent does not have) are refused too.

How the keys map onto pinfold: `vmmPort`, `vmmIpAddress` and
`vmmMaxConnection` are the RAPID server's port, announced address and worker
count; `dsIpAddress`/`dsPort` where the DS is; `gpuCores`, `availableType`,
`nvidiaSmiPath`, `gpuDeviceNum` what is reported to it; `normalVmImagePath`
and `helperVmImagePath1/2` the base images of user and helper VMs (the agent
makes qcow2 overlays on them instead of RAPID's full copies, so their
directories and `vmImageFolder` become image directories); `ipShellPath` the
fallback for a VM's address. `dataPath` and `vmShellPath` are read and not
used: the agent keeps RAPID's state in its own store.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

__all__ = ["RapidConfig", "RapidConfigError", "read_rapid_config"]


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
    data_path: Path | None = None

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
    if keys.text("openStackSupport", "0") == "1":
        raise RapidConfigError(
            f"{path}: openStackSupport is 1, but this agent drives libvirt (or sim): set it to 0"
        )
    vmm_ip = keys.text("vmmIpAddress", "127.0.0.1")
    try:
        announced = ipaddress.ip_address(vmm_ip)
    except ValueError:
        raise RapidConfigError(f"{path}: vmmIpAddress: {vmm_ip!r} is not an IP address") from None
    if announced.is_unspecified:
        raise RapidConfigError(
            f"{path}: vmmIpAddress: {vmm_ip} is announced to the DS and SLAM: give this host's address"
        )
    available_type = keys.text("availableType", "1000000000")
    if len(available_type) < 10 or not available_type.isdigit():
        raise RapidConfigError(f"{path}: availableType: ten digits expected, not {available_type!r}")
    return RapidConfig(
        vmm_port=keys.number("vmmPort", 9000, 1, 65535),
        max_connections=keys.number("vmmMaxConnection", 100, 1, 10_000),
        vmm_ip=vmm_ip,
        ds_ip=keys.text("dsIpAddress", "127.0.0.1"),
        ds_port=keys.number("dsPort", 9001, 1, 65535),
        gpu_cores=keys.number("gpuCores", 0, 0, 10_000_000),
        available_type=available_type,
        nvidia_smi=keys.text("nvidiaSmiPath", "/usr/bin/nvidia-smi"),
        gpu_device=keys.number("gpuDeviceNum", 0, 0, 1024),
        normal_image=keys.path("normalVmImagePath"),
        helper_images=(keys.path("helperVmImagePath1"), keys.path("helperVmImagePath2")),
        image_folder=keys.path("vmImageFolder"),
        ip_script=keys.path("ipShellPath"),
        data_path=keys.path("dataPath"),
    )


class _Keys:
    """The first element of each name anywhere in the document, as RAPID reads it."""

    def __init__(self, root: ElementTree.Element, path: Path) -> None:
        self._root = root
        self._path = path

    def text(self, key: str, default: str) -> str:
        element = next(self._root.iter(key), None)
        if element is None:
            return default
        return (element.text or "").strip()

    def number(self, key: str, default: int, low: int, high: int) -> int:
        raw = self.text(key, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise RapidConfigError(f"{self._path}: {key}: a whole number expected, not {raw!r}") from None
        if not low <= value <= high:
            raise RapidConfigError(f"{self._path}: {key}: {value} is outside {low}..{high}")
        return value

    def path(self, key: str) -> Path | None:
        raw = self.text(key, "")
        if not raw:
            return None
        path = Path(raw)
        if not path.is_absolute():
            raise RapidConfigError(f"{self._path}: {key}: an absolute path expected, not {raw!r}")
        return path
