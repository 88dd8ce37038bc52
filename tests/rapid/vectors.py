"""The golden byte vectors of /work/shared/rapid/golden_vectors.txt (PROTOCOL.md 3.8), copied as literals.

Each was produced by a JDK ObjectOutputStream. Two are completed here because the
file abbreviates them: the 300-character UTF ("6161...") and the repeated-strings
list, of which the file gives only the tail (`REPEATED_TAIL`); the whole stream was
written by JDK 17 through tests/rapid/java/RapidPeer.java.
"""

from __future__ import annotations

from typing import NamedTuple

from tests.rapid.ops import Op


class Vector(NamedTuple):
    name: str
    ops: list[Op]
    hex: str

    @property
    def data(self) -> bytes:
        return bytes.fromhex(self.hex)


REPEATED = ["42", "7", "2", "2048", "20", "0", "43", "8", "2", "2048", "20", "0"]
REPEATED_TAIL = "71007e0004 71007e0005 71007e0006 71007e0007"

GOLDEN = [
    Vector(
        "SLAM_START_VM_VMM(42, os 0, vcpu 1, mem 512, gpu 1200)",
        [("byte", 60), ("long", 42), ("int", 0), ("int", 1), ("int", 512), ("int", 1200)],
        "aced0005 7719 3c 000000000000002a 00000000 00000001 00000200 000004b0",
    ),
    Vector(
        'reply OK(userId 42, "10.0.0.7")',
        [("byte", 1), ("long", 42), ("utf", "10.0.0.7")],
        "aced0005 7713 01 000000000000002a 0008 31302e302e302e37",
    ),
    Vector("reply ERROR", [("byte", 0)], "aced0005 7701 00"),
    Vector(
        'AS_RM_REGISTER_VMM("10.0.0.7")',
        [("byte", 38), ("utf", "10.0.0.7")],
        "aced0005 770b 26 0008 31302e302e302e37",
    ),
    Vector(
        "AS_RM_NOTIFY_VMM(42, 1)",
        [("byte", 39), ("long", 42), ("int", 1)],
        "aced0005 770d 27 000000000000002a 00000001",
    ),
    Vector(
        "SLAM_CHANGE_VMFLV_VMM(42, 2, 0, 0)",
        [("byte", 64), ("long", 42), ("int", 2), ("int", 0), ("int", 0)],
        "aced0005 7715 40 000000000000002a 00000002 00000000 00000000",
    ),
    Vector(
        "VMM_NOTIFY_DS(vmm 3, cpu 12, mem 2048, gpu 0)",
        [("byte", 71), ("long", 3), ("int", 12), ("long", 2048), ("int", 0)],
        "aced0005 7719 47 0000000000000003 0000000c 0000000000000800 00000000",
    ),
    Vector(
        "VM_REGISTER_DS(vmm 3, cat 0, type 0, user 42, status 1)",
        [("byte", 72), ("long", 3), ("int", 0), ("int", 0), ("long", 42), ("int", 1)],
        "aced0005 771d 48 0000000000000003 00000000 00000000 000000000000002a 00000001",
    ),
    Vector(
        "VM_NOTIFY_DS(vmid 9, status 2)",
        [("byte", 73), ("long", 9), ("int", 2)],
        "aced0005 770d 49 0000000000000009 00000002",
    ),
    Vector(
        'HELPER_NOTIFY_DS(vmid 10, "10.0.0.8")',
        [("byte", 74), ("long", 10), ("utf", "10.0.0.8")],
        "aced0005 7713 4a 000000000000000a 0008 31302e302e302e38",
    ),
    Vector(
        'VMM_REGISTER_SLAM("192.168.1.10", 9000)',
        [("byte", 61), ("utf", "192.168.1.10"), ("int", 9000)],
        "aced0005 7713 3d 000c 3139322e3136382e312e3130 00002328",
    ),
    Vector(
        'reply OK + ["42","9","12.5"]',
        [("byte", 1), ("list", ["42", "9", "12.5"])],
        "aced0005 7701 01 73 72 0013 6a6176612e7574696c2e41727261794c697374 7881d21d99c7619d 03 0001 49"
        " 0004 73697a65 78 70 00000003 7704 00000003 74 0002 3432 74 0001 39 74 0004 31322e35 78",
    ),
    Vector(
        "DS_MIGRATION_VM_AS(42) VMM->AS",
        [("raw", 57), ("long", 42)],
        "aced0005 39 7708 000000000000002a",
    ),
    Vector(
        "block > 255 bytes (status + 300-char UTF)",
        [("byte", 1), ("utf", "a" * 300)],
        "aced0005 7a 0000012f 01 012c" + "61" * 300,
    ),
    Vector(
        "repeated strings",
        [("list", REPEATED)],
        "aced0005 73 72 0013 6a6176612e7574696c2e41727261794c697374 7881d21d99c7619d 03 0001 49"
        " 0004 73697a65 78 70 0000000c 7704 0000000c 74 0002 3432 74 0001 37 74 0001 32"
        " 74 0004 32303438 74 0002 3230 74 0001 30 74 0002 3433 74 0001 38 " + REPEATED_TAIL + " 78",
    ),
]
