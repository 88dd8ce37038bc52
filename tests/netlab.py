"""A lab for networked test guests: a network namespace holding a private
virtlogd and libvirtd, their networks, bridges, dnsmasq and QEMU guests.

Why: tests may send traffic only to loopback or to hosts inside a network
namespace the test run made itself (../shared/notes/lab-network.md). A libvirt
network on the machine's own bridge is not such a host, and the system libvirtd
is shared with other tests. So each lab starts its own daemons inside its own
namespace (`ip netns add`, then `unshare -m` to bind-mount private libvirt
directories), clients reach them through `NetLab.uri`, and `NetLab.close` leaves
nothing behind: domains, networks, daemons (by PID), every process still in the
namespace (by PID), the namespace and the directory.

Use the `netlab` fixture (import it into the test module), then
`lab.define_network(...)`, `guest_xml(...)` + `lab.connection().createXML(...)`,
`wait_for_address(...)`, and `lab.http_get(address, NET_PORT)` or
`lab.connect(address, port)` for a socket that lives in the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REQUIRE_LIBVIRT = os.environ.get("PINFOLD_REQUIRE_LIBVIRT") == "1"
CLONE_NEWNET = 0x40000000
DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"
DAEMON_TIMEOUT_S = 60.0  # ~0.2 s with the capabilities cache, ~8 s without
QEMU_CONF = (
    "# pinfold test lab: root-run QEMU, no security driver, no cgroups of its own (domain ids\n"
    "# restart at 1 here and would clash with the system daemon's machine cgroups), no namespaces\n"
    'user = "root"\ngroup = "root"\nsecurity_driver = "none"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n'
)
LIBVIRTD_CONF = 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
# The private directories, as (name under the lab's root, where they are mounted in the
# daemons' mount namespace), handed to START_SCRIPT as arguments: nothing is pasted.
PRIVATE_DIRS = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
)
# $1 is the lab's root, the other arguments NAME:MOUNTPOINT pairs of PRIVATE_DIRS.
START_SCRIPT = """set -e
root=$1
shift
for pair in "$@"; do
    mkdir -p "${pair#*:}"
    mount --bind "$root/${pair%%:*}" "${pair#*:}"
done
virtlogd -d -p "$root/virtlogd.pid"
libvirtd -d -p "$root/libvirtd.pid" -f /etc/libvirt/libvirtd.conf
"""

T = TypeVar("T")


class LabUnavailableError(Exception):
    """This machine refuses what the lab needs (root, `ip netns`, `unshare -m`)."""


def _libvirt() -> Any:
    import libvirt

    return libvirt


def _run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def in_namespace(netns: str, action: Callable[[], T]) -> T:
    """Run `action` in a thread that has entered `netns`, and return its result.

    setns() moves only the calling thread, and os.setns exists only from Python
    3.12, hence ctypes; a socket made there stays in the namespace when handed back."""
    outcome: dict[str, Any] = {}

    def enter_and_run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}", "rb") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {netns}: {os.strerror(errno)}")
            outcome["value"] = action()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=enter_and_run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether pid is a process that is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _stop(pids: list[int], grace_s: float) -> None:
    """SIGTERM these processes, then SIGKILL those still alive after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)


def pids_in_netns(inode: int) -> list[int]:
    """Every live process whose network namespace is the one with this inode."""
    wanted = f"net:[{inode}]"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") == wanted and _alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass
