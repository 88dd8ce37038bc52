"""A tiny guest for the tests: busybox as /init in a newc cpio archive.

The init script mounts /proc, prints a marker on the serial console, then
loops; `burn` on the kernel command line makes it spin one CPU instead, and
`deaf` makes it ignore the ACPI power button, and `tick` makes it print TICK
every 20 ms (to tell when a resumed guest runs again).
Given the kernel's ACPI button and evdev modules, it also runs busybox's acpid,
which powers the guest off when libvirt presses the ACPI power button, so that
a graceful shutdown can be told from a forced one by the POWEROFF marker.
"""

from __future__ import annotations

import stat
from pathlib import Path

MARKER = "pinfold-guest-up"
TICK = "pinfold-guest-tick"
POWEROFF_MARKER = "pinfold-guest-poweroff"
MODULES = ("kernel/drivers/acpi/button.ko", "kernel/drivers/input/evdev.ko")

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for module in /lib/modules/*.ko; do
    [ -e "$module" ] && /bin/busybox insmod "$module"
done
if [ -e /lib/modules/button.ko ] && ! /bin/busybox grep -q deaf /proc/cmdline; then
    /bin/busybox sleep 1
    /bin/busybox acpid -c /etc/acpi -l /dev/null
fi
echo {MARKER}
if /bin/busybox grep -q burn /proc/cmdline; then
    while :; do :; done
fi
if /bin/busybox grep -q tick /proc/cmdline; then
    while :; do echo {TICK}; /bin/busybox usleep 20000; done
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


POWER_BUTTON_HANDLER = f"""#!/bin/busybox sh
echo {POWEROFF_MARKER} > /dev/console
/bin/busybox poweroff -f
"""


def build_initramfs(busybox: Path, out: Path, modules_dir: Path | None = None) -> Path:
    """Write an uncompressed newc archive holding /init and /bin/busybox, and,
    given the guest kernel's module tree, the modules and the power-button
    handler of acpid (busybox's acpid runs /etc/acpi/PWRF/00000080)."""
    entries = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT.encode()),
    ]
    if modules_dir is not None:
        entries += [
            ("lib", stat.S_IFDIR | 0o755, b""),
            ("lib/modules", stat.S_IFDIR | 0o755, b""),
            *(
                (f"lib/modules/{Path(m).name}", stat.S_IFREG | 0o644, (modules_dir / m).read_bytes())
                for m in MODULES
            ),
            ("etc", stat.S_IFDIR | 0o755, b""),
            ("etc/acpi", stat.S_IFDIR | 0o755, b""),
            ("etc/acpi/PWRF", stat.S_IFDIR | 0o755, b""),
            ("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755, POWER_BUTTON_HANDLER.encode()),
        ]
    archive = b"".join(_newc_entry(name, mode, data, i + 1) for i, (name, mode, data) in enumerate(entries))
    archive += _newc_entry("TRAILER!!!", 0, b"", 0)
    out.write_bytes(archive)
    return out
