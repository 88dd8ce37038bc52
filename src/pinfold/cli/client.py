"""`pinfold vm ...`, `pinfold host ...`, `pinfold status`: the controller's
REST API for people (Rich tables) and scripts (`--json`).

The controller's URL and admin token come from flags, else PINFOLD_URL and
PINFOLD_TOKEN, else the file `pinfold up` writes (~/.config/pinfold/cli.toml,
or PINFOLD_CLI_CONFIG), else http://127.0.0.1:8100 without a token. Over
HTTPS the controller's certificate is verified against the CA file of
`--tls-ca`, else PINFOLD_CA_FILE, else `ca_file` in that file, else the
system's CAs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pinfold.model.defaults import ACTION_TIMEOUT_S, CONTROLLER_PORT, MIGRATION_TIMEOUT_S
from pinfold.model.vm import MAX_BULK, MAX_SSH_KEY_LENGTH, MAX_SSH_KEYS, MAX_USER_DATA_BYTES
from pinfold.tls import client_context, tls_failure, warn_plain_url

__all__ = ["CLI_CONFIG", "REQUEST_TIMEOUT_S", "cli_config_path", "register", "vm_table"]

DEFAULT_URL = f"http://127.0.0.1:{CONTROLLER_PORT}"
#: how often `pinfold host drain --migrate` looks at the migrations under way
PROGRESS_POLL_S = 0.5
#: how long a request waits for the controller: longer than the controller's own wait for an
#: agent's lifecycle action (`agent_action_timeout_s`, 90 s by default: a shutdown that ends
#: in a forced power-off), so that `pinfold vm shutdown` hears the controller's answer
REQUEST_TIMEOUT_S = ACTION_TIMEOUT_S + 30.0
CLI_CONFIG = Path(os.environ.get("PINFOLD_CLI_CONFIG", Path.home() / ".config" / "pinfold" / "cli.toml"))

console = Console(emoji=False)  # no ":cd:" in a MAC address turned into an emoji
vm_app = typer.Typer(no_args_is_help=True, help="Create, list and act on VMs through the controller.")
host_app = typer.Typer(no_args_is_help=True, help="List, show, drain and remove hosts.")

Url = Annotated[str | None, typer.Option("--url", help="Controller URL (PINFOLD_URL).")]
Token = Annotated[str | None, typer.Option("--token", help="Admin token (PINFOLD_TOKEN).")]
Ca = Annotated[
    Path | None, typer.Option("--tls-ca", help="CA file to verify an HTTPS controller (PINFOLD_CA_FILE).")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def register(app: typer.Typer) -> None:
    app.add_typer(vm_app, name="vm")
    app.add_typer(host_app, name="host")
    app.command("status")(status)


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str | None
    ca_file: Path | None = None


def cli_config_path() -> Path:
    """Read at each call, so that PINFOLD_CLI_CONFIG set later still counts."""
    return Path(os.environ.get("PINFOLD_CLI_CONFIG", CLI_CONFIG))


def endpoint(url: str | None, token: str | None, ca_file: Path | None = None) -> Endpoint:
    path = cli_config_path()
    saved: dict[str, Any] = {}
    if path.exists():
        try:
            saved = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise typer.BadParameter(f"{path}: {exc}") from None
    ca = ca_file or os.environ.get("PINFOLD_CA_FILE") or saved.get("ca_file")
    return Endpoint(
        url or os.environ.get("PINFOLD_URL") or str(saved.get("url", DEFAULT_URL)),
        token or os.environ.get("PINFOLD_TOKEN") or saved.get("token"),
        Path(ca) if ca else None,
    )


def request(
    where: Endpoint,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    timeout_s: float | None = REQUEST_TIMEOUT_S,
) -> httpx.Response:
    """`params` go in the query string, encoded by httpx; `timeout_s` None:
    no limit (a drain's answer comes when its last VM moved)."""
    headers = {"Authorization": f"Bearer {where.token}"} if where.token else {}
    url = where.url.rstrip("/") + path
    warn_plain_url("pinfold", where.url)
    try:
        verify = client_context(where.ca_file)
    except OSError as exc:
        console.print(f"[red]CA file {escape(str(where.ca_file))}: {escape(exc.strerror or str(exc))}[/red]")
        raise typer.Exit(2) from None
    try:
        return httpx.request(
            method, url, json=body, params=params, headers=headers, timeout=timeout_s, verify=verify
        )
    except httpx.HTTPError as exc:
        why = tls_failure(exc) or str(exc)
        console.print(
            f"[red]cannot reach the controller at {escape(where.url)}: {escape(why)}[/red]", soft_wrap=True
        )
        raise typer.Exit(2) from None


def answer(response: httpx.Response, as_json: bool, explain: bool = False) -> Any:
    """The response's JSON, or the error printed and exit 1. A body that is
    not JSON (a proxy's HTML error page, something else on that port) is
    reported as such, with its status and its first line."""
    try:
        body = response.json() if response.content else None
    except ValueError:
        first = (response.text.strip().splitlines() or [""])[0][:120]
        detail = f"HTTP {response.status_code} from {response.url}, not JSON: {first!r}"
        if as_json:
            print(json.dumps({"error": "not a pinfold controller's answer", "detail": detail}, indent=1))
        else:
            console.print(f"[red]not a pinfold controller's answer[/red]: {escape(detail)}")
        raise typer.Exit(1) from None
    if response.status_code < 400:
        return body
    if as_json:
        print(json.dumps(body, indent=1))
    else:
        error: dict[str, Any] = (
            body if isinstance(body, dict) else {"error": str(response.status_code), "detail": response.text}
        )
        console.print(f"[red]{escape(str(error.get('error')))}[/red]: {escape(str(error.get('detail', '')))}")
        if explain:
            explain_refusal(error)
    raise typer.Exit(1)


def explain_refusal(error: dict[str, Any]) -> None:
    """Why no host took the VM: the `refusals` as a table and their summary,
    or, from a controller older than `refusals`, the `hosts` strings."""
    if isinstance(error.get("refusals"), dict) and error["refusals"]:
        if error.get("summary"):
            console.print(escape(str(error["summary"])))
        table = Table("host", "code", "level", "needed", "free", "could ever fit")
        for host, refusal in sorted(error["refusals"].items()):
            fits_ever = {True: "yes", False: "no"}.get(refusal.get("fits_ever"), "?")
            code = str(refusal.get("code"))
            if code == "group policy" and refusal.get(
                "detail"
            ):  # which group: "group policy: web (affinity)"
                code = f"{code}: {refusal['detail']}"
            table.add_row(
                escape(host), escape(code), _level(refusal.get("level")),
                _cell(refusal.get("needed")), _cell(refusal.get("free")), fits_ever,
            )  # fmt: skip
        console.print(table)
    elif error.get("hosts"):
        table = Table("host", "why not")
        for host, why in sorted(error["hosts"].items()):
            add_plain_row(table, host, why)
        console.print(table)


def _level(value: Any) -> str:
    return "-" if value is None else str(value)


def _cell(value: Any) -> str:
    """A count of a refusal as people write it (9 CPUs, not 9.0), or -."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def show(body: Any, as_json: bool, render: Any) -> None:
    if as_json:
        print(json.dumps(body, indent=1))
    else:
        render(body)


def add_plain_row(table: Table, *cells: str) -> None:
    """A row of text as the controller or agent sent it: a string cell is
    read as Rich markup, so an owner or a reason holding `[/x]` would stop
    the table with a MarkupError, and `[bold]` would vanish into a style."""
    table.add_row(*(Text(cell) for cell in cells))


def vm_table(vms: list[dict[str, Any]]) -> None:
    table = Table("name", "host", "level", "vCPUs", "MiB", "state", "pinned to", "owner", "address")
    for vm in vms:
        state = (
            vm["state"] if vm.get("host_state") in (None, "up", "draining") else f"{vm['state']} (host down)"
        )
        pins = ",".join(map(str, vm.get("pinning") or [])) or "-"
        add_plain_row(
            table, vm["name"], vm["host"] or "-", f"{vm['ratio']:g}:1", str(vm["vcpus"]),
            str(vm["memory_mib"]), state, pins, vm["owner"] or "-", first_address(vm),
        )  # fmt: skip
    console.print(table)


def first_address(vm: dict[str, Any]) -> str:
    """A VM's first address (IPv4 first), "-" for none yet (or a controller
    older than addresses, which shows none)."""
    return next(iter(vm.get("addresses") or ()), "-")


def host_table(hosts: list[dict[str, Any]]) -> None:
    table = Table("host", "state", "address", "CPUs", "VMs", "vNodes (level: CPUs)")
    for host in hosts:
        levels = ((host.get("status") or {}).get("cpu") or {}).get("subset") or {}
        vnodes = ", ".join(f"{level}: {values['pcap']}" for level, values in sorted(levels.items()))
        add_plain_row(
            table,
            host["id"],
            host["state"],
            host["address"],
            str(host["cpus"]),
            str(len(host["vms"])),
            vnodes or "-",
        )
    console.print(table)


@vm_app.command("create")
def vm_create(
    name: str,
    vcpus: Annotated[int, typer.Option("--vcpus", "-c", help="Virtual CPUs.")] = 1,
    memory: Annotated[int, typer.Option("--memory", "-m", help="Memory in MiB.")] = 1024,
    ratio: Annotated[
        float, typer.Option("--level", "-l", help="Oversubscription level: 1 (premium), 2, 3...")
    ] = 1.0,
    owner: Annotated[str, typer.Option("--owner")] = "",
    image: Annotated[str, typer.Option("--image", help="Base qcow2 image on the host.")] = "",
    policy: Annotated[str | None, typer.Option("--policy", help="Placement policy for this VM.")] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="The VM group it joins (pinfold group create).")
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="When nothing fits, say why host by host.")
    ] = False,
    ssh_key: Annotated[
        list[Path] | None,
        typer.Option("--ssh-key", help="SSH public key file for cloud-init (repeatable).", dir_okay=False),
    ] = None,
    user_data: Annotated[
        Path | None,
        typer.Option(
            "--user-data",
            help=f"cloud-init user data file (at most {MAX_USER_DATA_BYTES} bytes).",
            dir_okay=False,
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            "-n",
            min=1,
            max=MAX_BULK,
            help="Create this many VMs in one request: NAME with {n}, their number (-{n} added if absent).",
        ),
    ] = None,
    start: Annotated[int, typer.Option("--start", min=0, help="With --count: the first {n}.")] = 0,
    all_or_nothing: Annotated[
        bool, typer.Option("--all-or-nothing", help="With --count: if any VM does not fit, create none.")
    ] = False,
    url: Url = None,
    token: Token = None,
    ca: Ca = None,
    as_json: Json = False,
) -> None:
    """Place and create a VM; the same command again returns the same VM.
    With --ssh-key or --user-data it gets a cloud-init seed (NoCloud):
    hostname = NAME, the keys for the image's default user. With --count,
    many VMs in one request: a table of each one's host or refusal, exit 1
    if any was refused (best-effort, the default, keeps those that fit)."""
    body: dict[str, Any] = {
        "name": name,
        "vcpus": vcpus,
        "memory_mib": memory,
        "ratio": ratio,
        "owner": owner,
        "image": image,
    }
    if policy:
        body["policy"] = policy
    if group:
        body["group"] = group
    keys = [key for path in ssh_key or [] for key in read_ssh_keys(path)]
    if keys:
        body["ssh_keys"] = keys
    if user_data is not None:
        body["user_data"] = read_text_file(user_data, MAX_USER_DATA_BYTES, "--user-data")
    where = endpoint(url, token, ca)
    if count is not None:
        name = name if "{n}" in name else f"{name}-{{n}}"
        mode = "all-or-nothing" if all_or_nothing else "best-effort"
        create_bulk(
            where, {**body, "name": name, "count": count, "start": start, "mode": mode}, as_json, explain
        )
        return
    vm = answer(request(where, "POST", "/api/v1/vms", body), as_json, explain)
    show(vm, as_json, lambda v: vm_table([v]))


def create_bulk(where: Endpoint, body: dict[str, Any], as_json: bool, explain: bool) -> None:
    """One bulk create: a spinner while the controller works (its answer comes
    whole, at the end: there is no progress to show), then each VM's host or
    refusal; exit 1 if any was refused (all-or-nothing's 409 too)."""
    if as_json:
        response = request(where, "POST", "/api/v1/vms", body)
    else:
        with console.status(f"creating {body['count']} VMs ({body['mode']})..."):
            response = request(where, "POST", "/api/v1/vms", body)
    result = response.json() if response.status_code == 409 and response.content else None
    if not isinstance(result, dict) or "vms" not in result:
        result = answer(response, as_json, explain)
    show(result, as_json, lambda r: bulk_table(r, explain))
    if response.status_code >= 400 or result.get("refused"):
        raise typer.Exit(1)


def bulk_table(result: dict[str, Any], explain: bool) -> None:
    """A bulk create's VMs, a row each (host and pinning, or why refused),
    and its counts; an all-or-nothing refusal's error first."""
    if "error" in result:
        console.print(f"[red]{escape(str(result['error']))}[/red]: {escape(str(result.get('detail', '')))}")
    table = Table("name", "result", "host", "pinned to", "why not")
    for vm in result["vms"]:
        why = (vm.get("summary") or vm.get("detail") or "") if vm["result"] == "refused" else ""
        pins = ",".join(map(str, vm.get("pinning") or [])) or "-"
        table.add_row(escape(vm["name"]), vm["result"], escape(str(vm.get("host") or "-")), pins, escape(why))
    console.print(table)
    counts = ", ".join(f"{result.get(key, 0)} {key}" for key in ("created", "existing", "refused"))
    console.print(f"{result['requested']} VMs asked: {counts}")
    for vm in result["vms"] if explain else ():
        if vm["result"] == "refused":
            console.print(f"[bold]{escape(vm['name'])}[/bold]")
            explain_refusal(vm)


def read_text_file(path: Path, limit: int, flag: str) -> str:
    """The UTF-8 text of `path`, at most `limit` bytes: else a clear error
    naming the flag and exit 2 (nothing is sent)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        console.print(f"[red]{flag} {escape(str(path))}: {escape(exc.strerror or str(exc))}[/red]")
        raise typer.Exit(2) from None
    if len(data) > limit:
        console.print(f"[red]{flag} {escape(str(path))}: larger than {limit} bytes[/red]")
        raise typer.Exit(2)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        console.print(f"[red]{flag} {escape(str(path))}: not UTF-8 text[/red]")
        raise typer.Exit(2) from None


def read_ssh_keys(path: Path) -> list[str]:
    """The public key lines of `path` (an id_*.pub, or several keys one per
    line; blank lines and # comments skipped). The controller judges each."""
    text = read_text_file(path, MAX_SSH_KEY_LENGTH * MAX_SSH_KEYS, "--ssh-key")
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        console.print(f"[red]--ssh-key {escape(str(path))}: no public key in the file[/red]")
        raise typer.Exit(2)
    return keys


@vm_app.command("list")
def vm_list(
    host: Annotated[str | None, typer.Option("--host", help="Only the VMs of this host.")] = None,
    url: Url = None,
    token: Token = None,
    ca: Ca = None,
    as_json: Json = False,
) -> None:
    response = request(
        endpoint(url, token, ca), "GET", "/api/v1/vms", params={"host": host} if host else None
    )
    show(answer(response, as_json), as_json, vm_table)


@vm_app.command("show")
def vm_show(name: str, url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False) -> None:
    vm = answer(request(endpoint(url, token, ca), "GET", f"/api/v1/vms/{segment(name)}"), as_json)
    show(vm, as_json, vm_details)


def vm_details(vm: dict[str, Any]) -> None:
    """One VM: its row, then a table of its NICs (when it has any)."""
    vm_table([vm])
    nics = vm.get("nics") or []
    if not nics:
        return
    table = Table("NIC", "network or bridge", "MAC", "addresses")
    for index, nic in enumerate(nics):
        source = nic.get("network") or (f"bridge {nic['bridge']}" if nic.get("bridge") else "-")
        addresses = ", ".join(nic.get("addresses") or []) or "-"
        add_plain_row(table, str(index), source, nic.get("mac") or "(agent's choice)", addresses)
    console.print(table)


@vm_app.command("delete")
def vm_delete(name: str, url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False) -> None:
    response = request(endpoint(url, token, ca), "DELETE", f"/api/v1/vms/{segment(name)}")
    body = answer(response, as_json)
    if as_json:
        print(json.dumps(body or {"deleted": name}))
    elif response.status_code == 202:
        console.print(f"{name}: its agent did not answer; the deletion will be retried")
    else:
        console.print(f"deleted {name}")


@vm_app.command("migrate")
def vm_migrate(
    name: str,
    to: Annotated[
        str | None, typer.Option("--to", help="The host to move to (default: the scheduler's choice).")
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Only say where it would go, and why not elsewhere.")
    ] = False,
    url: Url = None,
    token: Token = None,
    ca: Ca = None,
    as_json: Json = False,
) -> None:
    """Move a running VM live to another host."""
    path = f"/api/v1/vms/{segment(name)}/migrate"
    params = {"explain": "true"} if explain else None
    where = endpoint(url, token, ca)
    sent = request(where, "POST", path, {"to": to}, params=params, timeout_s=MIGRATION_TIMEOUT_S + 60)
    body = answer(sent, as_json, True)
    show(body, as_json, move_choice if explain else lambda b: migration_table([b["migration"]]))


def move_choice(choice: dict[str, Any]) -> None:
    target = choice["target"] or "no host"
    console.print(f"{escape(choice['vm'])} on {choice['source']} would move to {target}")
    if len(choice["ranking"]) > 1:
        console.print("then, if it refuses: " + ", ".join(choice["ranking"][1:]))
    console.print(escape(choice["explanation"]))
    if choice["hosts"]:
        table = Table("host", "why not")
        for host, why in sorted(choice["hosts"].items()):
            table.add_row(host, escape(why))
        console.print(table)


def _action(action: str) -> Any:
    def run(name: str, url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False) -> None:
        path = f"/api/v1/vms/{segment(name)}/{action}"
        show(
            answer(request(endpoint(url, token, ca), "POST", path), as_json), as_json, lambda v: vm_table([v])
        )

    run.__doc__ = f"{action.capitalize()} a VM."
    return run


for _name in ("start", "shutdown", "suspend", "resume"):
    vm_app.command(_name)(_action(_name))


@vm_app.command("console")
def vm_console(
    name: str,
    url: Url = None,
    token: Token = None,
    ca: Ca = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Watch; leave the keyboard to another.")
    ] = False,
) -> None:
    """Attach this terminal to a running VM's serial console; Ctrl-] leaves."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    from pinfold.cli.terminal import ESCAPE_NAME, raw_terminal, relay, ssl_for, websocket_url

    where = endpoint(url, token, ca)
    warn_plain_url("pinfold", where.url)
    mode = "read" if read_only else "write"
    ws_url = websocket_url(where.url, f"/api/v1/vms/{segment(name)}/console?mode={mode}")
    headers = {"Authorization": f"Bearer {where.token}"} if where.token else {}
    try:
        ws = connect(
            ws_url,
            additional_headers=headers,
            open_timeout=30,
            ssl=ssl_for(ws_url, client_context(where.ca_file)),
        )
    except InvalidStatus as refused:
        body = bytes(refused.response.body or b"")
        answer(httpx.Response(refused.response.status_code, content=body), as_json=False)
        raise typer.Exit(1) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        console.print(f"[red]cannot reach the controller at {escape(where.url)}: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    note = "watching (read-only)" if read_only else "attached"
    sys.stderr.write(f"{note}: the console of {name}; {ESCAPE_NAME} leaves\r\n")
    with raw_terminal(sys.stdin.fileno()):
        why = relay(ws, sys.stdin.fileno(), sys.stdout.buffer)
    sys.stderr.write(f"\r\n[{why}]\r\n")


@host_app.command("list")
def host_list(url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False) -> None:
    show(answer(request(endpoint(url, token, ca), "GET", "/api/v1/hosts"), as_json), as_json, host_table)


@host_app.command("show")
def host_show(
    host_id: str, url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False
) -> None:
    host = answer(request(endpoint(url, token, ca), "GET", f"/api/v1/hosts/{segment(host_id)}"), as_json)

    def render(found: dict[str, Any]) -> None:
        host_table([found])
        console.print_json(json.dumps(found.get("status")))

    show(host, as_json, render)


@host_app.command("drain")
def host_drain(
    host_id: str,
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Also move every VM off it, live, one by one.")
    ] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="With --migrate: only show where each VM would go.")
    ] = False,
    url: Url = None,
    token: Token = None,
    ca: Ca = None,
    as_json: Json = False,
) -> None:
    """Take no new VMs on this host; with --migrate, move its VMs to the
    others too (refused, nothing moved, when they cannot take them all)."""
    where = endpoint(url, token, ca)
    path = f"/api/v1/hosts/{segment(host_id)}/drain"
    if not migrate:
        show(answer(request(where, "POST", path), as_json), as_json, lambda h: host_table([h]))
        return
    if as_json and not explain:
        print(
            json.dumps(
                answer(request(where, "POST", path, {"migrate": True}, timeout_s=None), as_json), indent=1
            )
        )
        return
    plan = answer(request(where, "POST", path, {"migrate": True}, params={"explain": "true"}), as_json)
    emptied = host_id in plan["emptied"]
    if explain or not emptied:
        show(plan, as_json, plan_details)
        raise typer.Exit(0 if emptied else 1)
    body = _drain_with_progress(where, path, host_id, plan["migrations"])
    migration_table(body["migrations"])
    host_table([body])


def plan_details(plan: dict[str, Any]) -> None:
    """A drain's or consolidation's plan: its moves, then the planner's words."""
    table = Table("VM", "from", "to", "CPUs its vNode grows by")
    for move in plan["migrations"]:
        table.add_row(escape(move["vm"]), move["source"], move["target"], str(move["cpus_added"]))
    if plan["migrations"]:
        console.print(table)
    console.print(escape(plan["explanation"]))


def migration_table(migrations: list[dict[str, Any]]) -> None:
    table = Table("VM", "from", "to", "seconds", "outcome", "detail")
    for m in migrations:
        seconds = f"{m['elapsed_s']:.2f}" if m.get("elapsed_s") is not None else "-"
        table.add_row(
            escape(m["vm"]),
            m["source"],
            m["target"],
            seconds,
            m["outcome"] or "in flight",
            escape(m["detail"]),
        )
    console.print(table)


def _drain_with_progress(where: Endpoint, path: str, host_id: str, moves: list[dict[str, Any]]) -> Any:
    """POST the drain (it answers once every VM moved) while a Rich progress
    bar follows GET /api/v1/migrations, a line per VM as it lands, with its time."""
    since = answer(request(where, "GET", "/api/v1/migrations", params={"limit": "1"}), False)["now"]
    planned = {move["vm"] for move in moves}
    reported: set[int] = set()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(1) as pool:
        task = progress.add_task(f"draining {host_id}", total=len(moves))
        done = threading.Event()
        posted: Future[httpx.Response] = pool.submit(
            request, where, "POST", path, {"migrate": True}, None, None
        )
        posted.add_done_callback(lambda _: done.set())
        while True:
            finished = done.wait(PROGRESS_POLL_S)
            params = {"since": str(since), "limit": "1000"}
            listed = answer(request(where, "GET", "/api/v1/migrations", params=params), False)["migrations"]
            for m in reversed(listed):
                if m["vm"] in planned and m["source"] == host_id and m["outcome"] and m["id"] not in reported:
                    reported.add(m["id"])
                    progress.console.print(
                        f"{escape(m['vm'])} -> {m['target']}: {m['outcome']} in {m['elapsed_s']:.2f} s"
                    )
                    progress.advance(task)
            if finished:
                break
    return answer(posted.result(), False)


@host_app.command("remove")
def host_remove(
    host_id: str,
    force: Annotated[
        bool, typer.Option("--force", help="Also while it has VMs: the controller forgets them.")
    ] = False,
    url: Url = None,
    token: Token = None,
    ca: Ca = None,
    as_json: Json = False,
) -> None:
    """Remove a host and revoke its credential: its agent is refused from
    then on, until its DATA_DIR/host.token is deleted and it enrols again."""
    path = f"/api/v1/hosts/{segment(host_id)}"
    params = {"force": "true"} if force else None
    body = answer(request(endpoint(url, token, ca), "DELETE", path, params=params), as_json)
    forgotten = ", ".join(body["forgotten_vms"])
    show(
        body,
        as_json,
        lambda _: console.print(f"removed {host_id}" + (f"; forgot {forgotten}" if forgotten else "")),
    )


@host_app.command("undrain")
def host_undrain(
    host_id: str, url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False
) -> None:
    path = f"/api/v1/hosts/{segment(host_id)}/undrain"
    show(answer(request(endpoint(url, token, ca), "POST", path), as_json), as_json, lambda h: host_table([h]))


def status(url: Url = None, token: Token = None, ca: Ca = None, as_json: Json = False) -> None:
    """The cluster at a glance: hosts by state, VMs by state."""
    where = endpoint(url, token, ca)
    summary = answer(request(where, "GET", "/api/v1/status"), as_json)

    def render(body: dict[str, Any]) -> None:
        hosts = ", ".join(f"{n} {s}" for s, n in body["hosts"].items())
        vms = ", ".join(f"{n} {s}" for s, n in sorted(body["vms"]["by_state"].items())) or "none"
        total = body["vms"]["total"]
        console.print(f"controller {where.url}: hosts {hosts}; VMs {total} ({vms}); policy {body['policy']}")

    show(summary, as_json, render)


def segment(value: str) -> str:
    """A path segment with anything special escaped (names are validated by the controller)."""
    return httpx.URL("/" + value).raw_path.decode().lstrip("/").replace("/", "%2F")
