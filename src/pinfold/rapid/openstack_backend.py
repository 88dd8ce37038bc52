"""`OpenStackBackend`: RAPID's `Backend` over a cloud (`pinfold.openstack.Cloud`),
as RAPID's own `openStackSupport=1` (PROTOCOL.md section 4.4).

What RAPID did, and what is done here:

- flavor: RAPID's rule (`rapid.flavors.suitable_type`, each size rounded
  down to its type table) names a type `<vcpus>_<memory>_<disk>`; the
  flavor configured for that type (`defaultFlavorId` for 1_1024_20,
  `type2_1024_20FlavorId`, `type4_1024_20FlavorId`) if any, else the
  cloud's smallest flavor that fits the type (RAPID failed for the 14 types
  without a flavor id; here they get a flavor). The type's 20 or 40 GB disk
  is RAPID's nominal size, not asked of the flavor (a flavor's disk may be
  0: the image's size). Helper VMs always take `type4_1024_20FlavorId`
  (the smallest 4 vCPU, 1024 MB flavor without it), as RAPID. On a cloud
  set up for pinfold's levels (a flavor requires a `CUSTOM_PINFOLD_LEVEL_*`
  trait; docs/design.md, "Levels on OpenStack"), only flavors of RAPID's
  level (`[rapid] ratio`) are taken; on another cloud, flavors of no level
  (never a dedicated one by chance of size, nor because RAPID's ratio is 1).
  At a create the image is read first: a flavor short of its `min_ram`,
  `min_disk` or size is passed over (Nova refused it with a bare 400). A
  resize keeps RAPID's rule alone (the server's image is not read again).
- image: the Glance id or name the VMM asks for (`RapidConfig.user_image`
  by the user's osType, `helper_image`: `androidHelperVmImageId` as RAPID),
  else, for a request without one (or with a path: libvirt's base images
  mean nothing to a cloud), the kind's default (`rapid_image`).
- network, key pair, security group: `networkId`, `publicKey`,
  `offloadingSecurity` (the cloud's settings).
- addresses: the IPv4 fixed IPs of the server's Neutron ports, as RAPID.
- resize: Nova's resize, then the confirm at once: the VMM's Backend has
  no confirm step (the VMM answers SLAM_CONFIRM_VMFLV_VMM OK for a change
  already in effect), and a resize left in VERIFY_RESIZE would be confirmed
  by Nova itself after `resize_confirm_window` anyway. A resize to the
  flavor the server has is nothing to do (Nova refuses it).
- cores: the physical CPUs of the cloud's compute hosts (Placement's
  inventories, all levels); for a user Placement's policy refuses (admin
  only by default), the project's vCPU quota; 0 when neither is known.
- CPU and memory per VM (SLAM_GET_VMCPU_VMM, SLAM_GET_VMMEM_VMM; `vm_usage`):
  RAPID's Ceilometer meters (cpu_util, memory.usage) are gone from OpenStack;
  here Nova's server diagnostics (microversion 2.48's standard format). CPU %
  as Ceilometer's cpu_util: the rate of the vCPUs' CPU time between this
  reading and the server's previous one, per vCPU (`pinfold.openstack.usage`);
  the first reading of a server (or one after its counter restarted) gives the
  driver's own `utilisation` where it reports one (the fake driver: 15 %),
  else no figure (libvirt reports none: a figure from the second query on).
  Memory in use: `memory_details.used` (MiB). One reading answers the queries
  of the next `reading_ttl_s` (5 s), so the SLAM's CPU and memory queries cost
  one Nova call per VM. Nova's default policy gives diagnostics to admins only:
  for a member (Nova's 403) there are no figures (the queries answer ERROR),
  logged, and not asked again for a minute.
- disk (SLAM_GET_VMDISK_VMM): no figure (None). RAPID sent the allocated bytes
  (Ceilometer's disk.allocation); no OpenStack API gives them: the diagnostics'
  `disk_details` are I/O counters, os-simple-tenant-usage and Placement give
  the flavor's disk (a reservation, not what the disk takes). Since a VM is
  listed only with both figures, the query answers ERROR on OpenStack.

Servers carry the metadata `pinfold-owner` = this VMM (`owner`), so a
restarted VMM lists exactly its own servers (`vms`) and RAPID's reconcile
removes those its records do not know.
"""

