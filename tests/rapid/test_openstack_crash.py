"""Issue 14, deliverable 5, with a real process and a real cloud: `pinfold
agent` serving RAPID with openStackSupport=1 (the lab's keys in its
configuration.xml) is killed with SIGKILL while it makes a user's VM, after
Nova accepted the server and before RAPID recorded it (at once after Nova's
202, the server still building; or once it is ACTIVE, just before RAPID's
record); restarted, its
start-up reconcile finds the server by its `pinfold-owner` metadata and
deletes it, with its port, and RAPID's records name no VM.

The helpers' image key is left out of the configuration, so that the only
server RAPID asks for is the user's (RAPID refuses a helper without an
image before the cloud is asked): the crash point meets that create.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pinfold.openstack.cloud import NAME_KEY, OWNER_KEY
from pinfold.rapid.protocol import Op
from pinfold.rapid.state import RapidState
from pinfold.rapid.wire import PeerError
from tests.openstack_lab import SERVER_TIMEOUT_S, OpenStackLab
from tests.rapid.peers import FakeDS, FakeSLAM, start_vm
from tests.rapid.test_daemon import CONFIG, sim_agent, stop, until, unused_ports

USER = 5
CRASH_ENV = "PINFOLD_AGENT_CRASH_AT"
#: the libvirt keys mean nothing on a cloud
LIBVIRT_KEYS = (
    "normalVmImagePath",
    "helperVmImagePath1",
    "helperVmImagePath2",
    "vmImageFolder",
    "ipShellPath",
)


def cloud_configuration(path: Path, port: int, ds_port: int, keys: dict[str, str]) -> Path:
    """RAPID's configuration.xml for the lab: openStackSupport=1, its keys, no helper image."""
    root = ET.fromstring(CONFIG.format(port=port, ds_port=ds_port, nvidia_smi=""))
    vmm = root.find("VMM")
    assert vmm is not None
    for key in LIBVIRT_KEYS:
        element = vmm.find(key)
        assert element is not None
        vmm.remove(element)
    support = vmm.find("openStackSupport")
    assert support is not None
    support.text = "1"
    for key, value in keys.items():
        if key != "androidHelperVmImageId":
            ET.SubElement(vmm, key).text = value
    ET.ElementTree(root).write(path, encoding="unicode")
    return path


def owned(lab: OpenStackLab, owner: str) -> list[Any]:
    """Every server of any project whose metadata names `owner`."""
    servers = lab.admin.compute.servers(all_projects=True)
    return [server for server in servers if (server.metadata or {}).get(OWNER_KEY) == owner]


@pytest.mark.parametrize("point", ["cloud:accepted", "rapid:created"])
def test_a_kill_9_after_nova_accepted_a_vm_leaves_no_server_or_port_after_the_restart(
    tmp_path: Path, openstack_lab: OpenStackLab, point: str
) -> None:
    slam = FakeSLAM()
    ds = FakeDS(slam.port)
    (port,) = unused_ports(1)
    owner = openstack_lab.own(f"rapid-vmm@127.0.0.1:{port}")  # the endpoint's, from its address and port
    config = cloud_configuration(tmp_path / "configuration.xml", port, ds.port, openstack_lab.rapid_keys())
    command = sim_agent(tmp_path, config)
    output = "[none yet]"
    try:
        crashing = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, CRASH_ENV: point},
        )  # fmt: skip
        try:
            # registered: the DS's VMM id is recorded before the SLAM hears of the VMM
            until(crashing, slam, lambda got: any(m[0] == Op.VMM_REGISTER_SLAM for m in got), 60)
            threading.Thread(target=lambda: _ignore_reset(port), daemon=True).start()
            crashing.wait(timeout=SERVER_TIMEOUT_S)
        finally:
            output = stop(crashing)
        assert crashing.returncode == -signal.SIGKILL, output

        [left] = owned(openstack_lab, owner)  # Nova took it; RAPID had no record of it
        assert left.metadata[NAME_KEY] == f"rapid-user-{USER}"
        store = tmp_path / "data" / "agent.db"
        state = RapidState(store)
        try:
            assert state.vm(USER) is None
        finally:
            state.close()

        restarted = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # the VMM registers with the DS once its start-up reconcile is done (it listens before)
            until(
                restarted, ds, lambda got: sum(m[0] == Op.VMM_REGISTER_DS for m in got) == 2, SERVER_TIMEOUT_S
            )
            assert owned(openstack_lab, owner) == []
            assert openstack_lab.admin.compute.find_server(left.id, ignore_missing=True) is None
            assert list(openstack_lab.admin.network.ports(device_id=left.id)) == []
        finally:
            output = stop(restarted)
        assert restarted.returncode == 0, output
        state = RapidState(store)
        try:
            assert state.vms() == []
        finally:
            state.close()
    except BaseException as error:
        error.add_note(f"--- the daemon's output ---\n{output}")
        raise
    finally:
        ds.stop()
        slam.stop()


def _ignore_reset(port: int) -> None:
    """SLAM's start for the user: the daemon dies before it answers."""
    with contextlib.suppress(PeerError):
        start_vm(port, USER, vcpus=1, memory_mb=1024)
