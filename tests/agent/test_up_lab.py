"""`pinfold up` on real libvirt, in the network lab (tests/netlab.py: a private
libvirtd in a network namespace; traffic only to loopback and into that
namespace): its demo VMs boot the demo guest, get addresses on the agent's own
NAT network, which the agent's API shows (on loopback) and `pinfold up` prints,
each serves its page to a client inside the namespace (never from here), and
`pinfold vm console demo-shared`, as printed, opens a shell on the guest.
Needs root, `ip netns` and libvirt (CI sets PINFOLD_REQUIRE_LIBVIRT=1: no skips)."""

from __future__ import annotations

import ipaddress
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pinfold.cli.up import DEMO_SUBNET
from pinfold.tls import client_context
from tests.agent.guest import NET_PAGE, NET_PORT
from tests.agent.test_console_lab import ANSWER, COMMAND
from tests.netlab import NetLab, netlab, wait_until  # noqa: F401  (fixture)
from tests.servers import free_port

UP_TIMEOUT_S = 400.0  # two TCG guests boot at once on a busy 2-core machine


class NotShownError(AssertionError):
    """The terminal did not show what was waited for in time."""


def read_pty_until(fd: int, wanted: bytes, timeout_s: float) -> bytes:
    """What the terminal shows until `wanted` appears (NotShownError after timeout_s)."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotShownError(f"{wanted!r} not shown: {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: every writer of the terminal has gone (the command ended)
                chunk = b""
            assert chunk, f"the terminal closed before {wanted!r}: {seen[-2000:]!r}"
            seen += chunk
    return seen


def type_until_answered(fd: int, timeout_s: float, retype_after_s: float = 5.0) -> None:
    """Type COMMAND until ANSWER shows. The guest starts its console shell just after
    its page answers; a line typed in that instant was echoed by the terminal and never
    run (seen once in CI), so an unanswered line is typed again, as a user would."""
    deadline = time.monotonic() + timeout_s
    while True:
        os.write(fd, COMMAND)
        wait_s = min(retype_after_s, deadline - time.monotonic())
        try:
            read_pty_until(fd, ANSWER, wait_s)
            return
        except NotShownError:
            if time.monotonic() + 0.1 >= deadline:
                raise


def open_console(env: dict[str, str], command: str, fd_timeout_s: float = 30.0) -> None:
    """Run the printed console command on a pseudo-terminal, type COMMAND, see
    ANSWER, leave with Ctrl-] and see the command exit 0."""
    parent, child = pty.openpty()
    argv = [sys.executable, "-m", "pinfold", *command.split()[1:]]
    process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    try:
        read_pty_until(parent, b"Ctrl-]", fd_timeout_s)  # its banner: attached
        type_until_answered(parent, fd_timeout_s)
        os.write(parent, b"\x1d")
        assert process.wait(timeout=fd_timeout_s) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(parent)


def test_pinfold_up_on_the_lab_makes_demo_vms_that_answer(
    netlab: NetLab,  # noqa: F811
    guest_kernel: Path,
    tmp_path: Path,
):
    data = tmp_path / "data"
    data.mkdir()
    # the kernel the tests fetched (scripts/guest-kernel): pinfold up finds it where it would fetch it
    (data / "guest-kernel").symlink_to(guest_kernel.parent.parent)
    controller_port, agent_port = free_port(), free_port()
    env = dict(os.environ, PINFOLD_CLI_CONFIG=str(tmp_path / "cli.toml"), COLUMNS="200")
    env.pop("PINFOLD_URL", None)
    env.pop("PINFOLD_TOKEN", None)
    command = [sys.executable, "-m", "pinfold", "up", "--driver", "libvirt", "--libvirt-uri", netlab.uri,
               "--domain-type", "qemu", "--data-dir", str(data), "--controller-port", str(controller_port),
               "--agent-port", str(agent_port), "--heartbeat", "0.5"]  # fmt: skip
    output_path = tmp_path / "up.out"
    with output_path.open("w") as output_file:
        process = subprocess.Popen(command, env=env, stdout=output_file, stderr=subprocess.STDOUT)
    try:

        def printed() -> str | None:
            text = output_path.read_text(errors="replace")
            assert process.poll() is None, text
            return text if "its console:" in text else None

        output = wait_until(printed, UP_TIMEOUT_S, "pinfold up to print the demo VMs' addresses", poll_s=0.5)
        shown = dict(re.findall(r"^  (demo-\w+)  ([0-9.]+)$", output, re.MULTILINE))
        assert set(shown) == {"demo-premium", "demo-shared"}, output
        subnet = ipaddress.ip_network(DEMO_SUBNET)
        assert all(ipaddress.ip_address(a) in subnet for a in shown.values()), shown
        assert f"reach one:   curl http://{shown['demo-shared']}:{NET_PORT}/" in output
        assert "its console: pinfold vm console demo-shared" in output
        assert "simulated" not in output
        # the agent's API (on loopback) shows the same addresses, on its own network
        verify = client_context(data / "tls" / "ca.pem")
        agent_url = f"https://127.0.0.1:{agent_port}"
        for name, address in shown.items():
            vm = httpx.get(f"{agent_url}/api/v1/vms/{name}", verify=verify).json()
            assert vm["addresses"] == [address]
            assert [nic["network"] for nic in vm["nics"]] == ["pinfold-demo"]
        host = httpx.get(f"{agent_url}/api/v1/host", verify=verify).json()
        assert any(n["name"] == "pinfold-demo" and n["owned"] and n["default"] for n in host["networks"]), (
            host
        )
        # each guest serves its page, to a client inside the lab's namespace
        for address in shown.values():
            assert netlab.http_get(address, NET_PORT).strip() == f"{NET_PAGE} {address}"
        open_console(env, "pinfold vm console demo-shared")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, output_path.read_text()
