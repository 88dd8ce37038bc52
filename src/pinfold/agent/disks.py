"""Disks: a qcow2 overlay per VM, on a base image that must lie inside one
of the configured image directories (anything else is refused).

The overlay lives in the agent's disk directory and goes with the VM. qemu-img
runs with an argument list, never through a shell.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DiskError", "Disks"]


class DiskError(Exception):
    """`code` is "invalid request" (the image is not allowed) or "disk failed"."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


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
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        overlay = self.overlay_path(name)
        overlay.unlink(missing_ok=True)
        command = [self.qemu_img, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise DiskError(
                "disk failed", result.stderr.strip() or f"qemu-img exited with {result.returncode}"
            )
        return overlay

    def remove_overlay(self, name: str) -> None:
        self.overlay_path(name).unlink(missing_ok=True)
