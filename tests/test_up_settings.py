"""The agent settings `pinfold up` writes on libvirt (DATA_DIR/agent/agent.toml)
are ones the agent loads: its own NAT network as the default network, and the
demo guest to boot, or no kernel when the demo VMs boot a cloud image."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from pinfold.agent.config import load_config
from pinfold.cli.demo_guest import CIDATA_MODULES, DEMO_CMDLINE, MODULES, NET_MODULES
from pinfold.cli.up import DEMO_NETWORK, DEMO_SUBNET, agent_settings


def fake_kernel(data: Path) -> Path:
    """An unpacked kernel as fetch_kernel leaves it, with empty modules."""
    root = data / "guest-kernel"
    (root / "boot").mkdir(parents=True)
    kernel = root / "boot" / "vmlinuz-6.1.0-test-cloud-amd64"
    kernel.write_bytes(b"kernel")
    for module in (*MODULES, *NET_MODULES, *CIDATA_MODULES):
        path = root / "lib" / "modules" / "6.1.0-test-cloud-amd64" / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return kernel


def test_the_agent_loads_the_demo_settings(tmp_path: Path):
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed")
    kernel = fake_kernel(tmp_path)
    path = agent_settings(tmp_path / "agent", tmp_path, "192.168.213.0/24", None)
    config = load_config(path, {})
    assert config.default_network == DEMO_NETWORK
    assert config.own_network is not None
    assert (config.own_network.name, config.own_network.subnet) == (
        DEMO_NETWORK,
        ipaddress.ip_network(DEMO_SUBNET),
    )
    assert (config.kernel, config.cmdline) == (kernel, DEMO_CMDLINE)
    assert config.initrd == tmp_path / "demo-initramfs.cpio"
    assert config.initrd.read_bytes().startswith(b"070701")


def test_with_an_image_the_agent_boots_no_demo_kernel(tmp_path: Path):
    image = tmp_path / "cloud.qcow2"
    image.write_bytes(b"")
    config = load_config(agent_settings(tmp_path / "agent", tmp_path, "10.99.0.0/24", image), {})
    assert config.kernel is None
    assert config.initrd is None
    assert config.own_network is not None
    assert str(config.own_network.subnet) == "10.99.0.0/24"
    assert not (tmp_path / "guest-kernel").exists()  # nothing fetched for an image


def test_pinfold_up_again_shows_the_demo_vms_it_made_before(tmp_path: Path):
    """A second `pinfold up` on the same data: the demo VMs exist already (the
    sim agent restarted has lost them: `missing`). It still lists them and does
    not wait for addresses of VMs that are not running."""
    import os
    import subprocess
    import sys

    from tests.servers import free_port

    env = dict(os.environ, PINFOLD_CLI_CONFIG=str(tmp_path / "cli.toml"), COLUMNS="200")
    command = [sys.executable, "-m", "pinfold", "up", "--driver", "sim", "--data-dir", str(tmp_path / "data"),
               "--heartbeat", "0.5", "--once"]  # fmt: skip
    outputs = []
    for _ in range(2):
        ports = ["--controller-port", str(free_port()), "--agent-port", str(free_port())]
        done = subprocess.run([*command, *ports], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout)
    assert "demo-shared  198.51.100." in outputs[0]
    again = outputs[1]
    assert "demo-premium" in again
    assert "demo-shared" in again
    assert "demo-shared  not running (missing)" in again, again
