"""How the OpenStack lab's scripts tell a running service from a stale pid
file (scripts/openstack/pidfiles.sh), without the lab.

A CI machine started from a disk image taken while the lab ran found
neutron's old pid taken by another process: openstack-up took neutron for
running, never started it, and waited 300 s for it. The checks must refuse
such a pid and keep accepting the process that wrote its file.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PIDFILES = Path(__file__).resolve().parents[2] / "scripts" / "openstack" / "pidfiles.sh"


def bash(script: str, *args: str, boot_id_file: Path | None = None) -> int:
    """The exit status of `script` run by bash with pidfiles.sh sourced."""
    prelude = f"source {PIDFILES}\n"
    if boot_id_file is not None:
        prelude += f"BOOT_ID_FILE={boot_id_file}\n"
    return subprocess.run(["bash", "-c", prelude + script, "bash", *args], check=False).returncode


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_the_process_that_wrote_its_pid_file_is_running(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "service.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    assert bash('running_pidfile "$1"', str(pidfile)) == 0


def test_a_pid_taken_by_a_newer_process_is_not_the_service(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "service.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    # written an hour before the process that now has the pid started
    an_hour_ago = time.time() - 3600
    os.utime(pidfile, (an_hour_ago, an_hour_ago))
    assert bash('running_pidfile "$1"', str(pidfile)) == 1


@pytest.mark.parametrize("content", ["", "not a pid\n", "4194305\n"])
def test_an_empty_garbled_or_dead_pid_is_not_running(tmp_path: Path, content: str) -> None:
    pidfile = tmp_path / "service.pid"
    pidfile.write_text(content)
    assert bash('running_pidfile "$1"', str(pidfile)) == 1
    assert bash('running_pidfile "$1"', str(tmp_path / "missing.pid")) == 1


def test_pid_files_of_an_earlier_boot_are_forgotten_once(tmp_path: Path) -> None:
    run, elsewhere, boot_id = tmp_path / "run", tmp_path / "rabbit.pid", tmp_path / "boot_id"
    run.mkdir()
    boot_id.write_text("first-boot\n")
    forget = 'forget_earlier_boots "$1" "$2"'

    assert bash(forget, str(run), str(elsewhere), boot_id_file=boot_id) == 0
    (run / "neutron.pid").write_text("1051\n")
    elsewhere.write_text("1362\n")
    # the same boot: what this boot wrote is kept
    assert bash(forget, str(run), str(elsewhere), boot_id_file=boot_id) == 0
    assert (run / "neutron.pid").exists()
    assert elsewhere.exists()

    boot_id.write_text("second-boot\n")
    assert bash(forget, str(run), str(elsewhere), boot_id_file=boot_id) == 0
    assert not (run / "neutron.pid").exists()
    assert not elsewhere.exists()
    assert (run / "boot-id").read_text() == "second-boot\n"