from __future__ import annotations

import logging
import threading
import time

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from pinfold.openstack.cloud import Cloud, Diagnostics, Server, vm_state
from pinfold.openstack.flavors import Flavor, ImageNeeds, choose_flavor, cloud_level
from pinfold.openstack.settings import CloudSettings, rapid_image
from pinfold.openstack.usage import cpu_percent
from pinfold.rapid.flavors import suitable_type
from pinfold.rapid.vms import START_DISK_GB

__all__ = ["HELPER_PREFIX", "OpenStackBackend", "vm_state"]

log = logging.getLogger("pinfold.rapid")

HELPER_PREFIX = "rapid-helper-"
#: how long the cloud's core count is kept before Placement is asked again
CORES_TTL_S = 60.0
#: how long a reading of a server's diagnostics answers the SLAM's queries: the SLAM asks
#: CPU, memory and disk one after the other, which one reading answers (one Nova call)
READING_TTL_S = 5.0
#: how long the back-end stops asking for diagnostics after the cloud refused them (403)
FORBIDDEN_TTL_S = 60.0
#: RAPID's helper type (PROTOCOL.md 4.4): 4 vCPUs, 1024 MB, 20 GB
HELPER_TYPE = "4_1024_20"


class OpenStackBackend:
    """RAPID's VMs as servers of one cloud (see the module)."""

    def __init__(self, cloud: Cloud, ratio: float = 1.0) -> None:
        self.cloud = cloud
        self.settings: CloudSettings = cloud.settings
        self.ratio = ratio
        self._cores: tuple[float, int] | None = None  # (when read, cores)
        self.reading_ttl_s = READING_TTL_S
        #: each server's last diagnostics reading and the CPU % it gave, by name
        self._readings: dict[str, tuple[Diagnostics, float | None]] = {}
        self._readings_lock = threading.Lock()
        self._forbidden_until = 0.0

    @classmethod
    def connect(cls, settings: CloudSettings, owner: str, ratio: float = 1.0) -> OpenStackBackend:
        """Authenticated at once: bad credentials are a `PinfoldError` here, at start."""
        return cls(Cloud.connect(settings, owner), ratio)

    def create(self, request: VMRequest) -> None:
        """The image is read first: its min_ram and min_disk narrow the flavor choice."""
        image = self.cloud.image_needs(self.image(request))
        flavor = self.flavor(request.name, request.vcpus, request.memory_mib, image)
        self.cloud.create(request.name, flavor, image.id, user_data=request.user_data)

    def delete(self, name: str) -> None:
        self.cloud.delete(name)
        self._readings.pop(name, None)

    def suspend(self, name: str) -> None:
        self.cloud.suspend(name)

    def resume(self, name: str) -> None:
        self.cloud.resume(name)

    def resize(self, name: str, vcpus: int, memory_mib: int) -> None:
        server = self._server(name)
        flavor = self.flavor(name, vcpus, memory_mib)
        if flavor.name == server.flavor or flavor.id == server.flavor:
            return
        self.cloud.resize(name, flavor)
        self.cloud.confirm_resize(name)

    def vms(self) -> dict[str, VMState]:
        return {server.name: vm_state(server) for server in self.cloud.servers()}

    def state(self, name: str) -> VMState | None:
        server = self.cloud.find(name)
        return None if server is None else vm_state(server)

    def addresses(self, name: str) -> list[str]:
        return self.cloud.ipv4_addresses(name)

    def hypervisor_name(self, name: str) -> str | None:
        """The server's id (RAPID's `ipShellPath` script is libvirt's: it finds nothing here)."""
        server = self.cloud.find(name)
        return None if server is None else server.id

    def disk_allocated_bytes(self, name: str) -> int | None:
        return None

    def vcpus(self, name: str) -> int | None:
        server = self.cloud.find(name)
        return None if server is None else server.vcpus

    def cores(self) -> int:
        """Read at most every CORES_TTL_S (the VMM asks at each heartbeat; a cloud's
        capacity changes when hosts are added, not every few seconds)."""
        now = time.monotonic()
        if self._cores is None or now - self._cores[0] >= CORES_TTL_S:
            self._cores = (now, self._read_cores())
        return self._cores[1]

    def vm_usage(self, name: str) -> tuple[float | None, float | None] | None:
        """(CPU use in % of the server's vCPUs, memory in use in MiB) from Nova's
        diagnostics, each None where there is no figure; None for no reading at all
        (the cloud refuses diagnostics to this user, the server is gone). A reading
        younger than `reading_ttl_s` answers again; a new one gives the CPU rate
        since the previous one (`cpu_percent`: the first, the driver's utilisation
        or none)."""
        with self._readings_lock:
            kept = self._readings.get(name)
            if kept is not None and time.monotonic() - kept[0].at_s < self.reading_ttl_s:
                return kept[1], kept[0].memory_used_mib
            reading = self._diagnostics(name)
            if reading is None:
                self._readings.pop(name, None)
                return None
            cpu = cpu_percent(kept[0] if kept is not None else None, reading)
            self._readings[name] = (reading, cpu)
            return cpu, reading.memory_used_mib

    def _diagnostics(self, name: str) -> Diagnostics | None:
        """The server's diagnostics, None where there are none: a refusal (Nova's
        403: admin only by default) is remembered for FORBIDDEN_TTL_S and logged
        once then, so that a member's VMM does not ask Nova per VM per query."""
        if time.monotonic() < self._forbidden_until:
            return None
        try:
            return self.cloud.diagnostics(name)
        except PinfoldError as error:
            if error.code is ErrorCode.CLOUD_AUTH_FAILED:
                self._forbidden_until = time.monotonic() + FORBIDDEN_TTL_S
                log.warning(
                    "RAPID: the cloud refuses this user its servers' diagnostics (admin only by "
                    "Nova's default policy): no CPU or memory figures for %g s: %s",
                    FORBIDDEN_TTL_S, error.detail,
                )  # fmt: skip
            elif error.code is not ErrorCode.UNKNOWN_VM:
                log.warning("RAPID: no diagnostics for %s: %s", name, error)
            return None

    def _read_cores(self) -> int:
        capacity = self.cloud.capacity()
        if capacity.source == "unknown":
            log.warning("RAPID: the cloud's capacity is unknown: %s", capacity.detail)
        return capacity.cpus

    # the choices (see the module)

    def flavor(self, name: str, vcpus: int, memory_mib: int, image: ImageNeeds | None = None) -> Flavor:
        """`image`, where known (a create), narrows the choice to flavors it allows."""
        flavors = self.cloud.flavors()
        level = cloud_level(flavors, self.ratio)
        if name.startswith(HELPER_PREFIX):
            explicit = self.settings.flavors.get(HELPER_TYPE, "")
            return choose_flavor(flavors, 4, 1024, explicit=explicit, level=level, image=image)
        chosen = suitable_type(vcpus, memory_mib, START_DISK_GB)
        explicit = self.settings.flavors.get(f"{chosen.vcpus}_{chosen.memory_mb}_{chosen.disk_gb}", "")
        return choose_flavor(
            flavors, chosen.vcpus, chosen.memory_mb, explicit=explicit, level=level, image=image
        )

    def image(self, request: VMRequest) -> str:
        """The request's image (a Glance id or name; a path is libvirt's: it means nothing here),
        else the kind's default (`rapid_image`: the request carries no osType)."""
        if request.image and not request.image.startswith("/"):
            return request.image
        image = rapid_image(self.settings.images, helper=request.name.startswith(HELPER_PREFIX))
        if not image:
            raise PinfoldError(ErrorCode.UNKNOWN_IMAGE, f"no image configured for {request.name}")
        return image

    def _server(self, name: str) -> Server:
        server = self.cloud.find(name)
        if server is None:
            raise PinfoldError(ErrorCode.UNKNOWN_VM, f"no server {name!r}")
        return server
