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
- disk: RAPID's Ceilometer meters are gone from OpenStack: no figure (None).

Servers carry the metadata `pinfold-owner` = this VMM (`owner`), so a
restarted VMM lists exactly its own servers (`vms`) and RAPID's reconcile
removes those its records do not know.
"""

from __future__ import annotations

import logging
import time

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from pinfold.openstack.cloud import Cloud, Server, vm_state
from pinfold.openstack.flavors import Flavor, ImageNeeds, choose_flavor, cloud_level
from pinfold.openstack.settings import CloudSettings, rapid_image
from pinfold.rapid.flavors import suitable_type
from pinfold.rapid.vms import START_DISK_GB

__all__ = ["HELPER_PREFIX", "OpenStackBackend", "vm_state"]

log = logging.getLogger("pinfold.rapid")

HELPER_PREFIX = "rapid-helper-"
#: how long the cloud's core count is kept before Placement is asked again
CORES_TTL_S = 60.0
#: RAPID's helper type (PROTOCOL.md 4.4): 4 vCPUs, 1024 MB, 20 GB
HELPER_TYPE = "4_1024_20"


class OpenStackBackend:
    """RAPID's VMs as servers of one cloud (see the module)."""

    def __init__(self, cloud: Cloud, ratio: float = 1.0) -> None:
        self.cloud = cloud
        self.settings: CloudSettings = cloud.settings
        self.ratio = ratio
        self._cores: tuple[float, int] | None = None  # (when read, cores)

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