class NetLab:
    """One namespace with its private libvirt daemons. Build it with `NetLab.start()`."""

    netns: str
    root: Path
    timings: dict[str, float] = field(default_factory=dict)
    netns_inode: int = 0
    bridges: list[str] = field(default_factory=list)
    dhcp_servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _connection: Any = None

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.root / 'run' / 'libvirt-sock'}"

    @classmethod
    def start(cls) -> NetLab:
        """Make the namespace and start the daemons; LabUnavailableError where the
        machine refuses a namespace, any other error where the lab is broken."""
        if os.geteuid() != 0:
            raise LabUnavailableError("the lab needs root")
        for tool in ("ip", "unshare", "libvirtd", "virtlogd"):
            if shutil.which(tool) is None:
                raise LabUnavailableError(f"{tool} is not installed")
        started = time.monotonic()
        # short: the client's socket path must fit in sun_path (108 bytes)
        root = Path(tempfile.mkdtemp(prefix="pfl-", dir="/tmp"))
        lab = cls(netns=f"pinfold-lab-{uuid.uuid4().hex[:8]}", root=root)
        try:
            lab._make_namespace()
            lab._start_daemons()
        except BaseException:
            lab.close()
            raise
        lab.timings["daemons_up_s"] = time.monotonic() - started
        return lab

    def _make_namespace(self) -> None:
        self.netns_inode = make_namespace(self.netns)

    def _start_daemons(self) -> None:
        for name, _ in PRIVATE_DIRS:
            (self.root / name).mkdir()
        (self.root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.root / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (self.root / "etc" / "virtlogd.conf").write_text("")
        (self.root / "log" / "qemu").mkdir()
        capabilities = Path("/var/cache/libvirt/qemu")
        if capabilities.is_dir():  # skips the daemon's ~8 s probe of QEMU
            shutil.copytree(capabilities, self.root / "cache" / "qemu")
        argv = ["ip", "netns", "exec", self.netns, "unshare", "-m", "--propagation", "private"]
        pairs = [f"{name}:{mountpoint}" for name, mountpoint in PRIVATE_DIRS]
        _check(_run(*argv, "sh", "-c", START_SCRIPT, "sh", str(self.root), *pairs), "start the lab's daemons")
        self._connection = open_when_up(self.uri, "the lab's libvirtd", self.log)

    def connection(self) -> Any:
        """The lab's libvirt connection (libvirt.virConnect)."""
        return self._connection

    def log(self) -> str:
        """The tail of the private libvirtd's log, for failure messages."""
        path = self.root / "log" / "libvirtd.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no libvirtd log)"

    def define_network(
        self, name: str, subnet: str = "10.213.0", hosts: dict[str, str] | None = None, ipv6: str = ""
    ) -> Any:
        """Define and start an isolated network (no <forward>) on subnet.0/24, the
        host at .1, DHCP over .100-.199 plus fixed `hosts` (MAC -> address), and
        dnsmasq's ping before each offer turned off (it costs ~3 s per lease);
        with `ipv6` (a /64 prefix such as "fd00:213:12::"), DHCPv6 on it too."""
        started = time.monotonic()
        # named by the lab, so that a test can tell the bridge is gone from the machine
        bridge = f"pfl{self.netns[-8:]}{len(self.bridges)}"
        self.bridges.append(bridge)
        network = self._connection.networkDefineXML(network_xml(name, subnet, hosts or {}, bridge, ipv6))
        network.create()
        self.timings[f"network_{name}_up_s"] = time.monotonic() - started
        return network

    def add_bridge(self, subnet: str = "10.213.9") -> DhcpBridge:
        """A Linux bridge of the lab's own (no libvirt network: what an operator's
        `br0` is), the host at subnet.1/24, and a dnsmasq serving DHCP on it over
        .100-.199 with its own lease file: a real process in the namespace, with
        no DNS (--port=0) and no ping before an offer (--no-ping, ~3 s a lease
        otherwise), stopped by `close`."""
        name = f"pfl{self.netns[-8:]}{len(self.bridges)}"
        self.bridges.append(name)
        for argv in (
            ("link", "add", name, "type", "bridge"),
            ("addr", "add", f"{subnet}.1/24", "dev", name),
            ("link", "set", name, "up"),
        ):
            _check(_run("ip", "-n", self.netns, *argv), f"ip {' '.join(argv)} in the lab")
        bridge = DhcpBridge(name, f"{subnet}.1", self.root / f"{name}.leases")
        dnsmasq = [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--no-ping",
            "--bind-interfaces", f"--interface={name}", "--except-interface=lo", "--dhcp-authoritative",
            f"--dhcp-range={subnet}.100,{subnet}.199,255.255.255.0,1h", f"--dhcp-leasefile={bridge.leases}",
            f"--pid-file={self.root / f'{name}.dnsmasq.pid'}", "--user=root", "--group=root",
        ]  # fmt: skip
        self.dhcp_servers.append(subprocess.Popen(self.command(*dnsmasq), stdin=subprocess.DEVNULL))
        return bridge

    def connect(self, host: str, port: int, timeout_s: float = 5.0) -> socket.socket:
        """A TCP socket connected to host:port inside the lab's namespace."""

        def open_there() -> socket.socket:
            return socket.create_connection((host, port), timeout=timeout_s)

        return in_namespace(self.netns, open_there)

    def listen(self, host: str = "", port: int = 0) -> socket.socket:
        """A listening TCP socket inside the lab's namespace (guests reach the
        host side of a lab network at its .1 address)."""
        return in_namespace(self.netns, lambda: socket.create_server((host, port)))

    def command(self, *argv: str) -> list[str]:
        """argv run inside the lab's namespace (for subprocess), e.g. a pinfold
        process that must itself reach the guests."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def http_get(self, host: str, port: int, timeout_s: float = 5.0) -> str:
        """The body of GET / from host:port (HTTP/1.0, so the server closes)."""
        with self.connect(host, port, timeout_s) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
            raise OSError(f"not a 200 answer from {host}:{port}: {head[:200]!r}")
        return body.decode(errors="replace")

    def leftovers(self) -> list[str]:
        """What of this lab still exists on the machine (empty after close)."""
        found = []
        if self.netns in _run("ip", "netns", "list").stdout.split():
            found.append(f"namespace {self.netns}")
        if Path(f"/run/netns/{self.netns}").exists():
            found.append(f"/run/netns/{self.netns}")
        if self.netns_inode:
            found += [f"process {pid} in the lab's namespace" for pid in pids_in_netns(self.netns_inode)]
        for daemon in ("virtlogd", "libvirtd"):
            pid = _pid_from(self.root / f"{daemon}.pid")
            if pid is not None and _alive(pid):
                found.append(f"{daemon} {pid}")
        found += [f"bridge {bridge}" for bridge in self.bridges if Path("/sys/class/net", bridge).exists()]
        if self.root.exists():
            found.append(f"directory {self.root}")
        return found

    def close(self) -> None:
        """Tear everything down, whatever state a failed test left it in."""
        daemon_pids = [
            pid for d in ("libvirtd", "virtlogd") if (pid := _pid_from(self.root / f"{d}.pid")) is not None
        ]
        self._destroy_libvirt_objects()
        _stop([pid for pid in daemon_pids if _alive(pid)], grace_s=5.0)
        _stop([server.pid for server in self.dhcp_servers], grace_s=5.0)
        for server in self.dhcp_servers:  # reaped: no zombie left for the namespace's check
            server.wait(timeout=5)
        if self.netns_inode:  # QEMU, dnsmasq: all were started by this lab
            _stop(pids_in_netns(self.netns_inode), grace_s=5.0)
        if Path(f"/run/netns/{self.netns}").exists():
            _run("ip", "netns", "del", self.netns)
        shutil.rmtree(self.root, ignore_errors=True)

    def _destroy_libvirt_objects(self) -> None:
        """Destroy and undefine what the daemon holds, each object on its own: one
        that vanished meanwhile (a guest that powered off) must not spare the rest,
        and whatever is left is stopped by PID afterwards."""
        connection, self._connection = self._connection, None
        if connection is not None:
            destroy_libvirt_objects(connection)


def open_when_up(uri: str, what: str, log: Callable[[], str] = lambda: "") -> Any:
    """A connection to a daemon just started, once it answers (DAEMON_TIMEOUT_S at most)."""
    libvirt = _libvirt()
    deadline = time.monotonic() + DAEMON_TIMEOUT_S
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} does not answer: {error}\n{log()}") from None
            time.sleep(0.05)


def make_namespace(netns: str) -> int:
    """Add network namespace `netns` with `lo` up, and check that a mount
    namespace can be made in it; its inode. LabUnavailableError where refused."""
    added = _run("ip", "netns", "add", netns)
    if added.returncode != 0:
        raise LabUnavailableError(f"ip netns add refused: {added.stderr.strip()}")
    inode = os.stat(f"/run/netns/{netns}").st_ino
    _check(_run("ip", "-n", netns, "link", "set", "lo", "up"), "bring lo up in the lab")
    probe = _run("ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private", "true")
    if probe.returncode != 0:
        raise LabUnavailableError(f"unshare -m refused: {probe.stderr.strip()}")
    return inode


def destroy_libvirt_objects(connection: Any) -> None:
    """Destroy and undefine what a daemon holds, each object on its own: one
    that vanished meanwhile (a guest that powered off) must not spare the rest,
    and whatever is left is stopped by PID afterwards; then close the connection."""
    libvirt = _libvirt()
    with contextlib.suppress(libvirt.libvirtError):
        for domain in connection.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                persistent = domain.isPersistent()  # a transient one is gone once destroyed
                if domain.isActive():
                    domain.destroy()
                if persistent:
                    domain.undefine()
        for network in connection.listAllNetworks():
            with contextlib.suppress(libvirt.libvirtError):
                if network.isActive():
                    network.destroy()
                network.undefine()
    with contextlib.suppress(libvirt.libvirtError):
        connection.close()


@dataclass(frozen=True)
class DhcpBridge:
    """A bridge the lab made with `add_bridge`: its name, the host's address
    on it, and the lease file of its dnsmasq ("expiry mac ip hostname client-id" a line)."""

    name: str
    host_address: str
    leases: Path

    def leased(self, mac: str) -> str | None:
        """The address dnsmasq leased to this MAC, if any yet."""
        try:
            lines = self.leases.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) >= 3 and fields[1].lower() == mac.lower():
                return fields[2]
        return None


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"cannot {what}: exit {result.returncode}: {result.stderr.strip()}")


def network_xml(name: str, subnet: str, hosts: dict[str, str], bridge: str, ipv6: str = "") -> str:
    """An isolated libvirt network on `bridge` with DHCP on subnet.0/24 and dnsmasq's
    no-ping; with `ipv6` (a /64 prefix), the host at ::1 and DHCPv6 over ::100-::1ff."""
    ET.register_namespace("dnsmasq", DNSMASQ_NS)
    network = ET.Element("network")
    ET.SubElement(network, "name").text = name
    ET.SubElement(network, "bridge", name=bridge)
    ip = ET.SubElement(network, "ip", address=f"{subnet}.1", netmask="255.255.255.0")
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(dhcp, "range", start=f"{subnet}.100", end=f"{subnet}.199")
    for mac, address in hosts.items():
        ET.SubElement(dhcp, "host", mac=mac, ip=address)
    if ipv6:
        ip6 = ET.SubElement(network, "ip", family="ipv6", address=f"{ipv6}1", prefix="64")
        ET.SubElement(ET.SubElement(ip6, "dhcp"), "range", start=f"{ipv6}100", end=f"{ipv6}1ff")
    options = ET.SubElement(network, f"{{{DNSMASQ_NS}}}options")
    ET.SubElement(options, f"{{{DNSMASQ_NS}}}option", value="no-ping")
    return ET.tostring(network, encoding="unicode")


def random_mac() -> str:
    """A MAC in QEMU's locally administered 52:54:00 range."""
    tail = os.urandom(3)
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in tail)


