"""Live migration on real libvirt: two agents over the two private daemons
of tests/migrationlab.py, their routes called as the controller calls them
(prepare on the target, send on the source, commit or abort on the target).
A TCG guest (1 vCPU, 128 MiB) that prints a count on its serial console goes
on counting across the move; its vCPU threads on the target are on the
target's vNode; the source's vNode shrinks, a target neighbour is re-pinned;
NICs keep MAC and network; disks are copied, or shared. A refused prepare
and a target that dies mid-way leave the guest running on the source.
At most two guests at once. Needs root, `ip netns` and libvirt: skipped
without them, a failure under PINFOLD_REQUIRE_LIBVIRT=1."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from pinfold.agent.api import create_app
from pinfold.agent.core import MigrationStorage
from pinfold.agent.domain import DomainSpec
from pinfold.agent.service import Agent
from pinfold.agent.store import Store
from pinfold.topology import Topology, parse_cpulist
from tests.agent.guest import TICK
from tests.agent.test_migration import KEY, prepare_body
from tests.migrationlab import LabHost, MigrationLab, migration_lab  # noqa: F401  (fixture)
from tests.netlab import wait_until
from tests.servers import Served

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOOT_TIMEOUT_S = 120.0
MIGRATE_TIMEOUT_S = 120.0


class LabAgent:
    """A real agent over one lab host's daemon, its API served on loopback."""

    def __init__(self, host: LabHost, agent: Agent, http: httpx.Client) -> None:
        self.host = host
        self.agent = agent
        self.http = http

    def vms(self) -> dict[str, dict[str, Any]]:
        return {vm["name"]: vm for vm in self.http.get("/api/v1/vms").json()}

    def vnodes(self) -> dict[str, list[int]]:
        return dict(self.http.get("/api/v1/host").json()["vnodes"])

    def log(self, domain: str) -> Path:
        return self.host.data / "consoles" / f"{domain}.log"

    def create(self, name: str, ratio: float, **more: Any) -> dict[str, Any]:
        body = {"name": name, "vcpus": 1, "memory_mib": 128, "ratio": ratio, **more}
        answer = self.http.post("/api/v1/vms", json=body, headers=AUTH, timeout=120)
        assert answer.status_code == 201, answer.text
        return dict(answer.json())


@contextmanager
def lab_agents(
    lab: MigrationLab, kernel: Path, initrd: Path, storage: MigrationStorage = "copy", **more: Any
) -> Iterator[tuple[LabAgent, LabAgent]]:
    """An agent on each lab host (TCG guests booting the test kernel), both
    closed on the way out (the lab destroys the domains); `more`: settings."""
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    with ExitStack() as stack:
        made = []
        for host in lab.hosts.values():
            driver = LibvirtDriver(host.uri)
            stack.callback(_quietly, driver.close)
            settings = replace(lab.agent_settings(host, kernel, initrd, storage), **more)
            agent = Agent.open(Topology.discover(), driver, Store(host.root / "agent.db"), settings)
            stack.callback(agent.close)
            served = Served(create_app(agent, TOKEN))
            stack.callback(served.stop)
            http = stack.enter_context(httpx.Client(base_url=served.url, timeout=30))
            made.append(LabAgent(host, agent, http))
        yield made[0], made[1]


def _quietly(close: Any) -> None:
    with contextlib.suppress(Exception):  # a dead host's connection cannot close cleanly
        close()


def counts(log: Path) -> list[int]:
    """The counts the guest printed in `log` so far."""
    if not log.exists():
        return []
    pattern = re.compile(rf"^{re.escape(TICK)} (\d+)\r?$")
    return [
        int(m.group(1)) for line in log.read_text(errors="replace").splitlines() if (m := pattern.match(line))
    ]


def counting(log: Path, past: int = 0) -> int:
    """Wait until the guest has counted past `past` in `log`; its last count."""
    return wait_until(lambda: next(iter([c for c in counts(log)[-1:] if c > past]), None), BOOT_TIMEOUT_S,
                      f"a count past {past} in {log}")  # fmt: skip


def migrate(source: LabAgent, target: LabAgent, name: str) -> tuple[httpx.Response, dict[str, Any] | None]:
    """The controller's steps 1 and 2: the prepare's refusal, or the send's answer and the prepare's."""
    body = prepare_body(source.http, source.host.name, name)
    prepared = target.http.post("/api/v1/migrations", json=body, headers=AUTH)
    if prepared.status_code != 201:
        return prepared, None
    answer = prepared.json()
    body = {"target": target.host.name, **{k: answer[k] for k in ("cpus", "libvirt_uri", "migrate_uri")}}
    sent = source.http.post(f"/api/v1/vms/{name}/migrate", json=body, headers=AUTH, timeout=MIGRATE_TIMEOUT_S)
    return sent, answer


