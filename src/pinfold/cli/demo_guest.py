"""A tiny guest: busybox as /init in a newc cpio archive, booted directly with
Debian's cloud kernel. The tests boot it, and `pinfold up` boots it as its demo
guest (`demo_guest`: the kernel fetched into DATA_DIR as scripts/guest-kernel
does, the command line `net shell`: an address by DHCP, a page on NET_PORT and a
shell on the serial console).

The init script mounts /proc, prints a marker on the serial console, then
loops; `burn` on the kernel command line makes it spin one CPU instead, and
`deaf` makes it ignore the ACPI power button, and `tick` makes it print TICK
and a count every 20 ms (to tell when a resumed guest runs again, and that a
migrated guest goes on counting where it was).
Given the kernel's ACPI button and evdev modules, it also runs busybox's acpid,
which powers the guest off when libvirt presses the ACPI power button, so that
a graceful shutdown can be told from a forced one by the POWEROFF marker.

`net` on the command line (a word of its own; guests without it are unchanged)
loads the virtio-net modules, takes an address by DHCP (udhcpc), serves a page
naming that address with busybox httpd on NET_PORT, and prints NET_ADDRESS and
the address on the serial console once the page is served; `netfetch=ADDRESS`
then makes it fetch another guest's page and print NET_FETCHED and its body.

`cidata` on the command line (a word of its own; guests without it are
unchanged) loads the IDE CD-ROM and ISO 9660 modules, waits for /dev/sr0,
prints CIDATA_DEVICE and the device, CIDATA_LABEL and the volume label read
off it (busybox-static has no blkid), mounts it and
prints each line of its meta-data and user-data after CIDATA_META and
CIDATA_USER: what cloud-init would find on the NoCloud seed.
`net6` (with `net`; only in an initramfs built with a DHCPv6 client, whose init
alone has this step: other guests' archives are byte for byte as before) waits for
eth0's link-local address, takes an IPv6 address by DHCPv6 with ISC dhclient (busybox
has no udhcpc6, in busybox-static nor in Debian's busybox: checked), and prints
NET6_ADDRESS and that address; httpd serves its page on IPv6 too.
`shell` (a word of its own; guests without it are unchanged) prints SHELL_MARKER
and runs busybox's shell on the serial console (ttyS0), again whenever it exits,
for the console tests to type into.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

MARKER = "pinfold-guest-up"
TICK = "pinfold-guest-tick"
POWEROFF_MARKER = "pinfold-guest-poweroff"
MODULES = ("kernel/drivers/acpi/button.ko", "kernel/drivers/input/evdev.ko")
NET_ADDRESS = "pinfold-guest-address"
NET_FETCHED = "pinfold-guest-fetched"
NET_PAGE = "pinfold-guest-page"
NET_PORT = 8080
SHELL_MARKER = "pinfold-guest-shell"
# In this order: each needs the symbols of those before it ("unknown symbol" otherwise).
NET_MODULES = (
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
)
NET_MODULE_NAMES = " ".join(Path(m).stem for m in NET_MODULES)
CIDATA_DEVICE = "pinfold-guest-cidata-device"
CIDATA_LABEL = "pinfold-guest-cidata-label"
CIDATA_META = "pinfold-guest-cidata-meta"
CIDATA_USER = "pinfold-guest-cidata-user"
CIDATA_DONE = "pinfold-guest-cidata-done"
# The PIIX IDE controller of machine type pc (ata_piix: the cloud kernel has no AHCI),
# the SCSI CD-ROM driver on top and ISO 9660; in this order, as for NET_MODULES.
CIDATA_MODULES = (
    "kernel/drivers/scsi/scsi_common.ko",
    "kernel/drivers/scsi/scsi_mod.ko",
    "kernel/drivers/cdrom/cdrom.ko",
    "kernel/drivers/scsi/sr_mod.ko",
    "kernel/drivers/ata/libata.ko",
    "kernel/drivers/ata/ata_piix.ko",
    "kernel/fs/isofs/isofs.ko",
)
CIDATA_MODULE_NAMES = " ".join(Path(m).stem for m in CIDATA_MODULES)

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
if /bin/busybox grep -qE '(^| )net( |$)' /proc/cmdline; then
    for module in {NET_MODULE_NAMES}; do
        /bin/busybox insmod /lib/modules/net/$module.ko
    done
    /bin/busybox ifconfig lo 127.0.0.1 up
    /bin/busybox ifconfig eth0 up
    /bin/busybox udhcpc -i eth0 -s /etc/udhcpc.sh -q -T 1 -A 1
    address=$(/bin/busybox cat /etc/address)
    /bin/busybox mkdir -p /www
    echo "{NET_PAGE} $address" > /www/index.html
    /bin/busybox httpd -p {NET_PORT} -h /www
    echo "{NET_ADDRESS} $address"
    fetch=$(/bin/busybox sed -n 's/.*netfetch=\\([0-9.]*\\).*/\\1/p' /proc/cmdline)
    if [ -n "$fetch" ]; then
        until page=$(/bin/busybox wget -q -O - "http://$fetch:{NET_PORT}/"); do /bin/busybox sleep 1; done
        echo "{NET_FETCHED} $page"
    fi
fi
if /bin/busybox grep -qE '(^| )cidata( |$)' /proc/cmdline; then
    for module in {CIDATA_MODULE_NAMES}; do
        /bin/busybox insmod /lib/modules/cidata/$module.ko
    done
    tries=0
    until [ -b /dev/sr0 ] || [ $tries -ge 300 ]; do /bin/busybox usleep 100000; tries=$((tries + 1)); done
    echo "{CIDATA_DEVICE} $(/bin/busybox ls /dev/sr0)"
    # the volume identifier: 32 bytes at offset 40 of the primary volume descriptor (sector 16)
    label=$(/bin/busybox dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null \\
        | /bin/busybox dd bs=1 skip=40 count=32 2>/dev/null | /bin/busybox sed 's/ *$//')
    echo "{CIDATA_LABEL} $label"
    /bin/busybox mkdir -p /cidata
    /bin/busybox mount -t iso9660 -o ro /dev/sr0 /cidata
    /bin/busybox sed 's/^/{CIDATA_META} /' /cidata/meta-data
    /bin/busybox sed 's/^/{CIDATA_USER} /' /cidata/user-data
    echo {CIDATA_DONE}
fi
if /bin/busybox grep -qE '(^| )shell( |$)' /proc/cmdline; then
    echo {SHELL_MARKER}
    while :; do /bin/busybox sh < /dev/ttyS0 > /dev/ttyS0 2>&1; done
fi
if /bin/busybox grep -q burn /proc/cmdline; then
    while :; do :; done
fi
if /bin/busybox grep -q tick /proc/cmdline; then
    n=0
    while :; do n=$((n + 1)); echo "{TICK} $n"; /bin/busybox usleep 20000; done
fi
while :; do /bin/busybox sleep 1; done
"""


