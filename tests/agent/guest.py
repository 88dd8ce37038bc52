"""The test guest: the busybox initramfs moved into the product
(`pinfold.cli.demo_guest`, which `pinfold up` boots as its demo guest); the
names stay importable from here so that the tests build the very same bytes."""

from __future__ import annotations

from pinfold.cli.demo_guest import (
    CIDATA_DEVICE,
    CIDATA_DONE,
    CIDATA_LABEL,
    CIDATA_META,
    CIDATA_MODULES,
    CIDATA_USER,
    INIT,
    MARKER,
    MODULES,
    NET_ADDRESS,
    NET_FETCHED,
    NET_MODULES,
    NET_PAGE,
    NET_PORT,
    POWEROFF_MARKER,
    SHELL_MARKER,
    TICK,
    build_initramfs,
)

__all__ = [
    "CIDATA_DEVICE",
    "CIDATA_DONE",
    "CIDATA_LABEL",
    "CIDATA_META",
    "CIDATA_MODULES",
    "CIDATA_USER",
    "INIT",
    "MARKER",
    "MODULES",
    "NET_ADDRESS",
    "NET_FETCHED",
    "NET_MODULES",
    "NET_PAGE",
    "NET_PORT",
    "POWEROFF_MARKER",
    "SHELL_MARKER",
    "TICK",
    "build_initramfs",
]
