"""A tiny guest for the tests: busybox as /init in a newc cpio archive.

The init script mounts /proc, prints a marker on the serial console, then
loops; `burn` on the kernel command line makes it spin one CPU instead.
"""

from __future__ import annotations

import stat
from pathlib import Path

MARKER = "pinfold-guest-up"

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo {MARKER}
if /bin/busybox grep -q burn /proc/cmdline; then
    while :; do :; done
fi
while :; do /bin/busybox sleep 1; done
"""


def _newc_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    header = b"070701" + b"".join(f"{value:08X}".encode() for value in fields)
    body = header + name.encode() + b"\0"
    body += b"\0" * (-len(body) % 4)
    body += data
    body += b"\0" * (-len(body) % 4)
    return body


def build_initramfs(busybox: Path, out: Path) -> Path:
    """Write an uncompressed newc archive holding /init and /bin/busybox."""
    entries = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT.encode()),
    ]
    archive = b"".join(_newc_entry(name, mode, data, i + 1) for i, (name, mode, data) in enumerate(entries))
    archive += _newc_entry("TRAILER!!!", 0, b"", 0)
    out.write_bytes(archive)
    return out
