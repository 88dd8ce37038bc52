"""`pinfold controller`: the directory of hosts and VMs and the global scheduler."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Annotated

import typer

from pinfold.cli.options import SlackVMOpenNetworks, TlsCa, TlsCert, TlsKey
from pinfold.model.defaults import CONTROLLER_PORT

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("controller")(controller_command)


def controller_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML file of settings.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Database and tokens live here.")
    ] = None,
    listen: Annotated[str | None, typer.Option("--listen")] = None,
    port: Annotated[int | None, typer.Option("--port", help=f"Default {CONTROLLER_PORT}.")] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="SQLAlchemy URL; default SQLite in the data dir.")
    ] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Default placement policy.")] = None,
    heartbeat_period_s: Annotated[float | None, typer.Option("--heartbeat-period")] = None,
    slackvm_open_networks: SlackVMOpenNetworks = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
) -> None:
    """Run the controller: agents register with it, VMs are placed through it.
    Settings: --config TOML, then PINFOLD_CONTROLLER_* variables, then these flags."""
    # Start-up (the imports, the picture of every host) makes many objects and
    # frees few: the cyclic collector's passes over them were a tenth of a
    # restart. `serve` turns it on again once it is ready to answer.
    gc.disable()
    try:
        from pinfold.controller.config import ControllerConfigError, load_controller_config
        from pinfold.controller.daemon import serve
        from pinfold.tokens import TokenError

        flags = {
            "data_dir": data_dir, "listen": listen, "port": port, "database_url": database_url,
            "policy": policy, "heartbeat_period_s": heartbeat_period_s,
            "slackvm_open_networks": slackvm_open_networks, "tls_cert": tls_cert, "tls_key": tls_key,
            "tls_ca": tls_ca,
        }  # fmt: skip
        try:
            settings = load_controller_config(config, flags)
        except ControllerConfigError as exc:
            raise typer.BadParameter(str(exc)) from None
        try:
            serve(settings)
        except TokenError as exc:
            raise typer.BadParameter(str(exc)) from None
    finally:
        gc.enable()  # on the way out of a refused start, too
