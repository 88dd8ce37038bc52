"""The VMM driven by a real JDK: a Java client that uses ObjectOutputStream and
ObjectInputStream as RAPID's SLAM and AS do starts a VM for a user, registers
as that VM's AS, and lists the VMs; the bytes on the wire are the JDK's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rapid.peers import FakeDS, FakeSLAM
from tests.rapid.rig import FAST, Rig, close, make_rig

JAVA = Path(__file__).parent / "java" / "RapidClient.java"


@pytest.fixture(scope="module")
def java_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("javac") is None or shutil.which("java") is None:
        if os.environ.get("PINFOLD_REQUIRE_JDK") == "1":
            pytest.fail("javac/java are missing")
        pytest.skip("no JDK here")
    out = tmp_path_factory.mktemp("java")
    subprocess.run(["javac", "-d", str(out), str(JAVA)], check=True, capture_output=True, timeout=300)
    return out


def java(classes: Path, port: int, *ops: str) -> list[str]:
    result = subprocess.run(
        ["java", "-cp", str(classes), "RapidClient", "127.0.0.1", str(port), *ops],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.split()


@pytest.fixture
def rig(tmp_path, i7) -> Iterator[Rig]:
    slam = FakeSLAM()
    ds = FakeDS(slam.port)
    made = make_rig(tmp_path, i7, ds, slam, settings=FAST.model_copy(update={"as_wait_s": 60}))
    assert made.vmm.registered.wait(10)
    yield made
    close(made)
    ds.stop()
    slam.stop()


def test_a_java_slam_and_a_java_as_start_a_vm(rig, java_client):
    answer: list[list[str]] = []
    start = ["byte:60", "long:42", "int:0", "int:1", "int:512", "int:1200", "flush", "?byte", "?long", "?utf"]
    slam = threading.Thread(target=lambda: answer.append(java(java_client, rig.port, *start)))
    slam.start()
    rig.ds.wait_for(lambda got: any(m[0] == 72 and m[4] == 42 for m in got), timeout_s=60)
    vm = rig.state.vm(42)
    assert vm is not None
    ip = vm.ip
    assert java(
        java_client, rig.port, "byte:38", f"utf:{ip}", "flush", "?byte", "?long", "byte:1", "flush"
    ) == [
        "1",
        "42",
    ]
    slam.join(timeout=60)
    assert answer == [["1", "42", ip]]
    listed = java(java_client, rig.port, "byte:63", "long:0", "flush", "?byte", "?list")
    assert listed[0] == "1"
    values = listed[1].split(",")
    assert values[values.index("42") : values.index("42") + 4] == [
        "42",
        str(rig.registered_vm(42)[6]),
        "1",
        "512",
    ]
    assert java(java_client, rig.port, "byte:63", "long:99", "flush", "?byte") == ["0"]