NET6_ADDRESS = "pinfold-guest-address6"
# Inserted before the cidata step in a `net6` initramfs only (see build_initramfs).
NET6_STEP = f"""if /bin/busybox grep -qE '(^| )net6( |$)' /proc/cmdline; then
    tries=0
    until /bin/busybox ip -6 addr show dev eth0 scope link | /bin/busybox grep -q inet6 \\
        && ! /bin/busybox ip -6 addr show dev eth0 | /bin/busybox grep -q tentative \\
        || [ $tries -ge 100 ]; do /bin/busybox usleep 100000; tries=$((tries + 1)); done
    /sbin/dhclient -6 -1 -cf /dev/null --address-prefix-len 64 -sf /etc/dhclient6.sh \\
        -lf /tmp/dhclient6.leases -pf /tmp/dhclient6.pid eth0
    echo "{NET6_ADDRESS} $(/bin/busybox cat /etc/address6)"
fi
"""
CIDATA_STEP = "if /bin/busybox grep -qE '(^| )cidata( |$)' /proc/cmdline; then\n"
# dhclient's script: it is run with $reason and the lease in new_ip6_* variables.
DHCLIENT6_SCRIPT = """#!/bin/busybox sh
case "$reason" in
    BOUND6|RENEW6|REBIND6|REBOOT6)
        /bin/busybox ip -6 addr add "$new_ip6_address/$new_ip6_prefixlen" dev "$interface"
        echo "$new_ip6_address" > /etc/address6
        ;;
esac
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


# udhcpc has no default script: configure the lease's address (and route, where the
# network offers a router: isolated networks do not) and note the address for init.
UDHCPC_SCRIPT = """#!/bin/busybox sh
case "$1" in
    bound|renew)
        /bin/busybox ifconfig "$interface" "$ip" netmask "$subnet"
        for gateway in $router; do
            /bin/busybox route add default gw "$gateway" dev "$interface"
            break
        done
        echo "$ip" > /etc/address
        ;;
    deconfig)
        /bin/busybox ifconfig "$interface" 0.0.0.0
        ;;