def vcpu_threads_cpus(pid: int) -> list[frozenset[int]]:
    """Each vCPU thread's allowed CPUs (QEMU names them "CPU n/TCG" or "CPU n/KVM")."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().startswith("CPU "):
            status = (task / "status").read_text()
            (allowed,) = re.findall(r"^Cpus_allowed_list:\s*(\S+)$", status, re.MULTILINE)
            found.append(frozenset(parse_cpulist(allowed)))
    return found


def domain_of(host: LabHost, name: str) -> DomainSpec:
    return DomainSpec.from_xml(host.connection.lookupByName(name).XMLDesc(0))


def test_a_guest_moves_live_with_its_disk_copied_and_goes_on_counting(
    migration_lab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
):
    lab = migration_lab
    lab.define_network("labnet")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(lab.images / "base.qcow2"), "64M"], check=True
    )
    with lab_agents(lab, guest_kernel, guest_initramfs) as (a, b):
        web = a.create("web", 1.0, image=str(lab.images / "base.qcow2"), nics=[{"network": "labnet"}])
        b.create("neighbour", 1.0)  # on the level's vNode, which grows when web comes
        before = counting(a.log("web"))
        a_vnode = a.vnodes()["1.0"]
        neighbour_before = b.vms()["neighbour"]["pinning"]

        sent, prepared = migrate(a, b, "web")
        assert prepared is not None
        assert sent.status_code == 200, sent.text
        assert sent.json()["seconds"] > 0
        assert isinstance(sent.json()["downtime_ms"], int)  # libvirt measured it

        committed = b.http.post("/api/v1/migrations/web/commit", headers=AUTH)
        assert committed.status_code == 200, committed.text
        assert committed.json()["state"] == "running"
        # it goes on counting from where it was (a restarted guest would count from 1 again);
        # on a busy machine the target's log may have no count yet when the commit answers
        counting(b.log("web"))
        after = counts(b.log("web"))
        assert after[0] > before
        assert after == list(range(after[0], after[0] + len(after)))
        counting(b.log("web"), after[-1] + 10)
        # pinned to the target's vNode, every vCPU thread; the definition too
        cpus = frozenset(prepared["cpus"])
        assert cpus == frozenset(b.vnodes()["1.0"])
        pid = b.host.qemu_pid("web")
        assert pid is not None
        assert vcpu_threads_cpus(pid) == [cpus]
        moved = domain_of(b.host, "web")
        assert moved.cpuset == cpus
        assert b.host.connection.lookupByName("web").isPersistent()
        # the NIC keeps its MAC and network; the disk is the target's own copy
        assert [(nic.mac, nic.network) for nic in moved.nics] == [(n["mac"], "labnet") for n in web["nics"]]
        # (the same path on every host: the target's daemon sees its own host's file there)
        assert moved.disk == a.host.data / "disks" / "web.qcow2"
        assert (b.host.data / "disks" / "web.qcow2").exists()
        # gone from the source, whose vNode shrank; the target's neighbour was re-pinned
        assert "web" not in [d.name() for d in a.host.connection.listAllDomains()]
        assert "web" not in a.vms()
        assert len(a.vnodes().get("1.0", [])) < len(a_vnode)
        assert not (a.host.data / "disks" / "web.qcow2").exists()
        neighbour = b.vms()["neighbour"]["pinning"]
        assert len(neighbour) > len(neighbour_before)  # re-pinned onto the grown vNode
        assert frozenset(neighbour) == cpus
        assert domain_of(b.host, "neighbour").cpuset == cpus
        neighbour_pid = b.host.qemu_pid("neighbour")
        assert neighbour_pid is not None
        assert vcpu_threads_cpus(neighbour_pid) == [cpus]


def test_a_guest_with_a_cloud_init_seed_moves_with_its_disk_copied_and_the_target_has_its_seed(
    migration_lab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
):
    """libvirt copies no read-only disk: without the seed carried in the
    prepare the target's QEMU cannot open the CD-ROM and the send fails (502)."""
    lab = migration_lab
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(lab.images / "base.qcow2"), "64M"], check=True
    )
    with lab_agents(lab, guest_kernel, guest_initramfs) as (a, b):
        a.create("web", 1.0, image=str(lab.images / "base.qcow2"), ssh_keys=[KEY])
        source_seed = a.host.data / "disks" / "web.cidata.iso"
        image = source_seed.read_bytes()
        assert domain_of(a.host, "web").seed == source_seed
        before = counting(a.log("web"))
        sent, _ = migrate(a, b, "web")
        assert sent.status_code == 200, sent.text
        assert b.http.post("/api/v1/migrations/web/commit", headers=AUTH).status_code == 200
        counting(b.log("web"))
        assert counts(b.log("web"))[0] > before  # it went on, it did not boot again
        # the target's own seed, the same bytes (the same instance-id); the source's is gone
        assert (b.host.data / "disks" / "web.cidata.iso").read_bytes() == image
        assert domain_of(b.host, "web").seed == source_seed  # the same path, the target's file there
        assert not source_seed.exists()
        assert "web" not in [d.name() for d in a.host.connection.listAllDomains()]


