"""`pinfold up`: an all-in-one node on this machine, the README's main command.

It starts a controller (SQLite in DATA_DIR/controller) and one agent
(DATA_DIR/agent) registered with it, each as its own process; the agent
drives libvirt when `qemu:///system` answers, else the `sim` driver, and says
which. Both serve HTTPS with certificates from a local CA made on first start
in DATA_DIR/tls (`ca.pem`, `ca.key`, `node.pem`, `node.key`, mode 0600; the
node's certificate names 127.0.0.1 and localhost), and each verifies the other
against that CA. It writes the CLI's settings (controller URL, admin token and
the CA file, mode 0600), creates two VMs of two levels to show where they were
pinned, and runs until Ctrl-C or SIGTERM, which stop both processes (the VMs
stay, as a restart of the agent finds them again).

On libvirt the demo VMs are reachable: the agent owns a NAT network with DHCP
(`pinfold-demo`, 192.168.213.0/24, written to DATA_DIR/agent/agent.toml as its
`[own_network]` and default network) and boots VMs without an image from the demo
guest (`demo_guest`: Debian's cloud kernel and a busybox initramfs serving a page
on port 8080 and a shell on the serial console), or, with `--image`, from a cloud
image with a cloud-init seed (`--ssh-key`). It waits for each VM's address (from
the agent's API), prints them, a command that reaches one and the console
command. With the sim driver it says what is simulated: nothing boots, and the
addresses are documentation-range ones that nothing answers on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from pinfold.cli.client import cli_config_path, read_ssh_keys, vm_table
from pinfold.cli.demo_guest import NET_PORT, GuestBuildError, demo_guest
from pinfold.cli.terminal import ESCAPE_NAME
from pinfold.model.defaults import AGENT_PORT, CONTROLLER_PORT
from pinfold.tls import client_context, local_certificates
from pinfold.tokens import TokenError, token_in

__all__ = ["register"]

console = Console(emoji=False)  # no ":cd:" in a MAC address turned into an emoji
DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "pinfold"
DEMO_VMS = (
    {"name": "demo-premium", "vcpus": 1, "memory_mib": 128, "ratio": 1.0, "owner": "pinfold-up"},
    {"name": "demo-shared", "vcpus": 1, "memory_mib": 128, "ratio": 2.0, "owner": "pinfold-up"},
)
#: the NAT network the agent owns for the demo VMs: a /24 of 192.168.0.0/16 that home
#: routers (0, 1), libvirt's default (122) and Docker's pools (172.16.0.0/12) leave alone
DEMO_NETWORK = "pinfold-demo"
DEMO_SUBNET = "192.168.213.0/24"
#: a cloud image needs more than the busybox guest's 128 MiB
IMAGE_MEMORY_MIB = 1024
#: how long the demo waits for the VMs' addresses (TCG boots the demo guest in ~10 s)
ADDRESS_TIMEOUT_S = 300.0
SIMULATED = (
    "simulated (sim driver): no VM boots, nothing runs; the addresses shown are from the "
    "documentation ranges (198.51.100.0/24, ...) and nothing answers on them"
)


def register(app: typer.Typer) -> None:
    app.command("up")(up_command)


def libvirt_answers(uri: str) -> tuple[bool, str]:
    try:
        import libvirt
    except ImportError:
        return False, "libvirt-python is not installed"
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError as exc:
        return False, f"{uri} does not answer ({str(exc).strip()})"
    return True, f"libvirt answers on {uri}"


def wait_until(what: str, check: Any, processes: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with status {process.returncode}")
        try:
            result = check()
            if result:
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def write_cli_config(path: Path, url: str, token: str, ca_file: Path | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        # JSON strings are valid TOML basic strings: quotes and backslashes stay escaped
        handle.write(f"url = {json.dumps(url)}\ntoken = {json.dumps(token)}\n")
        if ca_file is not None:
            handle.write(f"ca_file = {json.dumps(str(ca_file))}\n")


def up_command(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Controller and agent data.")
    ] = DEFAULT_DATA_DIR,
    driver: Annotated[
        str, typer.Option("--driver", help="auto (libvirt if it answers), libvirt or sim.")
    ] = "auto",
    domain_type: Annotated[
        str, typer.Option("--domain-type", help="auto (kvm when /dev/kvm is usable), kvm or qemu.")
    ] = "auto",
    controller_port: Annotated[int, typer.Option("--controller-port")] = CONTROLLER_PORT,
    agent_port: Annotated[int, typer.Option("--agent-port")] = AGENT_PORT,
    heartbeat_s: Annotated[float, typer.Option("--heartbeat", help="Heartbeat period in seconds.")] = 2.0,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Create two VMs of two levels.")] = True,
    once: Annotated[bool, typer.Option("--once", help="Stop after setting up (and the demo).")] = False,
    image_dirs: Annotated[
        str, typer.Option("--image-dirs", help="Comma-separated directories VMs' base images may come from.")
    ] = "",
    tls: Annotated[
        bool, typer.Option("--tls/--no-tls", help="HTTPS with a local CA made in DATA_DIR/tls (default).")
    ] = True,
    libvirt_uri: Annotated[str, typer.Option("--libvirt-uri", help="The libvirt the agent drives.")] = (
        "qemu:///system"
    ),
    image: Annotated[
        Path | None,
        typer.Option(
            "--image",
            help="Boot the demo VMs from this cloud image (default: the demo guest).",
            exists=True,
            dir_okay=False,
            resolve_path=True,
        ),
    ] = None,
    ssh_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--ssh-key", help="SSH public key for the demo VMs' cloud-init (with --image).", dir_okay=False
        ),
    ] = None,
    demo_subnet: Annotated[
        str, typer.Option("--demo-subnet", help=f"The subnet of the agent's {DEMO_NETWORK} network.")
    ] = DEMO_SUBNET,
) -> None:
    """Start a controller and a local agent, and show VMs of two levels pinned
    to their vNodes. Ctrl-C stops both."""
    if driver not in ("auto", "libvirt", "sim"):
        raise typer.BadParameter("--driver: auto, libvirt or sim")
    if domain_type not in ("auto", "kvm", "qemu"):
        raise typer.BadParameter("--domain-type: auto, kvm or qemu")
    uri = libvirt_uri
    if driver != "sim":
        answers, why = libvirt_answers(uri)
        if not answers and driver == "libvirt":
            raise typer.BadParameter(f"--driver libvirt: {why}")
        driver = "libvirt" if answers else "sim"
        notice = why if answers else f"{why}: using the sim driver, VMs are simulated (no hypervisor)"
    else:
        notice = "sim driver: VMs are simulated (no hypervisor)"
    if domain_type == "auto":
        domain_type = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    controller_dir, agent_dir = data_dir / "controller", data_dir / "agent"
    keys = [key for path in ssh_key or [] for key in read_ssh_keys(path)]
    agent_config = agent_settings(agent_dir, data_dir, demo_subnet, image) if driver == "libvirt" else None
    if image is not None:
        image_dirs = ",".join(d for d in (image_dirs, str(image.parent)) if d)
    try:
        admin_token = token_in(controller_dir / "admin.token")
        token_in(controller_dir / "agent.token")  # made here, so that the agent can be given it
    except TokenError as exc:
        raise typer.BadParameter(str(exc)) from None
    certificates = local_certificates(data_dir / "tls") if tls else None
    tls_flags = (
        [
            "--tls-cert",
            str(certificates.cert),
            "--tls-key",
            str(certificates.key),
            "--tls-ca",
            str(certificates.ca),
        ]
        if certificates is not None
        else []
    )
    verify: ssl.SSLContext | bool = client_context(certificates.ca) if certificates is not None else True
    controller_url = f"{'https' if tls else 'http'}://127.0.0.1:{controller_port}"
    period = str(heartbeat_s)
    # the agent enrols with the controller's agent token and keeps its own API token
    # (DATA_DIR/agent/agent.token): the controller calls it with that one
    env = dict(os.environ, PINFOLD_AGENT_MONITOR_PERIOD_S=period)
    python = [sys.executable, "-m", "pinfold"]
    processes: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        processes.append(subprocess.Popen(
            [*python, "controller", "--data-dir", str(controller_dir), "--port", str(controller_port),
             "--heartbeat-period", period, *tls_flags], env=env,
        ))  # fmt: skip
        healthz = f"{controller_url}/healthz"
        wait_until("the controller", lambda: httpx.get(healthz, verify=verify).status_code == 200, processes)
        host_id = socket.gethostname()
        processes.append(subprocess.Popen(
            [*python, "agent", "--data-dir", str(agent_dir), "--port", str(agent_port), "--driver", driver,
             "--domain-type", domain_type, "--libvirt-uri", uri, "--controller-url", controller_url,
             "--host-id", host_id, "--enrolment-token-file", str(controller_dir / "agent.token"),
             *(["--config", str(agent_config)] if agent_config is not None else []),
             *(["--image-dirs", image_dirs] if image_dirs else []), *tls_flags], env=env,
        ))  # fmt: skip

        def registered() -> bool:
            headers = {"Authorization": f"Bearer {admin_token}"}
            hosts = httpx.get(f"{controller_url}/api/v1/hosts", headers=headers, verify=verify).json()
            return any(h["id"] == host_id and h["state"] == "up" for h in hosts)

        wait_until("the agent to register", registered, processes)
        # it registers as it starts, before it listens: the demo VMs' creates would find it deaf
        agent_url = f"{'https' if tls else 'http'}://127.0.0.1:{agent_port}"
        agent_health = f"{agent_url}/healthz"
        wait_until(
            "the agent to answer", lambda: httpx.get(agent_health, verify=verify).is_success, processes
        )
        write_cli_config(
            cli_config_path(), controller_url, admin_token, certificates.ca if certificates else None
        )
        console.print(
            f"[bold]pinfold is up[/bold]: controller {controller_url}, agent on port {agent_port} ({notice})"
        )
        console.print(f"data in {data_dir}; the CLI's settings in {cli_config_path()}")
        if certificates is not None:
            console.print(f"HTTPS with a local CA: {certificates.ca} (its certificates beside it)")
        if demo:
            shown = show_demo(controller_url, admin_token, verify, image, keys)
            show_reach(agent_url, verify, shown, driver, image is not None, processes)
        console.print(
            "try:  pinfold vm create web --vcpus 2 --memory 1024 --level 2\n"
            "      pinfold vm list      pinfold host list      pinfold status"
        )
        if once:
            return
        console.print("Ctrl-C stops the controller and the agent.")
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        raise typer.Exit(1)
    except RuntimeError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def show_demo(
    controller_url: str,
    admin_token: str,
    verify: ssl.SSLContext | bool = True,
    image: Path | None = None,
    ssh_keys: list[str] | None = None,
) -> list[str]:
    """Two VMs of two levels, then the directory's view of them with the
    CPUs each is pinned to (the premium one alone on its vNode's CPUs); the
    names of those shown. With an image, they boot it with a cloud-init seed.
    One refused because it exists (a `pinfold up` before made it) is shown as it is."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    shown = []
    for demo_body in DEMO_VMS:
        body: dict[str, Any] = dict(demo_body)
        if image is not None:
            body.update(image=str(image), memory_mib=IMAGE_MEMORY_MIB, ssh_keys=ssh_keys or [])
        response = httpx.post(
            f"{controller_url}/api/v1/vms", json=body, headers=headers, timeout=120, verify=verify
        )
        if response.status_code >= 400:
            existing = httpx.get(
                f"{controller_url}/api/v1/vms/{body['name']}", headers=headers, verify=verify
            )
            if existing.status_code != 200:
                console.print(f"[red]demo VM {body['name']}: {escape(response.text[:300])}[/red]")
                continue
            response = existing
        shown.append(response.json())
    if shown:
        console.print("two VMs of two levels, each pinned to its level's vNode:")
        vm_table(shown)
    return [vm["name"] for vm in shown]


def agent_settings(agent_dir: Path, data_dir: Path, subnet: str, image: Path | None) -> Path:
    """DATA_DIR/agent/agent.toml: the agent owns the NAT network `pinfold-demo`
    on `subnet` and puts VMs without NICs on it; without an image, VMs boot the
    demo guest (built here). Rewritten on each start from these flags."""
    lines = [
        f"default_network = {json.dumps(DEMO_NETWORK)}",
        "",
        "[own_network]",
        f"name = {json.dumps(DEMO_NETWORK)}",
        f"subnet = {json.dumps(subnet)}",
    ]
    if image is None:
        try:
            guest = demo_guest(data_dir)
        except GuestBuildError as exc:
            console.print(
                f"[yellow]no demo guest ({escape(str(exc))}): VMs without an image will not boot[/yellow]"
            )
        else:
            boot = (("kernel", guest.kernel), ("initrd", guest.initrd), ("cmdline", guest.cmdline))
            boot_lines = [f"{key} = {json.dumps(str(value))}" for key, value in boot]
            lines = boot_lines + lines
    agent_dir.mkdir(parents=True, exist_ok=True)
    path = agent_dir / "agent.toml"
    # JSON strings are valid TOML basic strings (as in write_cli_config)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def vm_views(agent_url: str, verify: ssl.SSLContext | bool, names: list[str]) -> dict[str, tuple[str, str]]:
    """Each VM's state and first IPv4 address ("" while it has none), from the agent's API."""
    views = {}
    for name in names:
        response = httpx.get(f"{agent_url}/api/v1/vms/{name}", verify=verify)
        vm = response.json() if response.status_code == 200 else {}
        views[name] = (str(vm.get("state", "unknown")), next(iter(vm.get("addresses") or []), ""))
    return views


def show_reach(
    agent_url: str,
    verify: ssl.SSLContext | bool,
    names: list[str],
    driver: str,
    from_image: bool,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """Wait until each running demo VM has an address (at most ADDRESS_TIMEOUT_S;
    one not running is not waited for), then print them, a command that reaches
    one, and the console command; with the sim driver, what is simulated."""
    if not names:
        return
    if driver == "sim":
        console.print(SIMULATED)
    else:
        console.print(f"waiting for the demo VMs' addresses (DHCP on {DEMO_NETWORK}) ...")
    deadline = time.monotonic() + ADDRESS_TIMEOUT_S

    def settled() -> dict[str, tuple[str, str]] | None:
        views = vm_views(agent_url, verify, names)
        done = all(state != "running" or address for state, address in views.values())
        return views if done or time.monotonic() > deadline else None

    views = wait_until("the demo VMs' addresses", settled, processes, ADDRESS_TIMEOUT_S + 60)
    for name, (state, address) in views.items():
        shown = address or ("no address yet" if state == "running" else f"not running ({state})")
        console.print(f"  {name}  {shown}", highlight=False)
    reachable = [name for name, (_, address) in views.items() if address]
    if not reachable:
        console.print("no demo VM has an address: `pinfold vm list` shows them")
        return
    name, first = reachable[-1], views[reachable[-1]][1]
    reach = (
        f"ssh {first}   (the image's user, e.g. debian@)"
        if from_image
        else f"curl http://{first}:{NET_PORT}/"
    )
    prefix = "(simulated) " if driver == "sim" else ""
    console.print(f"{prefix}reach one:   {reach}", highlight=False)
    console.print(f"{prefix}its console: pinfold vm console {name}   ({ESCAPE_NAME} leaves)", highlight=False)
