"""`--slackvm-open-networks` on both daemons, as an operator runs them: a bad
network is refused by name, and a listed one lets SlackVM's token-less tools
in (the daemons in subprocesses, on loopback, stopped with SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from pinfold.cli import app
from tests.conftest import I7
from tests.servers import free_port, wait_for_health

runner = CliRunner()


@pytest.mark.parametrize("daemon", ["agent", "controller"])
def test_a_bad_network_flag_is_refused_by_name(tmp_path, daemon):
    flags = [daemon, "--data-dir", str(tmp_path), "--slackvm-open-networks", "127.0.0.0/8,10.0.0.0/33"]
    result = runner.invoke(app, flags, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "slackvm_open_networks" in result.output


@contextmanager
def daemon(command: list[str], port: int) -> Iterator[str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, f"pinfold {command[3]}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def test_the_agent_opens_slackvms_routes_to_the_networks_of_its_flag(tmp_path: Path):
    port = free_port()
    command = [sys.executable, "-m", "pinfold", "agent", "--driver", "sim", "--port", str(port)]
    command += ["--topology", str(I7), "--data-dir", str(tmp_path / "data")]
    command += ["--slackvm-open-networks", "10.0.0.0/8, 127.0.0.0/8"]
    with daemon(command, port) as url:
        deployed = httpx.get(f"{url}/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=")
        assert deployed.text == '{"reason":null,"success":true}\n'
        assert (
            httpx.post(f"{url}/api/v1/vms", json={"name": "b", "vcpus": 1, "memory_mib": 64}).status_code
            == 401
        )


def test_the_controller_opens_slackvms_routes_to_the_networks_of_its_flag(tmp_path: Path):
    port = free_port()
    command = [sys.executable, "-m", "pinfold", "controller", "--port", str(port)]
    command += ["--data-dir", str(tmp_path / "data"), "--slackvm-open-networks", "127.0.0.0/8"]
    with daemon(command, port) as url:
        assert httpx.get(f"{url}/status").text == "{}\n"
        nowhere = httpx.get(f"{url}/deploy?name=a&cpu=1&mem=1&oc=1&qcow2=")
        assert nowhere.text == '{"reason":"No appropriate node found","success":false}\n'
        assert httpx.get(f"{url}/api/v1/vms").status_code == 401
