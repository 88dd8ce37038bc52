"""`Cloud`: pinfold's VMs as Nova servers, over an openstacksdk `Connection`.

A VM is a server named as the VM, with the metadata `pinfold-owner` (who made
it: one agent, one RAPID VMM) and `pinfold-name` (the VM's name), so that a
restarted owner finds its servers (`servers`) and can reconcile them, and so
that another owner's server of the same name is never touched.

Every call either does what it says, waiting until the server is in the
state asked (polled, up to a deadline), or raises a `PinfoldError` of the
codes of `pinfold.openstack.errors`, translated there once. A create that
fails after the server exists (it went to ERROR, "No valid host"; the
deadline passed) deletes what it made, the server and any port left on it,
before it raises: nothing is left behind.

Nova's fake compute driver (the test lab) suspends a server to status
SUSPENDED while its power state stays RUNNING: states are read from
`status` (and `task_state`, None once an action is over), never from the
power state.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import openstack.config
import openstack.connection
import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk
from openstack.connection import Connection

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.failpoints import crash_point
from pinfold.openstack.errors import fault_error, translate
from pinfold.openstack.flavors import Flavor, ImageNeeds
from pinfold.openstack.levels import Inventory, LevelUse, Provider, by_level
from pinfold.openstack.records import NAME_KEY, OWNER_KEY, STATES, Capacity, Diagnostics, Server, vm_state
from pinfold.openstack.settings import CloudSettings

__all__ = ["NAME_KEY", "OWNER_KEY", "STATES", "Capacity", "Cloud", "Diagnostics", "Server", "vm_state"]

log = logging.getLogger("pinfold.openstack")
#: keystoneauth warns, before it raises, that it could not reach the identity service: the
#: error pinfold raises says that once, in one line (a daemon stops on it with that line only)
logging.getLogger("keystoneauth.identity.generic.base").setLevel(logging.ERROR)

#: how long a server may take to reach the state an action asks for
DEFAULT_WAIT_S = 120.0


class Cloud:
    """The servers of one owner on one cloud (see the module)."""

    def __init__(self, connection: Connection, settings: CloudSettings, owner: str) -> None:
        self.connection = connection
        self.settings = settings
        self.owner = owner
        self.wait_s = DEFAULT_WAIT_S
        #: the id of each server of this owner by name, as last made or found (saves the
        #: name's lookup where an id is enough: a create's address polls)
        self._ids: dict[str, str] = {}

    @classmethod
    def connect(cls, settings: CloudSettings, owner: str) -> Cloud:
        """A connection, authenticated at once: bad credentials or a cloud that
        does not answer are a `PinfoldError` here, not at the first VM."""
        problem = settings.problem()
        if problem:
            raise PinfoldError(ErrorCode.CLOUD_AUTH_FAILED, problem)
        with _translated():
            loader = openstack.config.OpenStackConfig(**settings.loader_options())
            region = loader.get_one(**settings.region_options())
            connection = openstack.connection.Connection(config=region)
            connection.authorize()
        return cls(connection, settings, owner)

    def close(self) -> None:
        self.connection.close()

    # what the cloud offers

    def flavors(self) -> list[Flavor]:
        """Every flavor the project sees, with its extra specs."""
        with _translated():
            return [
                Flavor(
                    flavor.id,
                    flavor.name,
                    flavor.vcpus,
                    flavor.ram,
                    flavor.disk or 0,
                    dict(flavor.extra_specs or {}),
                )
                for flavor in self.connection.compute.flavors(details=True, get_extra_specs=True)
            ]

    def image_id(self, name_or_id: str) -> str:
        return _found_id(self.connection.image.find_image, name_or_id, ErrorCode.UNKNOWN_IMAGE, "image")

    def image_needs(self, name_or_id: str) -> ImageNeeds:
        """What the image asks of a flavor (Glance's min_ram, min_disk, size),
        for `choose_flavor`; `unknown image` for none."""
        image_id = self.image_id(name_or_id)
        with _translated(ErrorCode.UNKNOWN_IMAGE):
            image = self.connection.image.get_image(image_id)
        return ImageNeeds(
            image_id, str(image.name or name_or_id), int(image.min_ram or 0), int(image.min_disk or 0),
            int(image.size or 0),
        )  # fmt: skip

    def network_id(self, name_or_id: str) -> str:
        return _found_id(
            self.connection.network.find_network, name_or_id, ErrorCode.UNKNOWN_NETWORK, "network"
        )

    # the servers' lifecycle

    def create(
        self, name: str, flavor: Flavor, image: str, *, network: str = "", key_name: str = "",
        security_group: str = "", user_data: str = "",
    ) -> Server:  # fmt: skip
        """A server, ACTIVE; the settings' network, key pair and security group
        unless given. On any failure after Nova took the request, the server
        and its ports are deleted before the error is raised."""
        if self.find(name) is not None:
            raise PinfoldError(ErrorCode.DUPLICATE_NAME, f"this owner has a server {name!r} already")
        options: dict[str, Any] = {
            "name": name,
            "flavor_id": flavor.id,
            "image_id": self.image_id(image),
            "metadata": {OWNER_KEY: self.owner, NAME_KEY: name},
        }
        network = network or self.settings.network
        options["networks"] = [{"uuid": self.network_id(network)}] if network else "none"
        if key_name or self.settings.key_name:
            options["key_name"] = key_name or self.settings.key_name
        if security_group or self.settings.security_group:
            options["security_groups"] = [{"name": security_group or self.settings.security_group}]
        if user_data:
            options["user_data"] = base64.b64encode(user_data.encode()).decode()
        with _translated(ErrorCode.UNKNOWN_FLAVOR):
            made = self.connection.compute.create_server(**options)
        crash_point("cloud:accepted")
        try:
            server = self._wait(made.id, "ACTIVE")
        except PinfoldError:
            self._discard(made.id)
            raise
        self._ids[name] = server.id
        return server

    def delete(self, name: str) -> None:
        """Delete the server and wait until Nova has none of that id; `unknown vm` for none."""
        server = self._ours(name)
        with _translated():
            self.connection.compute.delete_server(server.id)
        self._ids.pop(name, None)
        self._wait_gone(server.id)

    def start(self, name: str) -> None:
        self._act(name, "start_server", "ACTIVE")

    def stop(self, name: str) -> None:
        self._act(name, "stop_server", "SHUTOFF")

    def suspend(self, name: str) -> None:
        self._act(name, "suspend_server", "SUSPENDED")

    def resume(self, name: str) -> None:
        self._act(name, "resume_server", "ACTIVE")

    def resize(self, name: str, flavor: Flavor) -> None:
        """Resize to `flavor` and wait for VERIFY_RESIZE: `confirm_resize` or
        `revert_resize` next. Nova marks the server `resize_prep` before it
        answers, so a server back in its status with no task is a resize that
        failed (on one host without `allow_resize_to_same_host`: no valid host)."""
        server = self._ours(name)
        with _translated(ErrorCode.UNKNOWN_FLAVOR):
            self.connection.compute.resize_server(server.id, flavor.id)
        try:
            self._wait(server.id, "VERIFY_RESIZE", failed=frozenset({server.status}))
        except PinfoldError as error:
            raise self._action_failure(server.id, "resize") or error from None

    def confirm_resize(self, name: str) -> None:
        self._act(name, "confirm_server_resize", "ACTIVE")

    def revert_resize(self, name: str) -> None:
        self._act(name, "revert_server_resize", "ACTIVE")

    # what the servers are

    def find(self, name: str) -> Server | None:
        """This owner's server of that name, None for none."""
        with _translated():
            found = self.connection.compute.servers(details=True, name=f"^{re.escape(name)}$")
            mine = [
                server for server in found if self._mine(server) and server.metadata.get(NAME_KEY) == name
            ]
        if not mine:
            self._ids.pop(name, None)
            return None
        self._ids[name] = mine[0].id
        return _server(mine[0])

    def servers(self) -> list[Server]:
        """Every server of this owner (by its metadata), by name."""
        with _translated():
            found = [
                _server(server)
                for server in self.connection.compute.servers(details=True)
                if self._mine(server)
            ]
        return sorted(found, key=lambda server: server.name)

    def addresses(self, name: str) -> list[str]:
        """The fixed IPs of the server's Neutron ports, IPv4 first (as RAPID
        read them from the ports); none yet: empty. The server's id as this
        Cloud last saw it (a server deleted behind its back has no ports: empty)."""
        server_id = self._ids.get(name) or self._ours(name).id
        with _translated():
            ports = sorted(self.connection.network.ports(device_id=server_id), key=lambda port: port.id)
        found = [ipaddress.ip_address(ip["ip_address"]) for port in ports for ip in port.fixed_ips or []]
        return [str(ip) for ip in sorted(found, key=lambda ip: ip.version)]

    def ipv4_addresses(self, name: str) -> list[str]:
        """The server's IPv4 fixed IPs (what RAPID and the agent's flat list show); none for
        a server this owner does not have (gone meanwhile)."""
        try:
            found = self.addresses(name)
        except PinfoldError as error:
            if error.code is ErrorCode.UNKNOWN_VM:
                return []
            raise
        return [address for address in found if ipaddress.ip_address(address).version == 4]

    def diagnostics(self, name: str) -> Diagnostics:
        """The server's diagnostics now (`Diagnostics`). Nova's default policy lets only
        an admin read them: a member gets `cloud auth failed` (Nova's 403); a server
        this owner does not have (gone meanwhile), `unknown vm`."""
        server_id = self._ids.get(name) or self._ours(name).id
        with _translated():
            found = self.connection.compute.get_server_diagnostics(server_id)
        return _diagnostics(server_id, found)

    # capacity and use, from Placement (needs a role Placement's policy lets read, admin by default)

    def providers(self) -> list[Provider]:
        """The cloud's resource providers with traits, inventories and usages."""
        placement = self.connection.placement
        found = []
        with _translated():
            for provider in placement.resource_providers():
                inventories = {
                    item.resource_class: Inventory(
                        item.total, item.reserved or 0, item.allocation_ratio or 1.0
                    )
                    for item in placement.resource_provider_inventories(provider)
                }
                usages = placement.fetch_resource_provider_usages(provider).usages or {}
                traits = placement.get_resource_provider_trait(provider).traits or []
                found.append(Provider(provider.name, frozenset(traits), inventories, dict(usages)))
        return found

    def levels(self) -> dict[float, LevelUse]:
        return by_level(self.providers())

    def capacity(self) -> Capacity:
        """Per level from Placement; for a user Placement refuses, the vCPU quota (`Capacity`)."""
        try:
            return Capacity("placement", self.levels())
        except PinfoldError as error:
            if error.code is not ErrorCode.CLOUD_AUTH_FAILED:
                return Capacity("unknown", {}, f"{error.code.value}: {error.detail}")
        try:
            with _translated():
                limits = self.connection.compute.get_limits().absolute
                cores, used = int(limits.total_cores), int(limits.total_cores_used or 0)
        except PinfoldError as error:
            return Capacity("unknown", {}, f"{error.code.value}: {error.detail}")
        if cores < 0:
            return Capacity("quota", {}, "the project's vCPU quota is unlimited")
        return Capacity("quota", {1.0: LevelUse(1.0, ["quota"], cores, float(cores), used)})

    def quota_cores(self) -> int:
        """The project's vCPU quota (Nova's limits): the cores a user without
        Placement's role can count on; -1 for unlimited."""
        with _translated():
            return int(self.connection.compute.get_limits().absolute.total_cores)

    # inside

    def _action_failure(self, server_id: str, action: str) -> PinfoldError | None:
        """Why the server's last `action` failed, from Nova's instance actions
        (a failed resize leaves no fault on the server): the traceback names
        the cause where the policy shows it (admin); else the failed step,
        and a migration the conductor could not schedule is no valid host."""
        with _translated():
            compute = self.connection.compute
            mine = [item for item in compute.server_actions(server_id) if item.action == action]
            if not mine:
                return None
            events = compute.get_server_action(mine[0].request_id, server_id).events or []
        failed = [event for event in events if getattr(event, "result", None) == "Error"]
        said = " ".join(str(getattr(event, "traceback", "") or "") for event in failed)
        names = [str(getattr(event, "event", "")) for event in failed]
        steps = ", ".join(names) or "no step"
        if "NoValidHost" in said or "conductor_migrate_server" in names:
            return PinfoldError(
                ErrorCode.NO_VALID_HOST,
                f"Nova found no valid host for the {action} (failed: {steps}; on one host, Nova needs "
                "allow_resize_to_same_host)",
            )
        return PinfoldError(ErrorCode.HYPERVISOR_FAILED, f"Nova's {action} failed (failed: {steps})")

    def _mine(self, server: Any) -> bool:
        return bool((server.metadata or {}).get(OWNER_KEY) == self.owner)

    def _ours(self, name: str) -> Server:
        server = self.find(name)
        if server is None:
            raise PinfoldError(ErrorCode.UNKNOWN_VM, f"this owner has no server {name!r}")
        return server

    def _act(self, name: str, action: str, then: str) -> None:
        server = self._ours(name)
        call: Callable[[str], Any] = getattr(self.connection.compute, action)
        with _translated():
            call(server.id)
        self._wait(server.id, then)

    def _get(self, server_id: str) -> Server | None:
        try:
            with _translated():
                return _server(self.connection.compute.get_server(server_id))
        except PinfoldError as error:
            if error.code is ErrorCode.UNKNOWN_VM:
                return None
            raise

    def _wait(self, server_id: str, status: str, failed: frozenset[str] = frozenset()) -> Server:
        """Poll until the server has `status` and no task under way. ERROR,
        or (for an action Nova marks with a task at once) one of `failed`
        with no task left, is the action's failure: the server's fault
        translated (`no valid host`...). The deadline is a failure too."""
        deadline = time.monotonic() + self.wait_s
        for pause in _pauses():
            server = self._get(server_id)
            if server is None:
                raise PinfoldError(
                    ErrorCode.UNKNOWN_VM, f"server {server_id} went while waiting for {status}"
                )
            if server.status == status and server.task_state is None:
                return server
            if server.status == "ERROR" or (server.status in failed and server.task_state is None):
                raise fault_error(server.fault or f"server {server.name} is {server.status}, not {status}")
            if time.monotonic() + pause > deadline:
                raise PinfoldError(
                    ErrorCode.HYPERVISOR_FAILED,
                    f"server {server.name} is {server.status} (task {server.task_state}) "
                    f"after {self.wait_s:g} s, not {status}",
                )
            time.sleep(pause)
        raise AssertionError("unreachable")

    def _wait_gone(self, server_id: str) -> None:
        deadline = time.monotonic() + self.wait_s
        for pause in _pauses():
            server = self._get(server_id)
            if server is None:
                return
            if time.monotonic() + pause > deadline:
                raise PinfoldError(
                    ErrorCode.HYPERVISOR_FAILED,
                    f"server {server.name} is still {server.status} after {self.wait_s:g} s",
                )
            time.sleep(pause)

    def _discard(self, server_id: str) -> None:
        """Delete a server a create made and its ports; a failure here is logged
        (the create's own error is the one raised)."""
        try:
            with _translated():
                self.connection.compute.delete_server(server_id, ignore_missing=True)
            self._wait_gone(server_id)
            with _translated():
                for port in list(self.connection.network.ports(device_id=server_id)):
                    self.connection.network.delete_port(port, ignore_missing=True)
        except PinfoldError as error:
            log.warning("OpenStack: server %s of a failed create may be left: %s", server_id, error)


def _found_id(find: Callable[..., Any], name_or_id: str, missing: ErrorCode, what: str) -> str:
    """The id of the cloud's `what` of that name or id (openstacksdk's `find_*`); `missing` for none.
    A UUID is taken as the id without asking (Nova refuses an unknown one: `missing` too,
    translated once), which saves a call per create when ids are configured, as RAPID's are."""
    try:
        return str(uuid.UUID(name_or_id))
    except ValueError:
        pass
    with _translated(missing):
        try:
            # ignore_missing=True is deprecated (openstacksdk 6 drops it): a miss raises
            found = find(name_or_id, ignore_missing=False)
        except sdk.NotFoundException:  # find's own "No Image found for ...", no HTTP status
            raise PinfoldError(missing, f"the cloud has no {what} {name_or_id!r}") from None
    return str(found.id)


def _server(server: Any) -> Server:
    flavor = server.flavor
    fault = server.fault or {}
    return Server(
        id=server.id,
        name=server.name,
        status=server.status or "",
        flavor=str(getattr(flavor, "original_name", None) or getattr(flavor, "name", None) or ""),
        vcpus=int(getattr(flavor, "vcpus", 0) or 0),
        memory_mib=int(getattr(flavor, "ram", 0) or 0),
        task_state=server.task_state,
        fault=str(fault.get("message", "")) if isinstance(fault, dict) else str(fault),
        metadata=dict(server.metadata or {}),
    )


def _diagnostics(server_id: str, found: Any) -> Diagnostics:
    """openstacksdk's ServerDiagnostics as the plain record (see `Diagnostics`)."""
    cpus = list(found.cpu_details or [])
    times = _all([cpu.get("time") for cpu in cpus])
    shares = _all([cpu.get("utilisation") for cpu in cpus])
    memory = found.memory_details or {}
    return Diagnostics(
        server_id=server_id,
        at_s=time.monotonic(),
        cpu_ns=None if times is None else int(sum(times)),
        cpu_utilisation=None if shares is None else sum(shares) / len(shares),
        vcpus=len(cpus),
        memory_used_mib=_number(memory.get("used")),
        memory_maximum_mib=_number(memory.get("maximum")),
    )


def _all(values: list[Any]) -> list[float] | None:
    """Every vCPU's figure, None unless every vCPU has one (and there is a vCPU)."""
    if not values or any(value is None for value in values):
        return None
    return [float(value) for value in values]


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _pauses() -> Iterator[float]:
    """0.1 s, growing to 1 s: quick for the fake driver, gentle for a real cloud."""
    pause = 0.1
    while True:
        yield pause
        pause = min(1.0, pause * 1.5)


@contextmanager
def _translated(missing: ErrorCode = ErrorCode.UNKNOWN_VM) -> Iterator[None]:
    """Every openstacksdk/keystoneauth/requests exception in the block as a `PinfoldError`."""
    try:
        yield
    except (sdk.SDKException, ksa.ClientException, requests.RequestException) as error:
        raise translate(error, missing) from None
