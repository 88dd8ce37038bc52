"""A lab of two "hosts" for live migration: two private libvirt daemons on
this one machine (../shared/notes/lab-migration.md has the measured recipe).

Both daemons run in one network namespace the lab makes (QEMU's migration
stream goes over that namespace's loopback, never the machine's network),
each in its own mount namespace with its own libvirt directories (as
tests/netlab.py does for one), its own `host_uuid` (libvirt refuses to
migrate to "the same host" otherwise) and its own migration port range. Each
runs under a small parent that makes itself a child subreaper and reaps at
once: PID 1 here reaps orphans only every ~2 s, and libvirt waits for an old
QEMU to disappear at the end of every migration and destroy.

A host's files (disks, console logs) live in its `data` directory, and each
daemon sees its own host's `data` at BOTH hosts' paths (bind mounts in its
mount namespace): exactly as two real hosts with the same layout, where a
path in a migrated domain's XML names the file on the host it runs on.
`shared` is one directory both see as it is (shared storage), `images` the
base images both hosts have.

`MigrationLab.start()` or the `migration_lab` fixture; `close()` leaves
nothing: domains, networks, daemons and every process of the namespace (by
PID), the namespace, the directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pinfold.agent.core import MigrationStorage
from pinfold.agent.service import AgentSettings
from tests.netlab import (
    PRIVATE_DIRS,
    QEMU_CONF,
    REQUIRE_LIBVIRT,
    LabUnavailableError,
    _alive,
    _libvirt,
    _pid_from,
    _run,
    _stop,
    destroy_libvirt_objects,
    make_namespace,
    network_xml,
    open_when_up,
    pids_in_netns,
)

#: the parent of a host's daemons: a child subreaper that runs the start
#: script (argv), says "ready", then reaps every orphan at once until none is left
REAPER = """import ctypes, os, subprocess, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) refused")
started = subprocess.run(sys.argv[1:])
if started.returncode:
    sys.exit(started.returncode)
print("ready", flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""
# $1 is the host's root, the other arguments SOURCE:MOUNTPOINT pairs (SOURCE under $1 or absolute)
START_SCRIPT = """set -e
root=$1
shift
for pair in "$@"; do
    source=${pair%%:*}
    case $source in /*) ;; *) source=$root/$source ;; esac
    mkdir -p "${pair#*:}"
    mount --bind "$source" "${pair#*:}"
done
virtlogd -d -p "$root/virtlogd.pid"
libvirtd -d -p "$root/libvirtd.pid" -f /etc/libvirt/libvirtd.conf
"""
#: the test guest's kernel command line: it counts on its serial console (tests/agent/guest.py)
CMDLINE = "console=ttyS0 panic=-1 tick"
#: each host's QEMU migration ports, far from each other's
PORTS = {"a": (49200, 49231), "b": (49300, 49331)}


@dataclass
class LabHost:
    """One host: its daemons (under `reaper`), its directories, its connection."""

    name: str
    root: Path
    reaper: subprocess.Popen[str] | None = None
    connection: Any = None

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.root / 'run' / 'libvirt-sock'}"

    @property
    def peer_uri(self) -> str:
        """The URI another host's daemon reaches this one at: `+unix` names the
        transport, else a daemon takes `qemu:///system` for its own (and
        refuses to "migrate guest to the same host")."""
        return f"qemu+unix:///system?socket={self.root / 'run' / 'libvirt-sock'}"

    @property
    def data(self) -> Path:
        """Its disks (`data/disks`) and console logs (`data/consoles`)."""
        return self.root / "data"

    def qemu_pid(self, domain: str) -> int | None:
        return _pid_from(self.root / "lib" / "qemu" / f"{domain}.pid") or _pid_from(
            self.root / "run" / "qemu" / f"{domain}.pid"
        )

    def children(self) -> list[int]:
        """Every live process whose parent is this host's reaper (its daemons, its QEMUs)."""
        if self.reaper is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{self.reaper.pid}\n" in status and _alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    def die(self) -> None:
        """The host dies at once: SIGKILL to its daemons and its guests."""
        for pid in self.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


