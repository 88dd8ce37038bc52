"""The codec against a real JDK: tests/rapid/java/RapidPeer.java uses the object streams as RAPID does.

Skipped without `javac`/`java`, unless PINFOLD_REQUIRE_JDK=1 (CI), where that fails.
One JVM runs a whole batch of cases, so the module takes about a second.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.rapid.ops import Op, decode, encode, from_peer, kinds_of, to_peer, values
from tests.rapid.vectors import GOLDEN, REPEATED

JAVA_SOURCE = Path(__file__).parent / "java" / "RapidPeer.java"


class Peer:
    """The compiled RapidPeer: one process per batch of cases, one output line per case."""

    def __init__(self, java: str, classes: Path) -> None:
        self.java = java
        self.classes = classes

    def run(self, mode: str, lines: Sequence[str]) -> list[str]:
        result = subprocess.run(
            [self.java, "-cp", str(self.classes), "RapidPeer", mode],
            input="".join(line + "\n" for line in lines),
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        out = result.stdout.splitlines()
        assert len(out) == len(lines), result.stderr
        return out

    def write(self, scripts: Sequence[Sequence[Op]]) -> list[bytes]:
        """The bytes the JDK writes for each script (which should end with a flush)."""
        out = self.run("write", [" ".join(to_peer(op) for op in ops) for ops in scripts])
        for line in out:
            assert not line.startswith("error"), line
        return [bytes.fromhex(line) for line in out]

    def read(self, streams: Sequence[tuple[bytes, Sequence[str]]]) -> list[str]:
        """What the JDK reads from each stream, in the peer's syntax."""
        return self.run("read", [" ".join([data.hex(), *kinds]) for data, kinds in streams])


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Peer:
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None:
        if os.environ.get("PINFOLD_REQUIRE_JDK") == "1":
            pytest.fail("PINFOLD_REQUIRE_JDK=1 but javac or java is not on PATH")
        pytest.skip("no JDK (javac) on PATH")
    classes = tmp_path_factory.mktemp("rapid-peer")
    subprocess.run(
        [javac, "-d", str(classes), str(JAVA_SOURCE)], check=True, capture_output=True, timeout=300
    )
    return Peer(java, classes)


FLUSH: Op = ("flush", None)

MESSAGES: list[tuple[str, list[Op]]] = [
    *((vector.name, [*vector.ops, FLUSH]) for vector in GOLDEN),
    ("utf of 700 bytes", [("byte", 1), ("utf", "x" * 700), FLUSH]),
    ("utf across the 1024-byte buffer", [("byte", 1), ("utf", "é€" * 250), ("long", -1), FLUSH]),
    ("utf of 65535 bytes", [("utf", "€" * 21845), FLUSH]),
    (
        "unicode with NUL and emoji",
        [("utf", "NUL\x00 é € 😀 end"), ("list", ["😀", "\x00", "", "😀", "a\x00b", "€"]), FLUSH],
    ),
    (
        "repeated strings across lists",
        [("byte", 1), ("list", REPEATED), ("list", ["42", "x", "0", "x"]), FLUSH],
    ),
    ("empty lists", [("list", []), ("byte", 1), ("list", []), FLUSH]),
    ("list element over 65535 bytes", [("list", ["é" * 35000, "a"]), FLUSH]),
    (
        "extremes",
        [
            ("byte", -128),
            ("byte", 127),
            ("int", -(2**31)),
            ("int", 2**31 - 1),
            ("long", -(2**63)),
            ("long", 2**63 - 1),
            FLUSH,
        ],
    ),
    (
        "raw byte, then more raw and blocks",
        [("raw", 57), ("long", 42), FLUSH, ("raw", -1), ("byte", 3), FLUSH],
    ),
]


def message_ids() -> list[str]:
    return [name for name, _ in MESSAGES]


def test_python_reads_what_the_jdk_writes(peer: Peer) -> None:
    written = peer.write([ops for _, ops in MESSAGES])
    for (name, ops), data in zip(MESSAGES, written, strict=True):
        assert decode(data, kinds_of(ops)) == values(ops), name


def test_python_writes_what_the_jdk_writes(peer: Peer) -> None:
    written = peer.write([ops for _, ops in MESSAGES])
    for (name, ops), data in zip(MESSAGES, written, strict=True):
        assert encode(ops, flush=False).hex() == data.hex(), name


def test_jdk_reads_what_python_writes(peer: Peer) -> None:
    read = peer.read([(encode(ops), kinds_of(ops)) for _, ops in MESSAGES])
    for (name, ops), line in zip(MESSAGES, read, strict=True):
        assert from_peer(line) == values(ops), f"{name}: JDK read {line[:200]}"


TEXTS = ["", "a", "42", "é", "€", "😀", "\x00", "10.0.0.7"]


def random_script(rng: random.Random) -> list[Op]:
    """Ops in any order, raw bytes and flushes anywhere, strings sized to hit the 1024-byte buffer edge."""

    def text() -> str:
        if rng.random() < 0.2:
            return rng.choice(TEXTS) * rng.choice([100, 300, 340, 511, 1000, 1019, 1022, 1500])
        return "".join(rng.choices(TEXTS, k=rng.randint(0, 4)))

    ops: list[Op] = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.choice(["byte", "int", "long", "utf", "utf", "list", "raw", "flush"])
        if kind == "byte" or kind == "raw":
            ops.append((kind, rng.randint(-128, 255)))
        elif kind == "int":
            ops.append((kind, rng.randint(-(2**31), 2**31 - 1)))
        elif kind == "long":
            ops.append((kind, rng.randint(-(2**63), 2**63 - 1)))
        elif kind == "utf":
            ops.append((kind, text()))
        elif kind == "list":
            ops.append((kind, [text() for _ in range(rng.randint(0, 6))]))
        else:
            ops.append(FLUSH)
    return [*ops, FLUSH]


def edge_scripts() -> list[list[Op]]:
    """Every value kind starting at each of the last bytes of the JDK's 1024-byte buffer, and past it."""
    scripts: list[list[Op]] = []
    for filled in range(1012, 1027):
        for value in [("byte", -2), ("int", -2), ("long", -2), ("utf", "é€😀a"), ("raw", 9), ("list", ["a"])]:
            scripts.append([("utf", "a" * (filled - 2)), value, ("long", 7), FLUSH])
            pad = [("byte", 0)] * (filled % 2)  # the 2-byte characters then fill the rest
            scripts.append([*pad, ("utf", "é" * ((filled - 2) // 2)), value, ("long", 7), FLUSH])
    return scripts


def test_random_scripts_are_byte_identical_to_the_jdk(peer: Peer) -> None:
    rng = random.Random(20240605)
    scripts = [*edge_scripts(), *(random_script(rng) for _ in range(300))]
    written = peer.write(scripts)
    for ops, data in zip(scripts, written, strict=True):
        assert encode(ops, flush=False).hex() == data.hex(), [to_peer(op) for op in ops]