esac
"""


def build_initramfs(
    busybox: Path, out: Path, modules_dir: Path | None = None, dhcp6_client: Path | None = None
) -> Path:
    """Write an uncompressed newc archive holding /init and /bin/busybox, and,
    given the guest kernel's module tree, the modules and the power-button
    handler of acpid (busybox's acpid runs /etc/acpi/PWRF/00000080), and the
    virtio-net modules and udhcpc script of the `net` guests, and the CD-ROM
    modules of the `cidata` guests; given `dhcp6_client` (ISC dhclient), the
    `net6` step, dhclient with its C library and loader, and its script."""
    init = INIT if dhcp6_client is None else INIT.replace(CIDATA_STEP, NET6_STEP + CIDATA_STEP, 1)
    entries = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, init.encode()),
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
            # under lib/modules/net: the loop over lib/modules/*.ko must not load them
            ("lib/modules/net", stat.S_IFDIR | 0o755, b""),
            *(
                (f"lib/modules/net/{Path(m).name}", stat.S_IFREG | 0o644, (modules_dir / m).read_bytes())
                for m in NET_MODULES
            ),
            ("etc/udhcpc.sh", stat.S_IFREG | 0o755, UDHCPC_SCRIPT.encode()),
            # under lib/modules/cidata, loaded only by the `cidata` guests, as the net ones
            ("lib/modules/cidata", stat.S_IFDIR | 0o755, b""),
            *(
                (f"lib/modules/cidata/{Path(m).name}", stat.S_IFREG | 0o644, (modules_dir / m).read_bytes())
                for m in CIDATA_MODULES
            ),
        ]
    if dhcp6_client is not None:
        entries += _dhcp6_entries(dhcp6_client)
    archive = b"".join(_newc_entry(name, mode, data, i + 1) for i, (name, mode, data) in enumerate(entries))
    archive += _newc_entry("TRAILER!!!", 0, b"", 0)
    out.write_bytes(archive)
    return out


def _dhcp6_entries(dhclient: Path) -> list[tuple[str, int, bytes]]:
    """dhclient as /sbin/dhclient, the shared libraries `ldd` names for it at
    the paths it names, /tmp for its lease and PID files, and its script."""
    listed = _run(["ldd", str(dhclient)])
    if listed.returncode != 0:
        raise GuestBuildError(f"ldd {dhclient}: {listed.stderr.strip()}")
    libraries = sorted({Path(word) for word in listed.stdout.split() if word.startswith("/")})
    directories = sorted(
        {str(parent) for lib in libraries for parent in lib.relative_to("/").parents} - {"."}
    )
    return [
        ("sbin", stat.S_IFDIR | 0o755, b""),
        ("sbin/dhclient", stat.S_IFREG | 0o755, dhclient.read_bytes()),
        ("tmp", stat.S_IFDIR | 0o1777, b""),
        *((directory, stat.S_IFDIR | 0o755, b"") for directory in directories),
        *((str(lib.relative_to("/")), stat.S_IFREG | 0o755, lib.resolve().read_bytes()) for lib in libraries),
        ("etc", stat.S_IFDIR | 0o755, b""),  # again where the modules made it: the kernel takes both
        ("etc/dhclient6.sh", stat.S_IFREG | 0o755, DHCLIENT6_SCRIPT.encode()),
    ]


#: the demo guest's command line: the serial console, DHCP and the page, a shell on the console
DEMO_CMDLINE = "console=ttyS0 panic=-1 net shell"
KERNEL_PACKAGE = "linux-image-cloud-amd64"


class GuestBuildError(RuntimeError):
    """The demo guest cannot be built here; says what is missing and the way out."""


@dataclass(frozen=True)
class DemoGuest:
    """What the agent boots its VMs from: `kernel`, `initrd` and `cmdline` (its settings)."""

    kernel: Path
    initrd: Path
    cmdline: str = DEMO_CMDLINE


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except OSError as exc:
        raise GuestBuildError(f"{argv[0]}: {exc}") from None


def _kernel_package() -> str:
    """The versioned image package the cloud meta package depends on (what
    `apt-cache depends linux-image-cloud-amd64` names first)."""
    for line in _run(["apt-cache", "depends", KERNEL_PACKAGE]).stdout.splitlines():
        name = line.strip().removeprefix("Depends: ")
        if name != line.strip() and name.startswith("linux-image-") and name[len("linux-image-")].isdigit():
            return name
    raise GuestBuildError(f"apt-cache cannot resolve {KERNEL_PACKAGE} (run apt-get update as root)")


def fetch_kernel(cache: Path) -> Path:
    """Debian's cloud kernel unpacked under `cache` (boot/vmlinuz-*, lib/modules/*),
    fetched once as scripts/guest-kernel does: `apt-get download` of the package and
    `dpkg-deb -x`, nothing installed. Its path."""
    existing = sorted(cache.glob("boot/vmlinuz-*"))
    if existing:
        return existing[0]
    if shutil.which("apt-get") is None:
        raise GuestBuildError("no apt-get to fetch Debian's cloud kernel: boot a cloud image (--image)")
    cache.mkdir(parents=True, exist_ok=True)
    package = _kernel_package()
    downloaded = _run(["apt-get", "download", "-q", package], cwd=cache)
    if downloaded.returncode != 0:
        raise GuestBuildError(f"apt-get download {package}: {downloaded.stderr.strip()}")
    for deb in cache.glob(f"{package}_*.deb"):
        unpacked = _run(["dpkg-deb", "-x", str(deb), str(cache)])
        deb.unlink()
        if unpacked.returncode != 0:
            raise GuestBuildError(f"dpkg-deb -x {deb.name}: {unpacked.stderr.strip()}")
    found = sorted(cache.glob("boot/vmlinuz-*"))
    if not found:
        raise GuestBuildError(f"{package} held no boot/vmlinuz-*")
    return found[0]


def modules_of(kernel: Path) -> Path:
    """The module tree beside an unpacked kernel: vmlinuz-<release> sits in
    <root>/boot, its modules in <root>/lib/modules/<release>."""
    release = kernel.name.removeprefix("vmlinuz-")
    return kernel.parent.parent / "lib" / "modules" / release


def demo_guest(data_dir: Path, kernel_cache: Path | None = None) -> DemoGuest:
    """The demo guest of `pinfold up`: the kernel in DATA_DIR/guest-kernel (or
    `kernel_cache`; fetched on first use), the initramfs DATA_DIR/demo-initramfs.cpio
    built from the host's busybox (busybox-static: nothing else to load) and that
    kernel's modules, again on each start (it takes a second)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise GuestBuildError("busybox is not installed (apt-get install busybox-static), or boot --image")
    kernel = fetch_kernel(kernel_cache or data_dir / "guest-kernel")
    initrd = build_initramfs(Path(busybox), data_dir / "demo-initramfs.cpio", modules_of(kernel))
    return DemoGuest(kernel, initrd)
