"""`pinfold agent --rapid-config configuration.xml` as an operator runs it:
the daemon registers with the DS and the SLAM (reporting the GPU that
nvidiaSmiPath sees), makes its helper VMs from their warm pools, serves
RAPID on vmmPort, and stops on SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pinfold.rapid.protocol import OK, Op
from tests.conftest import I7
from tests.rapid.peers import FakeDS, FakeSLAM, Peer, as_register, start_vm
from tests.servers import free_port

CONFIG = """<RAPID_VMM_DS>
  <VMM>
    <vmmPort>{port}</vmmPort><vmmMaxConnection>10</vmmMaxConnection><vmmIpAddress>127.0.0.1</vmmIpAddress>
    <openStackSupport>0</openStackSupport><gpuCores>0</gpuCores><availableType>1000000000</availableType>
    <nvidiaSmiPath>{nvidia_smi}</nvidiaSmiPath><gpuDeviceNum>1</gpuDeviceNum>
    <dataPath>/nonexistent/unused</dataPath>
    <normalVmImagePath/><helperVmImagePath1/><helperVmImagePath2/><vmImageFolder/><ipShellPath/>
  </VMM>
  <DS><dsPort>{ds_port}</dsPort><dsIpAddress>127.0.0.1</dsIpAddress></DS>
</RAPID_VMM_DS>
"""
#: an nvidia-smi that knows two GPUs (the agent's probe asks for index, name, use %, memory used and total)
NVIDIA_SMI = """#!/bin/sh
echo "0, Fake GPU, 37, 100, 1000"
echo "1, Fake GPU, 81, 100, 1000"
"""
SETTINGS = """
[rapid]
notify_period_s = 0.5
as_wait_s = 20
ip_wait_s = 2
as_lookup_tries = 1
helper_spares = 1
"""


def unused_ports(count: int) -> list[int]:
    """Distinct ports free on every address, below the kernel's ephemeral
    range: `free_port()` hands out a port from that range, which any
    process's outgoing connection may take before the daemon binds it (a
    RAPID server that cannot bind vmmPort ends the daemon at once; the test
    then waited its 60 s for helpers that would never come)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(10000, low) if low > 11000 else free_port()
        if port in chosen:
            continue
        try:
            socket.create_server(("0.0.0.0", port)).close()
        except OSError:
            continue
        chosen.append(port)
    return chosen


