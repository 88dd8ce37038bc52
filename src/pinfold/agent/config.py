"""The agent's settings: defaults, then a TOML file, then PINFOLD_AGENT_*
environment variables, then command-line flags (each overrides the one before).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pinfold.agent.networks import OwnNetwork
from pinfold.agent.pools import PoolSpec
from pinfold.agent.rapid_settings import RapidSettings
from pinfold.model.defaults import (
    AGENT_PORT,
    DEFAULT_CRITICAL_SIZE,
    DEFAULT_RESERVED_MEMORY_MIB,
    HEARTBEAT_PERIOD_S,
    MAX_MIGRATION_LIMIT_S,
    MIGRATION_LIMIT_S,
    SHUTDOWN_TIMEOUT_S,
)
from pinfold.model.vm import BRIDGE_PATTERN, NETWORK_PATTERN
from pinfold.openstack.settings import CloudSettings
from pinfold.serving import HttpSettings
from pinfold.settings import Networks, SettingsError, describe, environment, layered
from pinfold.tls import url_host
from pinfold.tokens import MIN_TOKEN_LENGTH, TokenError, token_in

__all__ = [
    "AgentConfig",
    "ConfigError",
    "advertised_url",
    "enrols_blind",
    "load_config",
    "load_enrolment_token",
    "load_or_create_token",
]

ENV_PREFIX = "PINFOLD_AGENT_"
#: the command line's --os-* flags -> the [openstack] table's keys
OPENSTACK_FLAGS = {
    "os_cloud": "cloud", "os_clouds_yaml": "clouds_yaml", "os_image": "image", "os_network": "network",
    "os_flavor": "flavor",
}  # fmt: skip


class ConfigError(ValueError):
    """A setting that is missing, unknown or malformed; says which and where."""


class OwnNetworkConfig(BaseModel):
    """TOML table [own_network]: the NAT network with DHCP the agent makes at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=63, pattern=NETWORK_PATTERN)
    subnet: ipaddress.IPv4Network

    @model_validator(mode="after")
    def _usable(self) -> OwnNetworkConfig:
        self.to_network()  # its ValueError says what is wrong
        return self

    def to_network(self) -> OwnNetwork:
        return OwnNetwork(self.name, self.subnet)


