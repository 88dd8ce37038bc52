"""Disks: a qcow2 overlay per VM, on a base image that must lie inside one
of the configured image directories (anything else is refused).

The overlay lives in the agent's disk directory and goes with the VM. Its
header names the base image's format, found by `qemu-img info`, so that QEMU
never has to guess it. A base image must stand alone: raw or qcow2 only
(`BASE_FORMATS`), and with no backing file and no external data file at
all, wherever they lie. libvirt gives the guest access to the whole chain,
and other formats name further host files too (a vmdk descriptor its
extents), so anything else could open a file outside the image directories
to a guest: flatten such an image first (`qemu-img convert -O qcow2`).
qemu-img runs with an argument list, never through a shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.vm import image_path_problem

__all__ = ["DiskError", "Disks", "image_path_problem"]

#: the only formats a base image may have: neither can name another host file, but for the
#: backing file and data file of a qcow2, which `Disks.image_format` refuses
BASE_FORMATS = frozenset({"raw", "qcow2"})

#: the name an overlay has while it is made for a VM not placed yet (no VM name starts with '.')
PARTIAL = ".partial-"


class DiskError(PinfoldError):
    """`code` is "invalid request" (the image is not allowed) or "disk failed"."""

    def __init__(self, code: ErrorCode | str, detail: str) -> None:
        super().__init__(code, detail)


class Disks:
    def __init__(self, image_dirs: Sequence[Path], disk_dir: Path, qemu_img: str = "qemu-img") -> None:
        self.image_dirs = tuple(Path(d).resolve() for d in image_dirs)
        self.disk_dir = disk_dir
        self.qemu_img = qemu_img

    def base_image(self, image: str) -> Path:
        """The real path of `image` if it is a file inside an image directory.
        Symbolic links are resolved first, so a link cannot lead outside."""
        if not image or "\x00" in image:
            raise DiskError("invalid request", "image: a path is required")
        path = Path(image).resolve()
        if not any(path.is_relative_to(directory) for directory in self.image_dirs):
            raise DiskError("invalid request", f"image {image!r} is not inside an image directory")
        if not path.is_file():
            raise DiskError("invalid request", f"image {image!r} does not exist")
        return path

    def overlay_path(self, name: str) -> Path:
        return self.disk_dir / f"{name}.qcow2"

    def create_overlay(self, name: str, base: Path) -> Path:
        """A qcow2 overlay backed by `base` (replacing a stale one of that name)."""
        overlay = self.overlay_path(name)
        overlay.unlink(missing_ok=True)
        return self._make_overlay(base, overlay)

    def prepare_overlay(self, base: Path) -> Path:
        """An overlay on `base` under a temporary name, made before the agent
        takes its lock (qemu-img reads the base, perhaps on slow storage);
        `adopt_overlay` then gives it its VM's name, in one rename."""
        return self._make_overlay(base, self.disk_dir / f"{PARTIAL}{uuid.uuid4().hex}.qcow2")

    def adopt_overlay(self, name: str, prepared: Path) -> Path:
        """The prepared overlay under `name` (the header names the base, not
        the overlay itself, so a rename is all it takes)."""
        overlay = self.overlay_path(name)
        try:
            os.replace(prepared, overlay)
        except OSError as error:
            raise DiskError("disk failed", f"cannot name the overlay {overlay}: {error}") from error
        return overlay

    def remove_partial_overlays(self) -> None:
        """Overlays prepared for creates that a crash cut short: no VM has them."""
        for path in self.disk_dir.glob(f"{PARTIAL}*.qcow2"):
            path.unlink(missing_ok=True)

    def _make_overlay(self, base: Path, overlay: Path) -> Path:
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        backing_format = self.image_format(base)
        self._qemu_img("create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(base), str(overlay))
        return overlay

    def image_format(self, image: Path) -> str:
        """The format of `image` as qemu-img reads it, once it is known to be
        a base image that stands alone (see the module): "invalid request"
        otherwise. Only base images from the image directories are probed (the
        operator's, not a user's upload); `--force-share` reads the header of
        one that a guest has open too; `--backing-chain` lists every image the
        base would bring with it."""
        answer = self._qemu_img("info", "--backing-chain", "--output=json", "--force-share", str(image))
        try:
            chain = json.loads(answer)
            base = chain[0]
            found = str(base["format"])
            data_file = (base.get("format-specific") or {}).get("data", {}).get("data-file")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            raise DiskError("disk failed", f"qemu-img info {image}: no format in {answer[:200]!r}") from error
        if found not in BASE_FORMATS:
            raise DiskError(
                "invalid request", f"image {str(image)!r} is {found}: base images must be raw or qcow2"
            )
        backing = base.get("full-backing-filename") or base.get("backing-filename")
        if backing or len(chain) > 1:
            raise DiskError(
                "invalid request", f"image {str(image)!r} has a backing file ({backing}): flatten it first"
            )
        if data_file:
            raise DiskError(
                "invalid request",
                f"image {str(image)!r} has an external data file ({data_file}): flatten it first",
            )
        return found

    def _qemu_img(self, *arguments: str) -> str:
        """qemu-img's output; its failure (or its absence) as a DiskError."""
        try:
            result = subprocess.run(
                [self.qemu_img, *arguments], capture_output=True, text=True, timeout=120, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise DiskError("disk failed", f"qemu-img {arguments[0]}: {error}") from error
        if result.returncode != 0:
            raise DiskError(
                "disk failed", result.stderr.strip() or f"qemu-img exited with {result.returncode}"
            )
        return result.stdout

    def remove_overlay(self, name: str) -> None:
        self.overlay_path(name).unlink(missing_ok=True)
