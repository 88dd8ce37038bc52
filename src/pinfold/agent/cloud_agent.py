"""`CloudAgent`: the agent's API over an OpenStack cloud (`pinfold agent --driver openstack`).

pinfold cannot pin on a cloud's hosts (docs/design.md, "Levels on
OpenStack"), so no `HostAllocator` is involved: a VM is a Nova server
(`pinfold.openstack.cloud.Cloud`), made from the flavor `choose_flavor` picks
for its sizes and level, and the cloud's Placement (or the project's quota)
says what room each level has. This is the thin shell the HTTP API
(`agent.api`) and the heartbeat call instead of `Agent`, with the same
methods where they mean something on a cloud; what is the cloud's own work
(waiting for a state, cleaning up a failed create) is `Cloud`'s.

The store keeps the VMs as for libvirt (`agent.store`, no vNodes): a create
is stored with a pending mark before Nova is asked, so a crash at any point
is repaired at the next start (`start_up`):

| store | pending | cloud | action |
|---|---|---|---|
| VM | create | server (any state) | delete it and its ports, forget the VM (never answered) |
| VM | create | no server | forget the VM |
| VM | delete | server | delete it, forget the VM |
| VM | delete | no server | forget the VM |
| VM | none | server | keep it, its state as Nova has it |
| VM | none | no server | report it missing (never recreated) |
| none | - | server of this owner | report it unknown, never touch it |

Servers are found by their `pinfold-owner` metadata (this agent's `owner`),
never by name alone. Errors are the cloud's codes (`pinfold.openstack.errors`)
as `AgentError`s: `quota exceeded`, `no valid host` 409 (the cloud deleted
what it made before answering), `unknown flavor`/`unknown image` 422, `cloud
auth failed`/`cloud unreachable` 502.

A resize is Nova's: `resize` leaves the server in VERIFY_RESIZE (state
`other`), then `confirm_resize` keeps the new flavor or `revert_resize`
goes back; the stored sizes change at the confirm.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pinfold.agent import seed
from pinfold.agent.core import AgentError
from pinfold.agent.reconcile import Action, Step
from pinfold.agent.service import AgentSnapshot
from pinfold.agent.store import Pending, Store, StoredVM
from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.failpoints import crash_point
from pinfold.model.lifecycle import Action as LifecycleAction
from pinfold.model.lifecycle import VMState, transition
from pinfold.model.vm import NIC, VMRequest
from pinfold.openstack.flavors import Flavor, ImageNeeds, choose_flavor, cloud_level
from pinfold.openstack.records import Capacity, Server, vm_state
from pinfold.placement import Demand, HostColumns, HostSnapshot, VMSpec, level_key
from pinfold.placement.policies import progress

if TYPE_CHECKING:  # openstacksdk is loaded only by an agent that runs on a cloud (the daemon)
    from pinfold.openstack.cloud import Cloud

__all__ = ["CloudAgent", "CloudAgentSettings", "capacity_status"]

log = logging.getLogger("pinfold.agent.cloud")

#: a cloud VM has no vNode: the store's layout stays empty
NO_VNODES = HostSnapshot({}, ())
T = TypeVar("T")


@dataclass(frozen=True)
class CloudAgentSettings:
    """`image`: the Glance image (name or id) of a VM whose create names none;
    `flavor`: a flavor every VM gets ("": the smallest that fits, of its level);
    the network is the cloud settings' (`CloudSettings.network`).
    `capacity_ttl_s`: how long the cloud's capacity is kept before Placement is
    asked again (a change this agent makes drops it at once)."""

    image: str = ""
    flavor: str = ""
    capacity_ttl_s: float = 10.0


def capacity_status(capacity: Capacity) -> dict[str, Any]:
    """The cloud's capacity in SlackVM's /status shape: per level, `pcap` its
    physical CPUs, `palloc` the vCPUs placed, `vavail` those free; no CPU moves
    between levels on a cloud (`cpu.avail` and `vpotential` are 0); memory free
    in `mem.avail`."""
    subset = {
        level_key(level): {
            "pcap": use.cpus,
            "palloc": use.vcpus_used,
            "vavail": use.vcpus_free,
            "vpotential": 0,
        }
        for level, use in capacity.levels.items()
    }
    memory_free = sum(max(0.0, use.memory_mib - use.memory_used_mib) for use in capacity.levels.values())
    return {"cpu": {"avail": 0, "subset": subset}, "mem": {"avail": memory_free, "subset": {}}}


class CloudAgent:
    """The agent's VMs as one cloud's servers (see the module). Build it, then
    `start_up`; or `CloudAgent.open`."""

    def __init__(self, cloud: Cloud, store: Store, settings: CloudAgentSettings | None = None) -> None:
        self.cloud = cloud
        self.store = store
        self.settings = settings or CloudAgentSettings()
        self.lock = threading.RLock()
        self.vms: dict[str, StoredVM] = {}
        self.report: list[Step] = []
        self._capacity: tuple[float, Capacity] | None = None

    @classmethod
    def open(cls, cloud: Cloud, store: Store, settings: CloudAgentSettings | None = None) -> CloudAgent:
        agent = cls(cloud, store, settings)
        agent.start_up()
        return agent

    def close(self) -> None:
        self.store.close()
        self.cloud.close()

    # start: the store and the cloud agree (the module's table)

    def start_up(self) -> list[Step]:
        _, stored = self.store.load()
        servers = {server.name: server for server in self.cloud.servers()}
        steps = [self._reconcile(vm, servers.get(name)) for name, vm in stored.items()]
        steps += [Step(Action.UNKNOWN, name) for name in sorted(servers) if name not in stored]
        self.report = steps
        return steps

    def _reconcile(self, vm: StoredVM, server: Server | None) -> Step:
        name = vm.spec.name
        if vm.pending in (Pending.CREATE, Pending.DELETE):
            if server is None:
                self.store.forget_vm(name, NO_VNODES)
                return Step(Action.FORGET, name)
            try:
                self.cloud.delete(name)
            except PinfoldError as error:
                if error.code is not ErrorCode.UNKNOWN_VM:  # gone meanwhile: nothing left to delete
                    self.vms[name] = vm  # tried again at the next start
                    return Step(Action.DELETE, name, f"{error.code.value}: {error.detail}")
            self.store.forget_vm(name, NO_VNODES)
            return Step(Action.DELETE, name)
        if server is None:
            self._keep(vm, VMState.MISSING, None)
            return Step(Action.MISSING, name)
        self._keep(vm, vm_state(server), None)
        return Step(Action.KEEP, name)

    # requests

    def create(self, request: VMRequest) -> StoredVM:
        """Stored (pending) first, then the flavor chosen and the server made;
        any refusal forgets the VM, and the cloud has left nothing behind."""
        network = _network_of(request.nics)
        image = request.image or self.settings.image
        if not image:
            raise AgentError(ErrorCode.UNKNOWN_IMAGE, "no image asked and no default image (--os-image)")
        with self.lock:
            if request.name in self.vms:
                raise AgentError(ErrorCode.DUPLICATE_NAME, request.name)
            vm = StoredVM(request.spec, request.owner, image, VMState.CREATING, Pending.CREATE)
            self.store.save_vm(vm, NO_VNODES)
            self.vms[request.name] = vm
        try:
            needs = self._cloud(lambda: self.cloud.image_needs(image))
            flavor = self._flavor(request.vcpus, request.memory_mib, request.ratio, needs)
            user_data = _user_data(request)
            server = self._cloud(
                lambda: self.cloud.create(
                    request.name, flavor, needs.id, network=network, user_data=user_data
                )
            )
        except AgentError:
            with self.lock:
                self.store.forget_vm(request.name, NO_VNODES)
                self.vms.pop(request.name, None)
            raise
        crash_point("create:made")
        self._capacity = None
        with self.lock:
            return self._keep(vm, vm_state(server), None)

    def delete(self, name: str) -> None:
        with self.lock:
            vm = self._idle(name)
            self._keep(vm, VMState.DELETING, Pending.DELETE)
        try:
            self._cloud(lambda: self.cloud.delete(name))
        except AgentError as error:
            if error.code is not ErrorCode.UNKNOWN_VM:  # gone already: nothing left to delete
                with self.lock:
                    self._keep(vm, vm.state, None)
                raise
        self._capacity = None
        with self.lock:
            self.store.forget_vm(name, NO_VNODES)
            self.vms.pop(name, None)

    def start(self, name: str) -> StoredVM:
        return self._act(name, LifecycleAction.START, self.cloud.start)

    def shutdown(self, name: str) -> StoredVM:
        return self._act(name, LifecycleAction.SHUTDOWN, self.cloud.stop)

    def suspend(self, name: str) -> StoredVM:
        return self._act(name, LifecycleAction.SUSPEND, self.cloud.suspend)

    def resume(self, name: str) -> StoredVM:
        return self._act(name, LifecycleAction.RESUME, self.cloud.resume)

    def resize(self, name: str, vcpus: int = 0, memory_mib: int = 0, flavor: str = "") -> StoredVM:
        """Nova's resize to `flavor`, or to the smallest flavor of the VM's level
        that fits `vcpus` and `memory_mib`; the server waits in VERIFY_RESIZE
        (`confirm_resize` or `revert_resize` next)."""
        with self.lock:
            vm = self._idle(name)
        vcpus, memory_mib = vcpus or vm.spec.vcpus, memory_mib or vm.spec.memory_mib
        chosen = self._flavor(vcpus, memory_mib, vm.spec.ratio, explicit=flavor)
        server = self._server(name)
        if chosen.id == server.flavor or chosen.name == server.flavor:
            raise AgentError(ErrorCode.INVALID, f"{name} has flavor {server.flavor} already")
        self._cloud(lambda: self.cloud.resize(name, chosen))
        self._capacity = None
        with self.lock:
            return self._keep(vm, VMState.OTHER, None)

    def confirm_resize(self, name: str) -> StoredVM:
        """Keep the new flavor: the stored sizes become the flavor's."""
        with self.lock:
            vm = self._idle(name)
        self._cloud(lambda: self.cloud.confirm_resize(name))
        server = self._server(name)
        with self.lock:
            self.store.resize_vm(name, server.vcpus, server.memory_mib, NO_VNODES)
            spec = VMSpec(name, server.vcpus, server.memory_mib, vm.spec.ratio)
            resized = StoredVM(spec, vm.owner, vm.image, vm.state, None, vm.domain)
            return self._keep(resized, vm_state(server), None)

    def revert_resize(self, name: str) -> StoredVM:
        with self.lock:
            vm = self._idle(name)
        self._cloud(lambda: self.cloud.revert_resize(name))
        self._capacity = None
        with self.lock:
            return self._keep(vm, vm_state(self._server(name)), None)

    # reads

    def snapshot(self) -> AgentSnapshot:
        """The VMs with their states as Nova has them now (one list of the
        owner's servers; the stored states when the cloud does not answer),
        and the cloud's capacity in SlackVM's /status shape."""
        self._follow_servers()
        status = self.status()
        with self.lock:
            vms = dict(self.vms)
        return AgentSnapshot(
            vms=vms, pins={name: [] for name in vms}, vm_count=len(vms), status=status, vnodes={},
            usable_cpus=(), host_count=0, free_cpus=0, memory_usable_mib=0, memory_allocated_mib=0,
            memory_free_mib=0, pools={}, unknown_domains=self.unknown_domains(), stale_pins={},
        )  # fmt: skip

    def capacity(self) -> Capacity:
        """The cloud's capacity per level (`Cloud.capacity`), read at most every `capacity_ttl_s`."""
        now = time.monotonic()
        if self._capacity is None or now - self._capacity[0] >= self.settings.capacity_ttl_s:
            self._capacity = (now, self.cloud.capacity())
        return self._capacity[1]

    def status(self) -> dict[str, Any]:
        return capacity_status(self.capacity())

    def cloud_view(self) -> dict[str, Any]:
        """The cloud's capacity as `GET /api/v1/host` shows it under `cloud`: where it
        comes from (`placement`, `quota`, `unknown` with why) and, per level, its hosts,
        CPUs and vCPUs (capacity, placed, free)."""
        capacity = self.capacity()
        levels = {
            level_key(level): {
                "hosts": list(use.hosts), "cpus": use.cpus, "vcpus": use.vcpus,
                "vcpus_used": use.vcpus_used, "vcpus_free": use.vcpus_free,
                "memory_mib": use.memory_mib, "memory_used_mib": use.memory_used_mib,
            }
            for level, use in capacity.levels.items()
        }  # fmt: skip
        return {"source": capacity.source, "detail": capacity.detail or None, "levels": levels}

    def progress(self, vcpus: int, memory_mib: int, ratio: float) -> float:
        """SlackVM's progress score over the cloud's totals: a VM takes its
        vCPUs over its level in physical CPUs; the CPUs free are each level's
        free vCPUs over its level."""
        levels = self.capacity().levels.values()
        cpus = float(sum(use.cpus for use in levels)) or 1.0
        free = sum(use.vcpus_free / use.level for use in levels)
        memory = float(sum(use.memory_mib for use in levels)) or float(memory_mib or 1)
        used = float(sum(use.memory_used_mib for use in levels))
        columns = HostColumns.of(
            usable_cpus=np.array([cpus]), usable_mem=np.array([memory]),
            free_cpus=np.array([min(cpus, free)]), mem_alloc=np.array([used]),
        )  # fmt: skip
        demand = Demand(cpus=np.array([float(math.ceil(vcpus / ratio))]), memory_mib=float(memory_mib))
        return float(progress(columns, demand)[0])

    def user_vms(self) -> list[StoredVM]:
        with self.lock:
            return list(self.vms.values())

    def find(self, name: str) -> StoredVM | None:
        with self.lock:
            return self.vms.get(name)

    def pinning(self, name: str) -> list[int]:
        return []

    def unknown_domains(self) -> list[str]:
        """Servers of this owner that no stored VM names, as found at start: reported, never touched."""
        return [step.name for step in self.report if step.action is Action.UNKNOWN]

    def addresses(self, name: str) -> list[str]:
        """The IPv4 fixed IPs of the server's ports (none yet, or gone: empty)."""
        try:
            return self.cloud.ipv4_addresses(name)
        except PinfoldError:  # the cloud does not answer: no address to show, the VM's view goes on
            return []

    def nic_addresses(self, name: str) -> list[tuple[NIC, list[str]]]:
        """No NICs of the agent's: a cloud VM's ports are Neutron's (`addresses`)."""
        with self.lock:
            self._get(name)
        return []

    def networks(self) -> list[dict[str, Any]]:
        return []

    def server_view(self, name: str) -> dict[str, Any]:
        """The server behind VM `name` as the API shows it: Nova's id, status and flavor."""
        try:
            server = self.cloud.find(name)
        except PinfoldError:
            return {"server": None}
        if server is None:
            return {"server": None}
        return {"server": {"id": server.id, "status": server.status, "flavor": server.flavor}}

    # inside

    def _flavor(
        self, vcpus: int, memory_mib: int, ratio: float, image: ImageNeeds | None = None, explicit: str = ""
    ) -> Flavor:
        flavors = self._cloud(self.cloud.flavors)
        return self._cloud(
            lambda: choose_flavor(
                flavors, vcpus, memory_mib, explicit=explicit or self.settings.flavor,
                level=cloud_level(flavors, ratio), image=image,
            )
        )  # fmt: skip

    def _act(self, name: str, action: LifecycleAction, call: Callable[[str], None]) -> StoredVM:
        """The lifecycle table decides on the state Nova has now, then the cloud acts."""
        with self.lock:
            vm = self._idle(name)
        state = vm_state(self._server(name))
        then = self._cloud(lambda: transition(state, action))
        self._cloud(lambda: call(name))
        with self.lock:
            return self._keep(vm, then, None)

    def _follow_servers(self) -> None:
        """Each idle stored VM's state as Nova has it (missing: its server is gone)."""
        try:
            servers = {server.name: server for server in self.cloud.servers()}
        except PinfoldError as error:
            log.warning("the cloud's servers could not be listed: %s", error)
            return
        with self.lock:
            for name, vm in list(self.vms.items()):
                if vm.pending is not None:
                    continue
                server = servers.get(name)
                state = VMState.MISSING if server is None else vm_state(server)
                if state is not vm.state:
                    self._keep(vm, state, None)

    def _server(self, name: str) -> Server:
        server = self._cloud(lambda: self.cloud.find(name))
        if server is None:
            raise AgentError(ErrorCode.UNKNOWN_VM, f"{name}: its server is gone from the cloud")
        return server

    def _get(self, name: str) -> StoredVM:
        vm = self.vms.get(name)
        if vm is None:
            raise AgentError(ErrorCode.UNKNOWN_VM, name)
        return vm

    def _idle(self, name: str) -> StoredVM:
        vm = self._get(name)
        if vm.pending is not None:
            raise AgentError(ErrorCode.INVALID, f"{name} is busy ({vm.pending.value} under way)")
        return vm

    def _keep(self, vm: StoredVM, state: VMState, pending: Pending | None) -> StoredVM:
        """Store and remember `vm` in `state` (the caller holds the lock, or is starting)."""
        kept = StoredVM(vm.spec, vm.owner, vm.image, state, pending, vm.domain)
        self.store.set_state(vm.spec.name, state, pending)
        self.vms[vm.spec.name] = kept
        return kept

    @staticmethod
    def _cloud(call: Callable[[], T]) -> T:
        """`call`, its `PinfoldError` (the cloud's, translated once) as an `AgentError`."""
        try:
            return call()
        except AgentError:
            raise
        except PinfoldError as error:
            raise AgentError(error.code, error.detail) from None


def _network_of(nics: tuple[NIC, ...]) -> str:
    """The Neutron network of a VM's one NIC ("": the settings' network). A
    cloud's ports are Neutron's: a bridge, a MAC or a second NIC is refused."""
    if not nics:
        return ""
    if len(nics) > 1 or nics[0].bridge or nics[0].mac:
        raise AgentError(
            ErrorCode.INVALID_REQUEST,
            "on a cloud a VM has one NIC, on a Neutron network by name or id (no bridge, no MAC)",
        )
    return nics[0].network


def _user_data(request: VMRequest) -> str:
    """The user's user data; with keys and none, the seed's `#cloud-config` giving them."""
    if request.user_data or not request.ssh_keys:
        return request.user_data
    return seed.user_data(request.name, request.ssh_keys, "").decode()
