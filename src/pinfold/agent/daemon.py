"""Assemble and run the agent daemon: topology, driver, store, agent, HTTP."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from pinfold import serving
from pinfold.agent.addresses import AddressBook
from pinfold.agent.api import create_app
from pinfold.agent.cloud_agent import CloudAgent, CloudAgentSettings
from pinfold.agent.config import (
    AgentConfig,
    ConfigError,
    advertised_url,
    enrols_blind,
    load_enrolment_token,
    load_or_create_token,
)
from pinfold.agent.drivers import Driver, DriverError, SimDriver
from pinfold.agent.monitor import GpuProbe, Monitor
from pinfold.agent.pools import PoolKeeper
from pinfold.agent.reconcile import Action, Step
from pinfold.agent.registration import (
    BeatBounds,
    Registrar,
    cloud_registration_document,
    heartbeat_document,
    registration_document,
)
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.model.errors import PinfoldError
from pinfold.rapid.config import RapidConfig, read_rapid_config
from pinfold.rapid.endpoint import RapidEndpoint, helper_pools
from pinfold.tls import client_context, warn_plain_url
from pinfold.topology import Topology, parse_cpulist

log = logging.getLogger(__name__)

__all__ = ["build_agent", "choose_driver", "serve"]


def choose_driver(config: AgentConfig) -> tuple[Driver, str]:
    """The configured driver; with `auto`, libvirt when it answers, else sim
    (and a notice saying so). The sim driver's address counter lives in the
    data dir: a restarted agent does not hand out its old addresses again."""
    # the sim host has the default network; the own network it makes at each start
    networks = [config.default_network] if config.default_network else []
    bridges = [config.default_bridge] if config.default_bridge else []
    sim = SimDriver(config.data_dir / "sim-addresses", networks=networks, bridges=bridges)
    if config.driver == "sim":
        return sim, "sim driver (in memory, no hypervisor)"
    try:
        from pinfold.agent.drivers.libvirt import LibvirtDriver

        return LibvirtDriver(config.libvirt_uri), f"libvirt driver on {config.libvirt_uri}"
    except (ImportError, DriverError) as exc:
        if config.driver == "libvirt":
            raise
        return sim, f"sim driver: libvirt is not available here ({exc})"


def build_agent(config: AgentConfig, rapid: RapidConfig | None = None) -> tuple[Agent, Driver, str]:
    """The agent, started, and the driver it was given (the daemon, which
    built it, may ask what it is); with RAPID's configuration, its image
    directories are accepted too and the helper VMs get their warm pools."""
    exclude = parse_cpulist(config.exclude_cpus)
    topology = Topology.load(config.topology, exclude) if config.topology else Topology.discover(exclude)
    driver, description = choose_driver(config)
    consoles = config.data_dir / "consoles"  # each VM's console log, named after its domain
    consoles.mkdir(parents=True, exist_ok=True)
    settings = AgentSettings(
        domain_type=config.domain_type,
        critical_size=config.critical_size,
        reserved_memory_mib=config.reserved_memory_mib,
        shutdown_timeout_s=config.shutdown_timeout_s,
        image_dirs=config.image_dirs + (rapid.image_dirs if rapid is not None else ()),
        disk_dir=config.data_dir / "disks",
        serial_dir=consoles,
        kernel=config.kernel,
        initrd=config.initrd,
        cmdline=config.cmdline,
        pools=config.pools + (helper_pools(rapid, config.rapid) if rapid is not None else ()),
        default_network=config.default_network,
        default_bridge=config.default_bridge,
        own_network=config.own_network.to_network() if config.own_network is not None else None,
        migration_storage=config.migration_storage,
        peer_libvirt_uri=config.peer_libvirt_uri,
        migration_address=config.migration_address,
    )
    return Agent.open(topology, driver, Store(config.data_dir / "agent.db"), settings), driver, description


def simulated_memory(agent: Agent) -> tuple[float, float]:
    """A simulated host's memory: its model's, less what its VMs hold."""
    total = float(agent.topology.memory_total_mib)
    return total, total - agent.snapshot().memory_allocated_mib


def rapid_address_notice(config: AgentConfig, rapid: RapidConfig, simulated: bool) -> str | None:
    """What an operator must hear when RAPID's VMs would get no NIC. They get
    theirs on `default_network`, as RAPID's template had one NIC on the
    default network (or on `default_bridge`); without one, on a hypervisor, no DHCP lease can give
    their address, only `ipShellPath`, and a start without either waits
    `ip_wait_s` and answers ERROR. The sim driver needs no NIC for its
    simulated addresses."""
    if simulated or config.default_network:
        return None
    if config.default_bridge:
        if rapid.ip_script is not None:
            return None
        return (
            f"RAPID: VMs on bridge {config.default_bridge} get no libvirt lease and there is no ipShellPath: "
            "their addresses can come only from a guest agent, else every start answers ERROR after ip_wait_s"
        )
    if rapid.ip_script is None:
        consequence = "every start answers ERROR after ip_wait_s"
    else:
        consequence = f"their addresses can come only from ipShellPath ({rapid.ip_script})"
    return f"RAPID: no default_network, so RAPID's VMs get no NIC: {consequence}"


def rapid_endpoint(agent: Agent, rapid: RapidConfig, config: AgentConfig, monitor: Monitor) -> RapidEndpoint:
    """The RAPID VMM, listening: a port another process holds is a setting to
    change, said in one line, not a traceback; so is a cloud (openStackSupport
    1) that refuses RAPID's credentials or does not answer (exit code 1)."""
    try:
        endpoint = RapidEndpoint(agent, rapid, config.rapid, monitor)
    except OSError as exc:
        raise ConfigError(f"RAPID vmmPort {rapid.vmm_port}: cannot listen ({exc.strerror or exc})") from None
    except PinfoldError as error:
        print(
            f"pinfold agent: RAPID's OpenStack cloud at {rapid.openstack['authAddress']}: {error}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    endpoint.start()
    print(f"pinfold agent: RAPID VMM on port {endpoint.server.port}; DS {rapid.ds_ip}:{rapid.ds_port}")
    return endpoint


def open_cloud_agent(config: AgentConfig) -> CloudAgent:
    """The openstack driver's agent, authenticated and reconciled: a cloud that
    refuses the credentials or does not answer is one line on stderr and exit
    code 1, never a traceback."""
    from pinfold.openstack.cloud import Cloud  # openstacksdk: a second to load, for this driver only

    settings = config.openstack.settings()
    where = settings.cloud or settings.auth_url
    try:
        cloud = Cloud.connect(settings, config.cloud_owner)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(config.data_dir / "agent.db")
        defaults = CloudAgentSettings(image=config.openstack.image, flavor=config.openstack.flavor)
        return CloudAgent.open(cloud, store, defaults)
    except PinfoldError as error:
        print(f"pinfold agent: the OpenStack cloud {where}: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def serve_cloud(config: AgentConfig) -> None:
    """The openstack driver's daemon (`CloudAgent`): the API; no monitor, pools nor RAPID."""
    agent = open_cloud_agent(config)
    token = load_or_create_token(config)
    _started(
        config, f"openstack driver on {config.openstack.cloud or config.openstack.auth_url}", agent.report
    )
    bounds = BeatBounds()
    registrar = start_registrar(
        config, token,
        lambda address: cloud_registration_document(config.host_id, address, token),
        lambda: heartbeat_document(agent, None, None, bounds),
    )  # fmt: skip
    try:
        app = create_app(agent, token, None, config.slackvm_open_networks)
        serving.run(app, config, config.listen, config.port, "pinfold agent")
    finally:
        if registrar is not None:
            registrar.stop()
        agent.close()
        print("pinfold agent: stopped")


def start_registrar(
    config: AgentConfig,
    token: str,
    registration: Callable[[str], dict[str, Any]],
    heartbeat: Callable[[], dict[str, Any]],
) -> Registrar | None:
    """Register with the controller and beat, when one is configured (None: none);
    `registration` is given the URL the controller calls this agent on."""
    if not config.controller_url:
        return None
    address = advertised_url(config)
    warn_plain_url("pinfold agent", config.controller_url)
    if enrols_blind(config):
        log.warning(
            "pinfold agent: no enrolment token (enrolment_token or enrolment_token_file): the "
            "controller at %s will refuse this host until it is given the controller's agent.token",
            config.controller_url,
        )
    registrar = Registrar(
        config.controller_url, load_enrolment_token(config, token), config.host_id,
        lambda: registration(address), heartbeat, config.monitor_period_s, config.data_dir / "host.token",
        verify=client_context(config.tls_ca),
    )  # fmt: skip
    registrar.start()
    print(f"pinfold agent: registering as {config.host_id!r} ({address}) with {config.controller_url}")
    return registrar


def _started(config: AgentConfig, description: str, report: list[Step]) -> None:
    """Say what runs and what the start-up reconcile found; have SIGTERM and SIGINT end cleanly."""
    listening = f"{config.scheme}://{config.listen}:{config.port}"
    print(f"pinfold agent: {description}; data in {config.data_dir}; listening on {listening}")
    for step in report:
        if step.error:
            again = "before every change" if step.action is Action.REPIN else "next start"
            print(f"pinfold agent: {step.action.value} {step.name} failed, tried again {again}: {step.error}")
        elif step.action.value in ("missing", "unknown"):
            print(f"pinfold agent: {step.action.value}: {step.name}")
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal
    # to the handler it found: make that one a clean exit, not a kill.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))


def serve(config: AgentConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    if config.driver == "openstack":
        serve_cloud(config)
        return
    rapid = read_rapid_config(config.rapid.config) if config.rapid.config is not None else None
    agent, driver, description = build_agent(config, rapid)
    token = load_or_create_token(config)
    _started(config, description, agent.report)
    simulated = isinstance(driver, SimDriver)
    monitor = Monitor(
        [cpu.cpu_id for cpu in agent.topology.cpus],
        agent.vnode_layout,
        agent.vm_stats,
        GpuProbe(rapid.nvidia_smi if rapid is not None else config.nvidia_smi),  # RAPID's nvidiaSmiPath
        simulated_memory=(lambda: simulated_memory(agent)) if simulated else None,
    )
    monitor.sample_safely()
    monitor.start(config.monitor_period_s)
    keeper = PoolKeeper(agent.tend_pools)
    agent.on_hand_out = keeper.wake
    keeper.start()
    book, bounds = AddressBook(agent), BeatBounds()
    registrar = start_registrar(
        config, token,
        lambda address: registration_document(agent, config.host_id, address, token),
        lambda: heartbeat_document(agent, monitor, book, bounds),
    )  # fmt: skip
    endpoint = None
    try:
        if rapid is not None:
            notice = rapid_address_notice(config, rapid, simulated)
            if notice is not None:
                log.warning("pinfold agent: %s", notice)
            endpoint = rapid_endpoint(agent, rapid, config, monitor)
        app = create_app(agent, token, monitor, config.slackvm_open_networks)
        serving.run(app, config, config.listen, config.port, "pinfold agent")
    finally:
        if endpoint is not None:
            endpoint.stop()
        if registrar is not None:
            registrar.stop()
        keeper.stop()
        monitor.stop()
        agent.close()
        print("pinfold agent: stopped")