def until(process: subprocess.Popen[str], peer: Peer, predicate: Any, timeout_s: float) -> None:
    """`peer.wait_for`, failing at once if the daemon has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            peer.wait_for(predicate, timeout_s=min(0.5, max(0.01, deadline - time.monotonic())))
            return
        except AssertionError:
            if process.poll() is not None:
                raise AssertionError(f"the daemon exited ({process.returncode}) first") from None
            if time.monotonic() >= deadline:
                raise


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then its output once it exited (killed if it does not within 60 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0] + "\n[killed: still running 60 s after SIGTERM]"


def test_the_agent_serves_rapid_from_its_configuration(tmp_path):
    """Every failure shows the daemon's output (one that hung once, at 60 s,
    showed nothing)."""
    slam = FakeSLAM()
    ds = FakeDS(slam.port)
    port, api_port = unused_ports(2)
    nvidia_smi = tmp_path / "nvidia-smi"
    nvidia_smi.write_text(NVIDIA_SMI)
    nvidia_smi.chmod(0o755)
    (tmp_path / "configuration.xml").write_text(
        CONFIG.format(port=port, ds_port=ds.port, nvidia_smi=nvidia_smi)
    )
    (tmp_path / "agent.toml").write_text(SETTINGS)
    command = [sys.executable, "-m", "pinfold", "agent", "--driver", "sim", "--topology", str(I7)]
    command += ["--data-dir", str(tmp_path / "data"), "--port", str(api_port)]
    command += [
        "--config",
        str(tmp_path / "agent.toml"),
        "--rapid-config",
        str(tmp_path / "configuration.xml"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = "[none yet]"
    try:
        try:
            until(process, ds, lambda got: sum(1 for m in got if m[0] == Op.HELPER_NOTIFY_DS) == 2, 60)
            assert slam.of(Op.VMM_REGISTER_SLAM) == [(Op.VMM_REGISTER_SLAM, "127.0.0.1", port)]
            (register,) = ds.of(Op.VMM_REGISTER_DS)
            assert register[6] == 81  # GPU use of gpuDeviceNum 1, from the nvidiaSmiPath binary
            until(process, ds, lambda got: any(m[0] == Op.VMM_NOTIFY_DS for m in got), 10)
            answer: list[object] = []
            request = threading.Thread(target=lambda: answer.append(start_vm(port, 42)), daemon=True)
            request.start()
            until(process, ds, lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == 42 for m in got), 30)
            # the sim driver's addresses are 198.51.100.1, .2, ... in creation order: the AS of
            # user 42 is one of them (a wrong one is refused at once with as_lookup_tries = 1)
            answers = (as_register(port, f"198.51.100.{n}") for n in range(1, 10))
            assert any(result == (OK, 42) for result in answers)
            request.join(timeout=30)
            assert len(answer) == 1
            assert answer[0][:2] == (OK, 42)  # type: ignore[index]
        finally:
            output = stop(process)
    except BaseException as error:
        error.add_note(f"--- the daemon's output ---\n{output}")
        raise
    finally:
        ds.stop()
        slam.stop()
    assert process.returncode == 0, output
    assert "RAPID VMM on port" in output


def test_a_configuration_without_a_key_rapid_needs_stops_the_agent_naming_it(tmp_path):
    config = CONFIG.format(port=free_port(), ds_port=free_port(), nvidia_smi="")
    path = tmp_path / "configuration.xml"
    path.write_text(config.replace("<vmmIpAddress>127.0.0.1</vmmIpAddress>", ""))
    command = [sys.executable, "-m", "pinfold", "agent", "--driver", "sim", "--topology", str(I7)]
    command += ["--data-dir", str(tmp_path / "data"), "--rapid-config", str(path)]
    wide = {**os.environ, "COLUMNS": "1000"}  # the error box on one line
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=wide)
    assert result.returncode != 0
    assert f"{path}: vmmIpAddress: missing (RAPID's VMM needs it)" in result.stderr


def sim_agent(tmp_path: Path, rapid_config: Path) -> list[str]:
    """`pinfold agent` on the sim driver, its data in `tmp_path`, RAPID from `rapid_config`."""
    command = [sys.executable, "-m", "pinfold", "agent", "--driver", "sim", "--topology", str(I7)]
    return [
        *command,
        "--data-dir",
        str(tmp_path / "data"),
        "--port",
        str(free_port()),
        "--rapid-config",
        str(rapid_config),
    ]


def test_a_vmm_port_another_process_holds_stops_the_agent_in_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        path = tmp_path / "configuration.xml"
        path.write_text(CONFIG.format(port=port, ds_port=free_port(), nvidia_smi=""))
        command = sim_agent(tmp_path, path)
        wide = {**os.environ, "COLUMNS": "1000"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=wide)
    assert result.returncode != 0
    assert f"RAPID vmmPort {port}: cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


OPENSTACK = (
    "<openStackSupport>1</openStackSupport><authAddress>{auth}</authAddress>"
    "<openStackUserId>{user}</openStackUserId><openStackPasswd>{password}</openStackPasswd>"
    "<projectId1>{project}</projectId1><projectId2>default</projectId2>"
)


def openstack_agent(tmp_path: Path, auth: str, user: str, password: str, project: str) -> list[str]:
    """`pinfold agent` with RAPID on OpenStack (RAPID's keys, the libvirt ones left out)."""
    config = CONFIG.format(port=free_port(), ds_port=free_port(), nvidia_smi="")
    config = config.replace("<openStackSupport>0</openStackSupport>", OPENSTACK.format(
        auth=auth, user=user, password=password, project=project))  # fmt: skip
    config = config.replace(
        "<normalVmImagePath/><helperVmImagePath1/><helperVmImagePath2/><vmImageFolder/><ipShellPath/>", ""
    )
    path = tmp_path / "configuration.xml"
    path.write_text(config)
    return sim_agent(tmp_path, path)


def test_a_cloud_that_does_not_answer_stops_the_agent_in_one_line_with_exit_code_1(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        auth = f"http://127.0.0.1:{closed.getsockname()[1]}/v3"
    command = openstack_agent(tmp_path, auth, "u", "p", "proj")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pinfold agent: RAPID's OpenStack cloud at {auth}: cloud unreachable: ")
    assert "Traceback" not in result.stderr


def test_bad_cloud_credentials_stop_the_agent_in_one_line_with_exit_code_1(tmp_path, openstack_lab):
    """Against the real lab's Keystone: RAPID's keys with a wrong password."""
    keys = openstack_lab.rapid_keys()
    auth = keys["authAddress"]
    command = openstack_agent(tmp_path, auth, keys["openStackUserId"], "wrong", keys["projectId1"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pinfold agent: RAPID's OpenStack cloud at {auth}: cloud auth failed: ")
    assert "(HTTP 401)" in lines[0]