class OpenStackConfig(BaseModel):
    """TOML table [openstack] (flags --os-cloud, --os-clouds-yaml, --os-image, --os-network,
    --os-flavor): the cloud of `driver = "openstack"`, a clouds.yaml `cloud` or explicit keys
    (`pinfold.openstack.settings.CloudSettings`), and what its VMs are made with: the
    default `image` (a create naming none), the `network` of their port, an explicit
    `flavor` for every VM ("": the smallest that fits, of the VM's level). `owner`: the
    `pinfold-owner` metadata of this agent's servers (default `pinfold-agent@HOST_ID`):
    two agents on one cloud need two owners."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cloud: str = ""
    clouds_yaml: Path | None = None
    auth_url: str = ""
    username: str = ""
    user_id: str = ""
    password: str = Field(default="", repr=False)
    project_id: str = ""
    project_name: str = ""
    domain_id: str = ""
    domain_name: str = ""
    region: str = ""
    image: str = ""
    network: str = ""
    flavor: str = ""
    owner: str = Field(default="", max_length=255)

    def settings(self) -> CloudSettings:
        """How to reach the cloud, and the network its VMs get: this table's fields that
        `CloudSettings` has (the same names, so that each is written once)."""
        given = self.model_dump(exclude={"image", "flavor", "owner"})
        return CloudSettings(
            **{field.name: given[field.name] for field in fields(CloudSettings) if field.name in given}
        )


class AgentConfig(HttpSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path.home() / ".local" / "share" / "pinfold" / "agent"
    listen: str = "127.0.0.1"
    port: int = Field(default=AGENT_PORT, ge=1, le=65535)
    driver: Literal["auto", "libvirt", "sim", "openstack"] = "auto"
    libvirt_uri: str = "qemu:///system"
    domain_type: Literal["kvm", "qemu"] = "kvm"
    exclude_cpus: str = ""
    reserved_memory_mib: int = Field(default=DEFAULT_RESERVED_MEMORY_MIB, ge=0)
    critical_size: int = Field(default=DEFAULT_CRITICAL_SIZE, ge=0)
    shutdown_timeout_s: float = Field(default=SHUTDOWN_TIMEOUT_S, gt=0)
    topology: Path | None = None
    token: str | None = Field(default=None, min_length=16)
    #: a file holding the token (a flag can name it; a token itself on the command line would show in ps)
    token_file: Path | None = None
    #: where base images may come from (TOML list; comma-separated in env and flags)
    image_dirs: tuple[Path, ...] = ()
    monitor_period_s: float = Field(default=HEARTBEAT_PERIOD_S, gt=0)
    #: boot guests from this kernel (and initrd, command line) instead of their disk
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    #: CIDRs whose clients may use SlackVM's /deploy and /remove without a token (off: empty)
    slackvm_open_networks: Networks = ()
    #: the binary the GPU probe falls back to without NVML (with --rapid-config: its nvidiaSmiPath)
    nvidia_smi: str = "nvidia-smi"
    #: the controller to register with (none: the agent runs on its own)
    controller_url: str | None = None
    #: the cluster's enrolment token (the controller's agent token), used once to enrol
    #: this host (default: this agent's own token, as before host credentials)
    enrolment_token: str | None = Field(default=None, min_length=16)
    #: a file holding the enrolment token (pinfold up names the controller's agent.token)
    enrolment_token_file: Path | None = None
    #: this host's name in the controller's directory (default: the host name)
    host_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=63)
    #: the URL the controller calls this agent on (default: http://LISTEN:PORT, https with TLS)
    advertise_url: str | None = None
    #: the RAPID VM Manager endpoint (TOML table [rapid]; --rapid-config sets its `config`)
    rapid: RapidSettings = RapidSettings()
    #: warm pools, TOML only: [[pools]] name, size, vcpus, memory_mib, ratio, image, warmup_s
    pools: tuple[PoolSpec, ...] = ()
    #: the libvirt network a VM made without NICs gets one NIC on ("": none, as SlackVM's
    #: template had `default`; off unless set, so a host without that network still works)
    default_network: str = Field(default="", max_length=63, pattern=f"^$|{NETWORK_PATTERN}")
    #: or the host bridge it gets that NIC on (an operator's `br0`, DHCP served by the site:
    #: addresses from the guest agent or RAPID's ipShellPath); not both
    default_bridge: str = Field(default="", max_length=15, pattern=f"^$|{BRIDGE_PATTERN}")
    #: a NAT network with DHCP the agent makes at start when missing, TOML only:
    #: [own_network] name, subnet (e.g. "10.77.0.0/24")
    own_network: OwnNetworkConfig | None = None
    #: the cloud of driver "openstack", TOML table [openstack] (see `OpenStackConfig`)
    openstack: OpenStackConfig = OpenStackConfig()
    #: live migration (docs/agent.md, "Live migration"): how disks move ("copy": to a file the
    #: target makes; "shared": one file on shared storage; "shared-local": one file on one local
    #: file system, a lab only), the libvirt URI a peer host's client reaches this host's daemon
    #: at, and the address QEMU's incoming stream listens on ("": the host does not take VMs in)
    migration_storage: Literal["copy", "shared", "shared-local"] = "copy"
    peer_libvirt_uri: str = Field(default="", max_length=1024)
    migration_address: str = Field(default="", max_length=255, pattern=r"^$|^[A-Za-z0-9.:\[\]-]+$")
    #: a send still running after this is cancelled, the guest kept here (504 migration timed
    #: out); below the controller's wait for a send, so that its answer comes first
    migration_timeout_s: float = Field(default=MIGRATION_LIMIT_S, gt=0, le=MAX_MIGRATION_LIMIT_S)

    @model_validator(mode="after")
    def _one_default_nic(self) -> AgentConfig:
        if self.default_network and self.default_bridge:
            raise ValueError("default_network and default_bridge: not both (a VM asking none gets one NIC)")
        return self

    @property
    def cloud_owner(self) -> str:
        """The `pinfold-owner` of this agent's servers."""
        return self.openstack.owner or f"pinfold-agent@{self.host_id}"


