"""Command-line options that more than one daemon takes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["SlackVMOpenNetworks", "TlsCa", "TlsCert", "TlsKey"]

#: comma-separated CIDRs, split and checked as the setting of the same name is
SlackVMOpenNetworks = Annotated[
    str | None,
    typer.Option(
        "--slackvm-open-networks",
        help="Comma-separated CIDRs whose clients use SlackVM's routes without a token.",
    ),
]

TlsCert = Annotated[Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM).")]
TlsKey = Annotated[Path | None, typer.Option("--tls-key", help="The certificate's key (PEM).")]
#: what a daemon checks its peers' certificates against (the controller: the agents';
#: an agent: the controller's)
TlsCa = Annotated[
    Path | None, typer.Option("--tls-ca", help="CA file (or a pinned certificate) to verify peers with.")
]
