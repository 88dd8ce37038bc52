"""Fixtures for the agent: libvirt connections, a real test guest (Debian's
cloud kernel booted directly with a busybox initramfs built here), and a real
Debian 12 cloud image with cloud-init (scripts/cloud-image, built once per machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.agent.guest import build_initramfs

ROOT = Path(__file__).resolve().parents[2]
REQUIRE_LIBVIRT = os.environ.get("PINFOLD_REQUIRE_LIBVIRT") == "1"


def libvirt_or_skip(uri: str) -> object:
    """A libvirt connection, or a skip where libvirt is not installed (a
    failure in CI, which sets PINFOLD_REQUIRE_LIBVIRT=1)."""
    try:
        import libvirt
    except ImportError:
        if REQUIRE_LIBVIRT:
            raise
        pytest.skip("libvirt-python is not installed")
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError:
        if REQUIRE_LIBVIRT:
            raise
        pytest.skip(f"{uri} does not answer")


def qemu_img_or_skip() -> None:
    """Skip where qemu-img is not installed (a failure in CI, which sets
    PINFOLD_REQUIRE_LIBVIRT=1)."""
    if shutil.which("qemu-img") is None:
        if REQUIRE_LIBVIRT:
            pytest.fail("qemu-img is missing: scripts/libvirt-up installs qemu-utils")
        pytest.skip("qemu-img is not installed")


def script_path(script: str, what: str, timeout_s: float) -> Path:
    """The path a script of scripts/ prints on its last line (it fetches or
    builds a file, cached); the test fails with its stderr when it fails."""
    result = subprocess.run(
        [str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"cannot {what}: {result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get to fetch the guest kernel")
    return script_path("guest-kernel", "fetch the guest kernel", 600)


@pytest.fixture(scope="session")
def guest_initramfs(guest_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        if REQUIRE_LIBVIRT:
            pytest.fail("busybox is missing: scripts/libvirt-up installs busybox-static")
        pytest.skip("busybox is not installed")
    # vmlinuz-<release> sits in <root>/boot, its modules in <root>/lib/modules/<release>
    release = guest_kernel.name.removeprefix("vmlinuz-")
    modules_dir = guest_kernel.parent.parent / "lib" / "modules" / release
    return build_initramfs(Path(busybox), tmp_path_factory.mktemp("guest") / "initramfs.cpio", modules_dir)


@pytest.fixture(scope="session")
def guest_initramfs6(
    guest_initramfs: Path, guest_kernel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The test guest with its `net6` step: DHCPv6 by ISC dhclient (busybox has no udhcpc6)."""
    dhclient = shutil.which("dhclient")
    if dhclient is None:
        if REQUIRE_LIBVIRT:
            pytest.fail("dhclient is missing: scripts/libvirt-up installs isc-dhcp-client")
        pytest.skip("dhclient (isc-dhcp-client) is not installed")
    busybox = Path(shutil.which("busybox") or "busybox")
    release = guest_kernel.name.removeprefix("vmlinuz-")
    modules_dir = guest_kernel.parent.parent / "lib" / "modules" / release
    out = tmp_path_factory.mktemp("guest6") / "initramfs.cpio"
    return build_initramfs(busybox, out, modules_dir, dhcp6_client=Path(dhclient))


@pytest.fixture(scope="session")
def cloud_image() -> Path:
    """A Debian 12 cloud image with cloud-init, openssh-server and GRUB
    (scripts/cloud-image): built on the first run on a machine (~6 min, from
    deb.debian.org), cached in .cache/cloud-image after that."""
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        if REQUIRE_LIBVIRT:
            pytest.fail("the cloud image needs root and mmdebstrap: scripts/libvirt-up installs it")
        pytest.skip("the cloud image needs root and mmdebstrap (scripts/libvirt-up installs it)")
    return script_path("cloud-image", "build the cloud image", 1800)