def load_config(
    path: Path | None, flags: dict[str, Any], environ: dict[str, str] | None = None
) -> AgentConfig:
    """Merge the layers; ConfigError names the offending key and its source."""
    environ = environment(environ)
    flags = dict(flags)
    rapid_config = flags.pop("rapid_config", None) or environ.get(ENV_PREFIX + "RAPID_CONFIG")
    cloud = {key: flags.pop(flag) for flag, key in OPENSTACK_FLAGS.items() if flags.get(flag) is not None}
    for flag in OPENSTACK_FLAGS:
        flags.pop(flag, None)
    tables = ("pools", "rapid", "own_network", "openstack")
    keys = [key for key in AgentConfig.model_fields if key not in tables]
    try:
        values = layered(path, flags, environ, ENV_PREFIX, keys, ("image_dirs", "slackvm_open_networks"))
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    if rapid_config is not None:
        values["rapid"] = {**values.get("rapid", {}), "config": rapid_config}
    if cloud:
        values["openstack"] = {**values.get("openstack", {}), **cloud}
    try:
        config = AgentConfig(**values)
    except ValidationError as exc:
        raise ConfigError(f"agent settings: {describe(exc)}") from None
    names = [pool.name for pool in config.pools]
    if len(set(names)) != len(names):
        raise ConfigError("agent settings: pools: two pools have the same name")
    if config.token and config.token_file:
        raise ConfigError("agent settings: token and token_file: set one, not both")
    if config.enrolment_token and config.enrolment_token_file:
        raise ConfigError("agent settings: enrolment_token and enrolment_token_file: set one, not both")
    if config.driver == "openstack":
        _cloud_problem(config)
    return config


def _cloud_problem(config: AgentConfig) -> None:
    """An openstack agent's settings that name no cloud, or ask what a cloud agent has not."""
    problem = config.openstack.settings().problem()
    if problem is not None:
        raise ConfigError(f"agent settings: driver openstack: {problem} ([openstack] or --os-cloud)")
    if config.rapid.config is not None:
        raise ConfigError(
            "agent settings: driver openstack serves the agent's API only; RAPID's VMs go to a cloud "
            "through RAPID's own openStackSupport=1 (with driver sim or libvirt)"
        )
    libvirt_only = [
        name
        for name, given in (
            ("[[pools]]", config.pools), ("[own_network]", config.own_network),
            ("default_network", config.default_network), ("default_bridge", config.default_bridge),
        )
        if given
    ]  # fmt: skip
    if libvirt_only:
        raise ConfigError(
            f"agent settings: driver openstack: {', '.join(libvirt_only)} are libvirt's, not a cloud's "
            "(a cloud VM's network: [openstack] network or --os-network)"
        )


def advertised_url(config: AgentConfig) -> str:
    """The URL the controller is told to call this agent on: `advertise_url`,
    or the listening address (loopback for a wildcard; an IPv6 one bracketed,
    as a URL holds it: `http://::1:8099` is refused at registration)."""
    if config.advertise_url:
        return config.advertise_url
    host = "127.0.0.1" if config.listen in ("0.0.0.0", "::") else config.listen
    return f"{config.scheme}://{url_host(host)}:{config.port}"


def load_or_create_token(config: AgentConfig) -> str:
    """The configured token, or the one in `token_file`, or the one in
    DATA_DIR/agent.token, created (random, mode 0600) on first start. A
    `token_file` is never created: it holds a token given to this agent
    (the cluster's), and a new random one would only be refused."""
    if config.token:
        return config.token
    if config.token_file is not None:
        return _token_from(config.token_file, "token_file")
    return token_in(config.data_dir / "agent.token")


def load_enrolment_token(config: AgentConfig, own_token: str) -> str:
    """The token this agent enrols its host with: the configured enrolment
    token, or the one in `enrolment_token_file`; else the agent's own token,
    which is what an agent configured before host credentials was given (the
    cluster's agent token) and keeps it registering after an upgrade."""
    if config.enrolment_token:
        return config.enrolment_token
    if config.enrolment_token_file is not None:
        return _token_from(config.enrolment_token_file, "enrolment_token_file")
    return own_token


def enrols_blind(config: AgentConfig) -> bool:
    """Whether this agent would enrol with nothing the controller can know: no
    enrolment token, its own token made at random here, and no credential yet.
    The controller refuses it for ever (401), so the daemon says so at start."""
    given = config.enrolment_token or config.enrolment_token_file or config.token or config.token_file
    return bool(config.controller_url) and not given and not (config.data_dir / "host.token").exists()


def _token_from(path: Path, setting: str) -> str:
    """The token in a file given to this agent (never created: a new random
    one would only be refused)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"{setting}: {exc}") from None
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"{setting}: {path} holds no usable token (fewer than {MIN_TOKEN_LENGTH} characters)"
        )
    return token