def guest_xml(
    name: str, kernel: Path, initrd: Path, cmdline: str, serial_log: Path, nics: list[tuple[str, str]]
) -> str:
    """A small TCG guest (1 vCPU, 128 MiB) booting kernel+initrd, its serial
    console in serial_log, one virtio NIC per (MAC, libvirt network name)."""
    from pinfold.agent.domain import DomainSpec
    from pinfold.model.vm import NIC

    online = frozenset(range(os.cpu_count() or 1))
    spec = DomainSpec(
        name, 1, 128, online, 1.0, owner="netlab", domain_type="qemu", kernel=kernel, initrd=initrd,
        cmdline=cmdline, serial_log=serial_log, nics=tuple(NIC(network=net, mac=mac) for mac, net in nics),
    )  # fmt: skip
    return spec.to_xml()


def lease_addresses(domain: Any, mac: str) -> list[str]:
    """The IPv4 addresses of the domain's NIC with this MAC, from its network's
    DHCP leases as libvirt matches them to the running domain (never the bare
    lease list: leases outlive domains)."""
    libvirt = _libvirt()
    try:
        interfaces = domain.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
    except libvirt.libvirtError:
        return []
    return [
        entry["addr"]
        for interface in interfaces.values()
        if (interface.get("hwaddr") or "").lower() == mac.lower()
        for entry in interface.get("addrs") or []
        if entry["type"] == libvirt.VIR_IP_ADDR_TYPE_IPV4
    ]


def wait_until(predicate: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.1) -> T:
    """Poll predicate until it returns a value that is not None/false; fail the
    test with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def start_lab_or_skip() -> NetLab:
    """A started lab, or a skip where the machine refuses namespaces or libvirt
    is missing (a failure under PINFOLD_REQUIRE_LIBVIRT=1, as in CI)."""
    try:
        _libvirt()
    except ImportError:
        if REQUIRE_LIBVIRT:
            raise
        pytest.skip("libvirt-python is not installed")
    try:
        return NetLab.start()
    except LabUnavailableError as refused:
        if REQUIRE_LIBVIRT:
            pytest.fail(f"the network lab is required (PINFOLD_REQUIRE_LIBVIRT=1): {refused}")
        pytest.skip(f"no network lab here: {refused}")


@contextlib.contextmanager
def lab_session() -> Iterator[NetLab]:
    """A running lab for the with block, torn down however the block ends."""
    lab = start_lab_or_skip()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A running lab for one test, torn down even when the test fails."""
    with lab_session() as lab:
        yield lab