def test_a_guest_on_shared_storage_moves_and_its_disk_stays(
    migration_lab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
):
    lab = migration_lab
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(lab.images / "base.qcow2"), "64M"], check=True
    )
    with lab_agents(lab, guest_kernel, guest_initramfs, storage="shared-local") as (a, b):
        # with a cloud-init seed: on shared storage it is one file too, which the guest keeps
        a.create("web", 1.0, image=str(lab.images / "base.qcow2"), ssh_keys=[KEY])
        image = (lab.shared / "web.cidata.iso").read_bytes()
        before = counting(a.log("web"))
        sent, _ = migrate(a, b, "web")
        assert sent.status_code == 200, sent.text
        assert b.http.post("/api/v1/migrations/web/commit", headers=AUTH).status_code == 200
        counting(b.log("web"))
        assert counts(b.log("web"))[0] > before
        assert domain_of(b.host, "web").disk == lab.shared / "web.qcow2"
        assert (lab.shared / "web.qcow2").exists()  # the source forgot it, and kept the shared disk
        assert domain_of(b.host, "web").seed == lab.shared / "web.cidata.iso"
        assert (lab.shared / "web.cidata.iso").read_bytes() == image  # kept, and not written again


def test_a_target_that_refuses_leaves_the_guest_running_on_the_source(
    migration_lab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
):
    with lab_agents(migration_lab, guest_kernel, guest_initramfs) as (a, b):
        memory = b.http.get("/api/v1/host").json()["memory_mib"]["usable"]
        a.create("web", 1.0)
        b_before = (b.vms(), b.vnodes())
        vm = a.http.get("/api/v1/vms/web").json()
        vm["memory_mib"] = memory + 1  # more than the target has
        refused = b.http.post("/api/v1/migrations", json={"vm": vm, "source": "a"}, headers=AUTH)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "not enough memory"
        assert (b.vms(), b.vnodes()) == b_before
        assert b.host.connection.listAllDomains() == []
        last = counting(a.log("web"))
        counting(a.log("web"), last + 5)
        assert a.vms()["web"]["state"] == "running"


def test_a_target_that_dies_mid_way_leaves_the_guest_running_on_the_source(
    migration_lab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
):
    with lab_agents(migration_lab, guest_kernel, guest_initramfs) as (a, b):
        a.create("web", 1.0)
        counting(a.log("web"))
        domain = a.host.connection.lookupByName("web")
        domain.migrateSetMaxSpeed(1, 0)  # 1 MiB/s: the copy takes long enough to be cut
        outcome: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=lambda: outcome.update(sent=migrate(a, b, "web")[0]))
        sender.start()
        wait_until(lambda: domain.jobInfo()[0] != 0 and domain.jobInfo()[4] > 0, 60, "the migration's copy")
        b.host.die()
        sender.join(MIGRATE_TIMEOUT_S)
        assert not sender.is_alive()
        sent = outcome["sent"]
        assert sent.status_code == 502, sent.text
        assert sent.json()["error"] == "migration failed"
        assert a.vms()["web"]["state"] == "running"
        assert domain.state()[0] == 1  # VIR_DOMAIN_RUNNING
        last = counting(a.log("web"))
        counting(a.log("web"), last + 5)  # still counting, on the source
        assert b.http.delete("/api/v1/migrations/web", headers=AUTH).status_code == 204
        assert "web" not in b.vms()
        assert "1.0" not in b.vnodes() or b.vnodes()["1.0"] == []
        assert b.host.children() == []  # nothing of it runs on the dead target


def test_a_migration_past_its_time_limit_is_cancelled_and_the_guest_keeps_running_on_the_source(
    migration_lab,  # noqa: F811
    guest_kernel,
    guest_initramfs,
):
    """At 1 MiB/s the guest's 128 MiB cannot cross in the source's 2-second
    limit: the job is aborted, the send answers 504, the guest goes on
    counting on the source, and the target has nothing left once it aborts."""
    with lab_agents(migration_lab, guest_kernel, guest_initramfs, migration_timeout_s=2.0) as (a, b):
        a.create("web", 1.0)
        counting(a.log("web"))
        domain = a.host.connection.lookupByName("web")
        domain.migrateSetMaxSpeed(1, 0)  # MiB/s
        sent, _ = migrate(a, b, "web")
        assert sent.status_code == 504, sent.text
        assert sent.json()["error"] == "migration timed out"
        assert "cancelled" in sent.json()["detail"]
        assert a.vms()["web"]["state"] == "running"
        assert domain.state()[0] == 1  # VIR_DOMAIN_RUNNING
        assert domain.jobInfo()[0] == 0  # no job left: VIR_DOMAIN_JOB_NONE
        last = counting(a.log("web"))
        counting(a.log("web"), last + 5)  # still counting, on the source
        assert b.host.connection.listAllDomains() == []  # libvirt removed the target's copy
        assert b.http.delete("/api/v1/migrations/web", headers=AUTH).status_code == 204
        assert "web" not in b.vms()
        assert "1.0" not in b.vnodes() or b.vnodes()["1.0"] == []
