"""How the OpenStack lab's scripts tell a running service from a stale pid
file (scripts/openstack/pidfiles.sh), without the lab.

A CI machine started from a disk image taken while the lab ran found
neutron's old pid taken by another process: openstack-up took neutron for
running, never started it, and waited 300 s for it. A pid counts only if its
process carries a mark of the lab (the lab's directory or gunicorn's
`pinfold-lab-NAME`), in its command line or its environment; a pid file that
fails is removed, or gunicorn would refuse to start over it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

PIDFILES = Path(__file__).resolve().parents[2] / "scripts" / "openstack" / "pidfiles.sh"
LAB = "/var/lib/pinfold-lab-test-marks"


def bash(script: str, *args: str) -> int:
    """The exit status of `script` run by bash with pidfiles.sh sourced."""
    command = f"set -euo pipefail\nsource {PIDFILES}\n{script}"
    return subprocess.run(["bash", "-c", command, "bash", *args], check=False).returncode


def running(pidfile: Path, *marks: str) -> bool:
    return bash('if running_pidfile "$@"; then exit 0; else exit 1; fi', str(pidfile), *marks) == 0


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that has nothing of the lab (the pid a stale file may name)."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def started(command: list[str], **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env={**os.environ, **env})


def test_a_process_that_names_the_lab_is_running(tmp_path: Path) -> None:
    by_argument = started(["bash", "-c", "sleep 60; true", f"--datadir={LAB}/mysql"])
    by_environment = started(["sleep", "60"], RABBITMQ_MNESIA_BASE=f"{LAB}/rabbitmq/mnesia")
    try:
        (tmp_path / "mariadb.pid").write_text(f"{by_argument.pid}\n")
        assert running(tmp_path / "mariadb.pid", LAB, "pinfold-lab-mariadb")
        (tmp_path / "rabbit.pid").write_text(f"{by_environment.pid}\n")
        assert running(tmp_path / "rabbit.pid", LAB)
        # gunicorn's name for it, in its title (here: its command line)
        titled = started(["bash", "-c", "sleep 60; true", "pinfold-lab-neutron"])
        try:
            (tmp_path / "neutron.pid").write_text(f"{titled.pid}\n")
            assert running(tmp_path / "neutron.pid", LAB, "pinfold-lab-neutron")
            assert not running(tmp_path / "neutron.pid", LAB, "pinfold-lab-glance")
        finally:
            titled.kill()
            titled.wait()
    finally:
        for process in (by_argument, by_environment):
            process.kill()
            process.wait()


def test_a_pid_taken_by_another_process_is_not_the_service(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "neutron.pid"
    pidfile.write_text(f"{stranger.pid}\n")
    assert not running(pidfile, LAB, "pinfold-lab-neutron")
    assert pidfile.exists()  # running_pidfile only says
    assert bash('running_or_forgotten "$@" || exit 1', str(pidfile), LAB, "pinfold-lab-neutron") == 1
    assert not pidfile.exists()  # forgotten: gunicorn can write its own


@pytest.mark.parametrize("content", ["", "not a pid\n", "4194305\n"])
def test_an_empty_garbled_or_dead_pid_is_not_running(tmp_path: Path, content: str) -> None:
    pidfile = tmp_path / "service.pid"
    pidfile.write_text(content)
    assert not running(pidfile, LAB)
    assert not running(tmp_path / "missing.pid", LAB)
    assert bash('running_or_forgotten "$@" || exit 1', str(pidfile), LAB) == 1
    assert not pidfile.exists()


def service(tmp_path: Path, name: str, pid: int) -> bool:
    """`service_running` of lab service `name` whose pid file names `pid`."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / f"{name}.pid").write_text(f"{pid}\n")
    return bash('service_running "$@" || exit 1', LAB, str(run), name) == 0


def test_a_service_is_known_by_its_own_mark_not_by_the_labs_directory(tmp_path: Path) -> None:
    """Every process openstack-up starts after RabbitMQ's settings has the
    lab's directory in its environment: a stale pid file naming one of them
    (RabbitMQ itself, here) is not the service, and is forgotten."""
    lab_child = started(["sleep", "60"], RABBITMQ_MNESIA_BASE=f"{LAB}/rabbitmq/mnesia")
    gunicorn = started(["bash", "-c", "sleep 60; true", "gunicorn: master [pinfold-lab-placement]"])
    daemon = started(["bash", "-c", "sleep 60; true", f"{LAB}/venv/bin/nova-conductor"])
    mariadb = started(["bash", "-c", "sleep 60; true", f"--pid-file={tmp_path}/run/mariadb.pid"])
    try:
        assert not service(tmp_path, "placement", lab_child.pid)
        assert not (tmp_path / "run" / "placement.pid").exists()
        assert service(tmp_path, "placement", gunicorn.pid)
        assert not service(tmp_path, "nova-api", gunicorn.pid)
        assert service(tmp_path, "nova-conductor", daemon.pid)
        assert not service(tmp_path, "nova-scheduler", daemon.pid)
        assert service(tmp_path, "mariadb", mariadb.pid)
    finally:
        for process in (lab_child, gunicorn, daemon, mariadb):
            process.kill()
            process.wait()
