"""A RAPID VMM on an agent (sim driver, real SQLite store) with its server on
loopback, wired to fake DS and SLAM peers; and the requests tests make of it.
Waits that RAPID counts in minutes are scaled down through the settings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pinfold.agent.drivers import SimDriver
from pinfold.agent.pools import PoolSpec
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.rapid.agent_backend import AgentBackend
from pinfold.rapid.codec import Writer
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.endpoint import stop_serving, vmm_server
from pinfold.rapid.protocol import OK, Op
from pinfold.rapid.server import RapidServer
from pinfold.rapid.settings import RapidSettings
from pinfold.rapid.state import RapidState
from pinfold.rapid.vmm import VMM, Usage
from pinfold.topology import Topology
from tests.rapid.peers import FakeDS, FakeSLAM, as_register, request, start_vm

FAST = RapidSettings(
    socket_timeout_s=5, as_wait_s=3, ip_wait_s=0.5, as_lookup_tries=2, as_lookup_interval_s=0.2,
    notify_period_s=0.2, recheck_period_s=0.5, helper_spares=0,
)  # fmt: skip


@dataclass
class Rig:
    agent: Agent
    driver: SimDriver
    vmm: VMM
    server: RapidServer
    ds: FakeDS
    slam: FakeSLAM
    state: RapidState

    @property
    def port(self) -> int:
        return self.server.port

    def registered_vm(self, user_id: int) -> tuple[object, ...]:
        """The DS's first registration of the user's VM."""
        return next(m for m in self.ds.of(Op.VM_REGISTER_DS) if m[4] == user_id)


def make_rig(tmp_path: Path, topology: Topology, ds: FakeDS, slam: FakeSLAM, settings: RapidSettings = FAST,
             driver: SimDriver | None = None, pools: tuple[PoolSpec, ...] = (), start: bool = True,
             **config: object) -> Rig:  # fmt: skip
    """With `start` False the VMM is built but not started (nor its server)."""
    driver = driver or SimDriver()
    rapid = RapidConfig(vmm_port=0, vmm_ip="127.0.0.1", ds_ip="127.0.0.1", ds_port=ds.port, gpu_cores=3072)
    rapid = replace(rapid, **config)  # type: ignore[arg-type]
    agent_settings = AgentSettings(
        domain_type="qemu", image_dirs=rapid.image_dirs, disk_dir=tmp_path / "disks", pools=pools
    )
    agent = Agent.open(topology, driver, Store(tmp_path / "agent.db"), agent_settings)
    state = RapidState(agent.store.path)
    usage = Usage(cpu_load_pct=12, free_memory_mb=2048, gpu_util_pct=0, cpu_cores=8)
    vmm = VMM(AgentBackend(agent), state, rapid, settings, lambda: usage, lambda name: (12.5, 512.0))
    server = vmm_server(vmm, "127.0.0.1", 0, 8)
    vmm.config = replace(vmm.config, vmm_port=server.port)
    rig = Rig(agent, driver, vmm, server, ds, slam, state)
    if start:
        begin(rig)
    return rig


def ran_once(tmp_path: Path, topology: Topology, ds: FakeDS, slam: FakeSLAM, forget: int = 0) -> Rig:
    """A VMM that registered, made its helpers and stopped (its driver keeps
    its domains); then the DS's record of messages is cleared and, with
    `forget`, the DS lost its tables and registers VMMs anew under that id."""
    first = make_rig(tmp_path, topology, ds, slam)
    assert first.vmm.registered.wait(10)
    close(first)
    if forget:
        ds.forget(forget)
    ds.received.clear()
    return first


def begin(rig: Rig) -> None:
    rig.server.start()
    rig.vmm.start()


def close(rig: Rig) -> None:
    stop_serving(rig.server, rig.vmm)
    rig.state.close()
    rig.agent.store.close()


def user_ip(rig: Rig, user_id: int) -> str:
    vm = rig.state.vm(user_id)
    assert vm is not None
    return vm.ip


def start_with_as(rig: Rig, user_id: int, confirm: int = OK, **size: int) -> tuple[object, ...]:
    """SLAM_START for a user, with an AS that registers once the VM has an address."""
    answer: list[tuple[object, ...]] = []
    slam = threading.Thread(target=lambda: answer.append(start_vm(rig.port, user_id, **size)))
    slam.start()
    rig.ds.wait_for(lambda got: any(m[0] == Op.VM_REGISTER_DS and m[4] == user_id for m in got))
    assert as_register(rig.port, user_ip(rig, user_id), confirm) == (OK, user_id)
    slam.join(timeout=10)
    return answer[0]


def query(rig: Rig, opcode: int, user_id: int) -> Any:
    """A SLAM query: (OK, [strings]) or (ERROR,)."""
    return query_port(rig.port, opcode, user_id)


def query_port(port: int, opcode: int, user_id: int) -> Any:
    """A SLAM query to the VMM on `port`: (OK, [strings]) or (ERROR,)."""

    def write(out: Writer) -> None:
        out.write_byte(opcode)
        out.write_long(user_id)

    def read(reply):
        status = reply.read_byte()
        return (status, reply.read_string_list()) if status == OK else (status,)

    return request(port, write, read)


def wait_until(condition: Callable[[], object], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def guest_vmm(agent: Agent, config: RapidConfig, **settings: Any) -> tuple[VMM, RapidServer]:
    """A started VMM over an agent that boots real guests, and its started
    server on loopback: three 1-vCPU 128 MiB VMs (a user's and two helpers)
    at 2:1, so that they fit a 2-CPU host; `settings` over FAST's."""
    rapid = FAST.model_copy(update={"helper_memory_mib": 128, "ratio": 2.0, **settings})
    vmm = VMM(AgentBackend(agent), RapidState(agent.store.path), config, rapid, lambda: Usage(5, 1024, 0, 2))
    server = RapidServer(vmm.handle, "127.0.0.1", 0, 4, rapid.socket_timeout_s)
    server.start()
    vmm.start()
    return vmm, server