@dataclass
class MigrationLab:
    netns: str
    root: Path
    hosts: dict[str, LabHost] = field(default_factory=dict)
    netns_inode: int = 0

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @classmethod
    def start(cls) -> MigrationLab:
        if os.geteuid() != 0:
            raise LabUnavailableError("the lab needs root")
        root = Path(tempfile.mkdtemp(prefix="pfm-", dir="/tmp"))  # short: sockets' paths fit sun_path
        lab = cls(netns=f"pinfold-mig-{uuid.uuid4().hex[:8]}", root=root)
        try:
            lab._make_namespace()
            for name in ("a", "b"):
                lab.hosts[name] = LabHost(name, root / name)
            for directory in (lab.shared, lab.images):
                directory.mkdir()
            for host in lab.hosts.values():
                lab._start(host)
        except BaseException:
            lab.close()
            raise
        return lab

    def _make_namespace(self) -> None:
        self.netns_inode = make_namespace(self.netns)

    def _start(self, host: LabHost) -> None:
        for name, _ in PRIVATE_DIRS:
            (host.root / name).mkdir(parents=True)
        for part in ("disks", "consoles"):
            (host.data / part).mkdir(parents=True)
        low, high = PORTS[host.name]
        (host.root / "etc" / "qemu.conf").write_text(
            QEMU_CONF + f"migration_port_min = {low}\nmigration_port_max = {high}\n"
        )
        (host.root / "etc" / "libvirtd.conf").write_text(
            f'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\nhost_uuid = "{uuid.uuid4()}"\n'
        )
        (host.root / "etc" / "virtlogd.conf").write_text("")
        (host.root / "log" / "qemu").mkdir()
        capabilities = Path("/var/cache/libvirt/qemu")
        if capabilities.is_dir():  # skips the daemon's ~8 s probe of QEMU
            subprocess.run(["cp", "-a", str(capabilities), str(host.root / "cache" / "qemu")], check=True)
        pairs = [f"{name}:{mountpoint}" for name, mountpoint in PRIVATE_DIRS]
        pairs += [f"{host.data}:{other.data}" for other in self.hosts.values()]  # its data at every path
        argv = [
            "ip", "netns", "exec", self.netns, "unshare", "-m", "--propagation", "private",
            sys.executable, "-c", REAPER, "sh", "-c", START_SCRIPT, "sh", str(host.root), *pairs,
        ]  # fmt: skip
        host.reaper = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert host.reaper.stdout is not None
        if host.reaper.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the daemons of host {host.name} did not start (exit {host.reaper.wait(10)})")
        host.connection = open_when_up(host.uri, f"host {host.name}'s libvirtd")

    def define_network(self, name: str) -> None:
        """The same isolated network `name` on both hosts (each on its own bridge and subnet)."""
        for index, host in enumerate(self.hosts.values()):
            bridge = f"pfm{self.netns[-6:]}{index}"
            network = host.connection.networkDefineXML(network_xml(name, f"10.214.{index}", {}, bridge))
            network.create()

    def agent_settings(
        self, host: LabHost, kernel: Path, initrd: Path, storage: MigrationStorage = "copy"
    ) -> AgentSettings:
        """An agent's settings on `host`: TCG guests booting the test kernel
        (their consoles in the host's `data`), disks in the host's `data` or,
        shared, in `shared`, and live migration to it over the namespace's loopback."""
        return AgentSettings(
            domain_type="qemu", kernel=kernel, initrd=initrd, cmdline=CMDLINE,
            serial_dir=host.data / "consoles",
            disk_dir=self.shared if storage != "copy" else host.data / "disks",
            image_dirs=(self.images,), critical_size=0, reserved_memory_mib=0,
            migration_storage=storage, peer_libvirt_uri=host.peer_uri, migration_address="127.0.0.1",
        )  # fmt: skip

    def close(self) -> None:
        """Tear everything down, whatever state a failed test left it in."""
        for host in self.hosts.values():
            _destroy_domains(host)
        for host in self.hosts.values():
            daemons = [pid for d in ("libvirtd", "virtlogd") if (pid := _pid_from(host.root / f"{d}.pid"))]
            _stop([pid for pid in daemons if _alive(pid)], grace_s=5.0)
        if self.netns_inode:  # QEMU, dnsmasq: all were started by this lab
            _stop(pids_in_netns(self.netns_inode), grace_s=5.0)
        for host in self.hosts.values():
            if host.reaper is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.reaper.wait(timeout=10)
                if host.reaper.stdout is not None:
                    host.reaper.stdout.close()
        if Path(f"/run/netns/{self.netns}").exists():
            _run("ip", "netns", "del", self.netns)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)

    def leftovers(self) -> list[str]:
        """What of this lab still exists (empty after close)."""
        found = []
        if Path(f"/run/netns/{self.netns}").exists():
            found.append(f"namespace {self.netns}")
        if self.netns_inode:
            found += [f"process {pid} in the lab's namespace" for pid in pids_in_netns(self.netns_inode)]
        found += [f"reaper of {h.name}" for h in self.hosts.values() if h.reaper and h.reaper.poll() is None]
        if self.root.exists():
            found.append(f"directory {self.root}")
        return found


def _destroy_domains(host: LabHost) -> None:
    """Destroy and undefine every domain and network of a host still up."""
    connection, host.connection = host.connection, None
    if connection is not None:
        destroy_libvirt_objects(connection)


@pytest.fixture
def migration_lab() -> Iterator[MigrationLab]:
    """Two started hosts for one test, torn down even when the test fails;
    a skip where libvirt or namespaces are missing (a failure under
    PINFOLD_REQUIRE_LIBVIRT=1, as in CI)."""
    try:
        _libvirt()
    except ImportError:
        if REQUIRE_LIBVIRT:
            raise
        pytest.skip("libvirt-python is not installed")
    try:
        lab = MigrationLab.start()
    except LabUnavailableError as refused:
        if REQUIRE_LIBVIRT:
            pytest.fail(f"the migration lab is required (PINFOLD_REQUIRE_LIBVIRT=1): {refused}")
        pytest.skip(f"no migration lab here: {refused}")
    try:
        yield lab
    finally:
        lab.close()
        assert lab.leftovers() == []
