"""`pinfold group ...`: VM groups (Nova's server groups) through the
controller's REST API. A VM joins one with `pinfold vm create --group NAME`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from pinfold.cli.client import Ca, Json, Token, Url, answer, console, endpoint, request, segment, show
from pinfold.placement import GroupPolicy

__all__ = ["register"]

group_app = typer.Typer(no_args_is_help=True, help="Create, list and delete VM groups (affinity rules).")

POLICY_HELP = (
    "affinity (one host), anti-affinity (one host each), or their soft forms, "
    "soft-affinity and soft-anti-affinity (preferred, never refused)."
)


def register(app: typer.Typer) -> None:
    app.add_typer(group_app, name="group")


def group_table(groups: list[dict[str, Any]]) -> None:
    table = Table("group", "policy", "VMs", "members")
    for group in groups:
        members = group.get("members") or []
        shown = ", ".join(members[:8]) + (f" and {len(members) - 8} more" if len(members) > 8 else "")
        table.add_row(group["name"], group["policy"], str(len(members)), shown or "-")
    console.print(table)


@group_app.command("create")
def group_create(
    name: str,
    policy: Annotated[GroupPolicy, typer.Option("--policy", "-p", help=POLICY_HELP)],
    url: Url = None,
    token: Token = None,
    ca: Ca = None,
    as_json: Json = False,
) -> None:
    """Make a VM group; the same name and policy again is no error."""
    body = {"name": name, "policy": policy.value}
    group = answer(request(endpoint(url, token, ca), "POST", "/api/v1/groups", body), as_json)
    show(group, as_json, lambda g: group_table([g]))


@group_app.command("list")
def group_list(url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False) -> None:
    show(answer(request(endpoint(url, token, ca), "GET", "/api/v1/groups"), as_json), as_json, group_table)


@group_app.command("show")
def group_show(name: str, url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False) -> None:
    group = answer(request(endpoint(url, token, ca), "GET", f"/api/v1/groups/{segment(name)}"), as_json)
    show(group, as_json, lambda g: group_table([g]))


@group_app.command("delete")
def group_delete(
    name: str, url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False
) -> None:
    """Delete a VM group (refused while it has VMs: delete them first)."""
    answer(request(endpoint(url, token, ca), "DELETE", f"/api/v1/groups/{segment(name)}"), as_json)
    if as_json:
        print(json.dumps({"deleted": name}))
    else:
        console.print(f"deleted group {name}")
