"""`pinfold agent`: the per-host daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pinfold.cli.options import SlackVMOpenNetworks, TlsCa, TlsCert, TlsKey
from pinfold.model.defaults import AGENT_PORT, HEARTBEAT_PERIOD_S

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("agent")(agent_command)


def agent_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML file of settings.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Store and token live here.")] = None,
    listen: Annotated[str | None, typer.Option("--listen")] = None,
    port: Annotated[int | None, typer.Option("--port", help=f"Default {AGENT_PORT}.")] = None,
    driver: Annotated[
        str | None, typer.Option("--driver", help="auto, libvirt, sim or openstack (a cloud's servers).")
    ] = None,
    libvirt_uri: Annotated[str | None, typer.Option("--libvirt-uri")] = None,
    domain_type: Annotated[str | None, typer.Option("--domain-type", help="kvm or qemu (TCG).")] = None,
    exclude_cpus: Annotated[
        str | None, typer.Option("--exclude-cpus", help="CPUs kept for the host.")
    ] = None,
    reserved_memory_mib: Annotated[int | None, typer.Option("--reserved-memory-mib")] = None,
    critical_size: Annotated[int | None, typer.Option("--critical-size")] = None,
    topology: Annotated[Path | None, typer.Option("--topology", help="Default: this host.")] = None,
    image_dirs: Annotated[
        str | None, typer.Option("--image-dirs", help="Comma-separated base image dirs.")
    ] = None,
    controller_url: Annotated[
        str | None, typer.Option("--controller-url", help="Register with this controller.")
    ] = None,
    host_id: Annotated[str | None, typer.Option("--host-id", help="Name in the controller.")] = None,
    advertise_url: Annotated[
        str | None, typer.Option("--advertise-url", help="URL the controller calls this agent on.")
    ] = None,
    rapid_config: Annotated[
        Path | None,
        typer.Option("--rapid-config", help="RAPID's configuration.xml: serve as its VM Manager."),
    ] = None,
    monitor_period_s: Annotated[
        float | None,
        typer.Option(
            "--monitor-period",
            help=f"Seconds between samples and heartbeats (default {HEARTBEAT_PERIOD_S:g}).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the agent token (default DATA_DIR/agent.token)."),
    ] = None,
    slackvm_open_networks: SlackVMOpenNetworks = None,
    default_network: Annotated[
        str | None,
        typer.Option("--default-network", help="libvirt network of the NIC a VM gets when it asks none."),
    ] = None,
    default_bridge: Annotated[
        str | None,
        typer.Option(
            "--default-bridge", help="Host bridge of that NIC instead (not with --default-network)."
        ),
    ] = None,
    enrolment_token_file: Annotated[
        Path | None,
        typer.Option("--enrolment-token-file", help="File holding the cluster's enrolment token."),
    ] = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    os_cloud: Annotated[
        str | None, typer.Option("--os-cloud", help="--driver openstack: the clouds.yaml cloud.")
    ] = None,
    os_clouds_yaml: Annotated[
        Path | None,
        typer.Option("--os-clouds-yaml", help="That clouds.yaml (default: openstacksdk's search)."),
    ] = None,
    os_image: Annotated[
        str | None, typer.Option("--os-image", help="Glance image of a VM whose create names none.")
    ] = None,
    os_network: Annotated[
        str | None, typer.Option("--os-network", help="Neutron network of the VMs.")
    ] = None,
    os_flavor: Annotated[
        str | None,
        typer.Option("--os-flavor", help="A flavor every VM gets (default: the smallest that fits)."),
    ] = None,
) -> None:
    """Run the host agent: VMs of several levels through libvirt (or the sim
    driver), or a cloud's servers (--driver openstack), a SQLite store, and the
    HTTP API. Settings: --config TOML, then PINFOLD_AGENT_* variables, then these flags."""
    from pinfold.agent.config import ConfigError, load_config
    from pinfold.agent.daemon import serve

    flags = {
        "data_dir": data_dir, "listen": listen, "port": port, "driver": driver, "libvirt_uri": libvirt_uri,
        "domain_type": domain_type, "exclude_cpus": exclude_cpus, "reserved_memory_mib": reserved_memory_mib,
        "critical_size": critical_size, "topology": topology, "image_dirs": image_dirs,
        "controller_url": controller_url, "host_id": host_id, "advertise_url": advertise_url,
        "rapid_config": rapid_config, "monitor_period_s": monitor_period_s, "token_file": token_file,
        "slackvm_open_networks": slackvm_open_networks, "default_network": default_network,
        "default_bridge": default_bridge, "enrolment_token_file": enrolment_token_file,
        "tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca, "os_cloud": os_cloud,
        "os_clouds_yaml": os_clouds_yaml, "os_image": os_image, "os_network": os_network,
        "os_flavor": os_flavor,
    }  # fmt: skip
    from pinfold.rapid.config import RapidConfigError
    from pinfold.tokens import TokenError

    try:
        settings = load_config(config, flags)
        serve(settings)
    except (ConfigError, RapidConfigError, TokenError) as exc:
        raise typer.BadParameter(str(exc)) from None
