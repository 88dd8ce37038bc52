"""Command-line options that more than one daemon takes."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["SlackVMOpenNetworks"]

#: comma-separated CIDRs, split and checked as the setting of the same name is
SlackVMOpenNetworks = Annotated[
    str | None,
    typer.Option(
        "--slackvm-open-networks",
        help="Comma-separated CIDRs whose clients use SlackVM's routes without a token.",
    ),
]
