"""The RAPID endpoint of an agent, assembled: configuration.xml and pinfold's
`[rapid]` settings, the state in the agent's store, the VMM and its server.

RAPID's VMs run on the agent (`AgentBackend`), or, with `openStackSupport`
1, as servers of the cloud RAPID's OpenStack keys name (`OpenStackBackend`,
authenticated when the endpoint is made: bad credentials stop the start).
The SLAM's per-VM CPU and memory figures come from the agent's monitor, or,
for a cloud's servers (which the monitor does not see), from Nova's
diagnostics (`OpenStackBackend.vm_usage`).
"""

from __future__ import annotations

import psutil

from pinfold.agent.monitor import Monitor
from pinfold.agent.pools import PoolSpec
from pinfold.agent.service import Agent
from pinfold.rapid.agent_backend import AgentBackend
from pinfold.rapid.backend import Backend
from pinfold.rapid.config import RapidConfig
from pinfold.rapid.openstack_backend import OpenStackBackend
from pinfold.rapid.server import RapidServer
from pinfold.rapid.settings import RapidSettings
from pinfold.rapid.state import RapidState
from pinfold.rapid.vmm import VMM, Usage

__all__ = ["RapidEndpoint", "helper_pools", "vmm_server"]


def helper_pools(config: RapidConfig, settings: RapidSettings) -> tuple[PoolSpec, ...]:
    """One warm pool per helper slot, of `helper_spares` suspended VMs of the
    helper's size and image: a helper taken or lost is replaced by a resume.
    None with OpenStack: the helpers are the cloud's servers."""
    if settings.helper_spares == 0 or config.openstack_support:
        return ()
    return tuple(
        PoolSpec(
            name=f"rapid-helper-{slot}",
            size=settings.helper_spares,
            vcpus=settings.helper_vcpus,
            memory_mib=settings.helper_memory_mib,
            ratio=settings.ratio,
            image=str(image or ""),
            warmup_s=30,
        )
        for slot, image in enumerate(config.helper_images, start=1)
    )


def vmm_server(vmm: VMM, host: str, port: int, workers: int) -> RapidServer:
    """The VMM's server, with the VMM's settings: timeouts, deadline, who may connect."""
    settings = vmm.settings
    return RapidServer(
        vmm.handle, host, port, workers, settings.socket_timeout_s, settings.allow,
        deadline_s=settings.message_deadline_s,
        admit=vmm.known_peer if settings.allow_known_peers else None,
    )  # fmt: skip


class RapidEndpoint:
    def __init__(
        self, agent: Agent, config: RapidConfig, settings: RapidSettings, monitor: Monitor | None
    ) -> None:
        self.monitor = monitor
        self.config = config
        self.state = RapidState(agent.store_path)
        self.backend = self._backend(agent, config, settings)
        # a cloud's servers are not in the agent's monitor: their figures are Nova's diagnostics
        vm_usage = self.backend.vm_usage if isinstance(self.backend, OpenStackBackend) else self.vm_usage
        self.vmm = VMM(self.backend, self.state, config, settings, self.usage, vm_usage)
        workers = min(config.max_connections, settings.max_workers)
        self.server = vmm_server(self.vmm, settings.listen, config.vmm_port, workers)

    @staticmethod
    def _backend(agent: Agent, config: RapidConfig, settings: RapidSettings) -> Backend:
        """The agent, or the cloud (a `PinfoldError` if it refuses the credentials or does not answer).
        The cloud's servers are this VMM's by their metadata: one owner per announced address and port."""
        if not config.openstack_support:
            return AgentBackend(agent)
        owner = f"rapid-vmm@{config.vmm_ip}:{config.vmm_port}"
        return OpenStackBackend.connect(config.cloud_settings, owner, settings.ratio)

    def start(self) -> None:
        self.vmm.start()
        self.server.start()

    def stop(self) -> None:
        stop_serving(self.server, self.vmm)
        self.state.close()

    def usage(self) -> Usage:
        """CPU load and free memory as RAPID reported them (whole host; memory
        *available*, not MemFree), GPU use of `gpuDeviceNum` (0 without a GPU,
        as RAPID did: its peers read it as idle). The cores are the CPUs the
        agent places VMs on (the topology's usable ones), not the machine's
        (RAPID's `lscpu`): the DS admits a start by vcpus / cores, and with
        the `sim` driver, or CPUs kept for the host, the two differ."""
        sample = self.monitor.latest if self.monitor is not None else None
        if sample is not None:
            load, free = sample.host_cpu * 100, sample.memory_available_mib
            gpus = {gpu.index: gpu.utilization_pct for gpu in sample.gpus.gpus}
        else:
            load, free, gpus = (
                psutil.cpu_percent(interval=None),
                psutil.virtual_memory().available / 2**20,
                {},
            )
        cores = self.backend.cores()
        return Usage(int(load), int(free), int(gpus.get(self.config.gpu_device, 0)), cores)

    def vm_usage(self, name: str) -> tuple[float | None, float | None] | None:
        """(CPU use in % of the VM's vCPUs, memory in use in MB), from the last monitor sample."""
        sample = self.monitor.latest if self.monitor is not None else None
        if sample is None or name not in sample.vms:
            return None
        values = sample.vms[name]
        vcpus = self.backend.vcpus(name) or 1
        return values["cpu_cores"] / vcpus * 100, values["memory_mib"]


def stop_serving(server: RapidServer, vmm: VMM) -> None:
    """Stop answering RAPID's peers. The VMM first: its stop ends the waits of
    the requests in flight (a start waits minutes for its AS), which the
    server's stop then waits for."""
    vmm.stop()
    server.stop()
