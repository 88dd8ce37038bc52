"""The CLI against a real controller and agents on loopback: tables for
people, JSON for scripts, explanations, and `pinfold up` as the README runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from typer.testing import CliRunner

from pinfold.cli import app
from pinfold.controller.config import ControllerConfig
from pinfold.tls import client_context
from tests.controller.cluster import ADMIN, LocalCluster
from tests.servers import free_port, serving

runner = CliRunner()


@pytest.fixture
def cluster(tmp_path, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    local.add_host("h1")
    local.add_host("h2")
    yield local
    local.close()


def cli(cluster: LocalCluster, *args: str, token: str = ADMIN) -> tuple[int, str]:
    env = {"PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": token, "COLUMNS": "200"}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_vm_lifecycle_from_the_command_line(cluster):
    code, out = cli(cluster, "vm", "create", "web", "--vcpus", "2", "--memory", "1024", "--level", "2")
    assert code == 0, out
    assert "web" in out
    assert "2:1" in out
    code, out = cli(cluster, "vm", "show", "web", "--json")
    vm = json.loads(out)
    agent = cluster.hosts[vm["host"]].agent
    assert (vm["state"], vm["vcpus"], vm["ratio"]) == ("running", 2, 2.0)
    assert "web" in agent.allocator
    code, out = cli(cluster, "vm", "suspend", "web", "--json")
    assert json.loads(out)["state"] == "paused"
    assert agent.vms["web"].state == "paused"
    code, out = cli(cluster, "vm", "resume", "web", "--json")
    assert json.loads(out)["state"] == "running"
    code, out = cli(cluster, "vm", "list", "--json")
    assert [v["name"] for v in json.loads(out)] == ["web"]
    code, out = cli(cluster, "vm", "delete", "web")
    assert (code, out.strip()) == (0, "deleted web")
    assert "web" not in agent.allocator


def test_text_from_the_controller_is_shown_as_sent_not_read_as_markup(cluster):
    """An owner is any text: `[/x]` once stopped `vm list` with a MarkupError
    and `[bold]...[/bold]` lost its brackets to a style."""
    owner = "[/x] [bold]ops[/bold]"
    code, out = cli(cluster, "vm", "create", "web", "--vcpus", "1", "--memory", "512", "--owner", owner)
    assert code == 0, out
    assert owner in out
    code, out = cli(cluster, "vm", "list")
    assert code == 0, out
    assert owner in out
    code, out = cli(cluster, "vm", "show", "web")
    assert (code, owner in out) == (0, True), out


def test_hosts_and_status(cluster):
    code, out = cli(cluster, "host", "list", "--json")
    assert [(h["id"], h["state"]) for h in json.loads(out)] == [("h1", "up"), ("h2", "up")]
    code, out = cli(cluster, "host", "drain", "h1")
    assert code == 0
    assert "draining" in out
    code, out = cli(cluster, "status", "--json")
    assert json.loads(out)["hosts"] == {"up": 1, "down": 0, "draining": 1}
    code, out = cli(cluster, "host", "undrain", "h1", "--json")
    assert json.loads(out)["state"] == "up"
    code, out = cli(cluster, "host", "show", "nowhere")
    assert code == 1
    assert "unknown host" in out


def test_explain_says_why_host_by_host(cluster):
    code, out = cli(cluster, "vm", "create", "huge", "--vcpus", "9", "--explain")
    assert code == 1
    assert "no host" in out
    assert "0/2 hosts fit" in out
    assert out.count("not enough cpu") >= 2  # the summary, then a row per host
    assert "h1" in out
    assert "h2" in out


def test_explain_shows_the_refusals_as_a_table(cluster):
    code, out = cli(cluster, "vm", "create", "huge", "--vcpus", "9", "--explain")
    assert code == 1
    assert "0/2 hosts fit: 2 not enough cpu at 1.0" in out  # the summary
    header = next(line for line in out.splitlines() if "could ever fit" in line)
    assert all(word in header for word in ("host", "code", "level", "needed", "free"))
    rows = [[cell for cell in line.split() if cell not in "│┃"] for line in out.splitlines()]
    rows = [row for row in rows if row and row[0] in ("h1", "h2")]
    assert [row[0] for row in rows] == ["h1", "h2"]
    assert all(row[-4:] == ["1.0", "9", "8", "no"] for row in rows), out


def test_a_wrong_token_is_refused_and_nothing_changes(cluster):
    code, out = cli(cluster, "vm", "create", "x", token="wrong-token-0123456789")
    assert code == 1
    assert "unauthorized" in out
    assert cluster.controller.vms() == []


def test_pinfold_up_sets_up_a_node_and_stops_on_sigterm(tmp_path):
    """The README's main command, with the sim driver: controller and agent
    start, the CLI's settings are written, the demo VMs of two levels are
    placed and shown, the CLI then works with no flags, and SIGTERM stops it."""
    ports = [free_port(), free_port()]
    env = dict(os.environ, PINFOLD_CLI_CONFIG=str(tmp_path / "cli.toml"), COLUMNS="200")
    env.pop("PINFOLD_URL", None)
    env.pop("PINFOLD_TOKEN", None)
    command = [sys.executable, "-m", "pinfold", "up", "--driver", "sim", "--data-dir", str(tmp_path / "data")]
    command += ["--controller-port", str(ports[0]), "--agent-port", str(ports[1]), "--heartbeat", "0.5"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "cli.toml").exists():
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "pinfold up did not come up"
            time.sleep(0.2)
        assert oct((tmp_path / "cli.toml").stat().st_mode & 0o777) == "0o600"

        def listed() -> Any:
            result = subprocess.run([sys.executable, "-m", "pinfold", "vm", "list", "--json"], env=env,
                                    capture_output=True, text=True, check=True)  # fmt: skip
            return json.loads(result.stdout)

        while len(listed()) < 2:
            assert time.monotonic() < deadline, "no demo VMs"
            time.sleep(0.2)
        vms = {vm["name"]: vm for vm in listed()}
        assert {vm["ratio"] for vm in vms.values()} == {1.0, 2.0}
        assert all(vm["state"] == "running" for vm in vms.values())
        # both over HTTPS, with the local CA pinfold up made, which the CLI's settings name
        settings = tomllib.loads((tmp_path / "cli.toml").read_text())
        ca = tmp_path / "data" / "tls" / "ca.pem"
        assert settings["url"] == f"https://127.0.0.1:{ports[0]}"
        assert settings["ca_file"] == str(ca)
        for name in ("ca.pem", "ca.key", "node.pem", "node.key"):
            assert oct((tmp_path / "data" / "tls" / name).stat().st_mode & 0o777) == "0o600"
        url = f"https://127.0.0.1:{ports[1]}/api/v1/vms"
        on_agent = {vm["name"]: vm["pinning"] for vm in httpx.get(url, verify=client_context(ca)).json()}
        assert set(on_agent) == set(vms)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "pinfold is up" in output
    assert "sim driver" in output
    assert "demo-premium" in output
    # it says what is simulated, and still shows where the VMs are and how to reach one
    assert "simulated (sim driver): no VM boots" in output
    assert "demo-shared  198.51.100." in output
    assert "(simulated) its console: pinfold vm console demo-shared" in output
    assert "pinfold agent: stopped" in output
    assert "pinfold controller: stopped" in output


def test_a_reply_that_is_not_json_is_reported_not_raised():
    """A proxy in front of the controller answering its own HTML 502 page."""
    proxy = FastAPI()

    @proxy.get("/api/v1/vms")
    def bad_gateway() -> HTMLResponse:
        return HTMLResponse("<html><body><h1>502 Bad Gateway</h1></body></html>", status_code=502)

    with serving(proxy) as url:
        for json_flag in ([], ["--json"]):
            env = {"PINFOLD_URL": url, "COLUMNS": "200"}
            result = runner.invoke(app, ["vm", "list", *json_flag], env=env)
            assert result.exit_code == 1, result.output
            assert isinstance(result.exception, SystemExit)  # no traceback
            assert "not a pinfold controller's answer" in result.output
            assert "502" in result.output


def test_explain_from_an_older_controller_shows_its_host_strings():
    """A controller from before `refusals`: its `hosts` strings, one row each."""
    older = FastAPI()

    @older.post("/api/v1/vms")
    def no_host() -> JSONResponse:
        body = {
            "error": "no host",
            "detail": "0/1 hosts fit",
            "hosts": {"h1": "not enough memory: old words", "h2": "[/x] [red]in brackets[/red]"},
        }
        return JSONResponse(body, status_code=409)

    with serving(older) as url:
        env = {"PINFOLD_URL": url, "COLUMNS": "200"}
        result = runner.invoke(app, ["vm", "create", "x", "--explain"], env=env)
    assert result.exit_code == 1, result.output
    assert "why not" in result.output
    assert "not enough memory: old words" in result.output
    assert "[/x] [red]in brackets[/red]" in result.output
    assert "could ever fit" not in result.output


def test_the_host_filter_is_sent_encoded(cluster):
    code, out = cli(cluster, "vm", "create", "web", "--json")
    host = json.loads(out)["host"]
    code, out = cli(cluster, "vm", "list", "--host", host, "--json")
    assert [vm["name"] for vm in json.loads(out)] == ["web"]
    code, out = cli(cluster, "vm", "list", "--host", f"{host}&x=1", "--json")
    assert (code, json.loads(out)) == (0, [])  # one odd host name, not ?host=h1 and x=1


def test_a_shutdown_from_the_cli_waits_longer_than_the_controller_waits_for_the_agent(monkeypatch):
    """A shutdown the agent ends by forcing the guest off takes the agent's
    shutdown_timeout_s and more: the controller waits agent_action_timeout_s
    for it, and the CLI must outwait the controller."""
    seen: dict[str, Any] = {}

    def answer(method: str, url: str, **kwargs: Any) -> httpx.Response:
        seen.update(kwargs, method=method, url=url)
        return httpx.Response(200, json={"name": "web", "state": "shutoff"})

    monkeypatch.setattr(httpx, "request", answer)
    env = {"PINFOLD_URL": "http://controller:8100", "PINFOLD_TOKEN": ADMIN}
    result = runner.invoke(app, ["vm", "shutdown", "web", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert seen["url"].endswith("/api/v1/vms/web/shutdown")
    assert seen["timeout"] > ControllerConfig().agent_action_timeout_s + 10


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPJQep4eS/coYUOy+Uh+HQ/PXtPmYwjCkZNEkZnPROFW alice@laptop"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILgGd5NvHywU0a9ldOLZJ+d+vxVQCdQzEJ3g/qYt3FRX bob"


def test_ssh_keys_and_user_data_from_files_reach_the_vms_seed(cluster, tmp_path):
    from tests.agent.test_seed import read_iso

    (tmp_path / "a.pub").write_text(KEY + "\n")
    (tmp_path / "keys").write_text(f"# two more\n{KEY2}\n\n")
    (tmp_path / "user-data").write_text("#cloud-config\npackages: [nginx]\n")
    code, out = cli(
        cluster, "vm", "create", "web", "--ssh-key", str(tmp_path / "a.pub"), "--ssh-key",
        str(tmp_path / "keys"), "--user-data", str(tmp_path / "user-data"), "--json",
    )  # fmt: skip
    assert code == 0, out
    agent = cluster.hosts[json.loads(out)["host"]].agent
    seed = agent.seeds.path("web")
    _, files = read_iso(seed)
    assert json.loads(files["meta-data"])["public-keys"] == [KEY, KEY2]
    assert files["user-data"] == b"#cloud-config\npackages: [nginx]\n"
    assert cli(cluster, "vm", "delete", "web")[0] == 0
    assert not seed.exists()


def test_bad_key_and_user_data_files_are_clear_errors_and_nothing_is_created(cluster, tmp_path):
    from pinfold.model.vm import MAX_USER_DATA_BYTES

    (tmp_path / "big").write_bytes(b"x" * (MAX_USER_DATA_BYTES + 1))
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    (tmp_path / "empty.pub").write_text("# nothing\n")
    (tmp_path / "bad.pub").write_text("ssh-ed25519 AAAA\n")
    cases = [
        (["--user-data", str(tmp_path / "missing")], 2, "No such file"),
        (["--user-data", str(tmp_path / "big")], 2, f"larger than {MAX_USER_DATA_BYTES} bytes"),
        (["--user-data", str(tmp_path / "latin1")], 2, "not UTF-8"),
        (["--ssh-key", str(tmp_path / "missing.pub")], 2, "No such file"),
        (["--ssh-key", str(tmp_path / "empty.pub")], 2, "no public key"),
        (["--ssh-key", str(tmp_path / "bad.pub")], 1, "ssh key"),  # judged by the controller: a 400
    ]
    for flags, status, words in cases:
        code, out = cli(cluster, "vm", "create", "web", *flags)
        assert code == status, (flags, out)
        assert words in " ".join(out.split()), (flags, out)
    assert json.loads(cli(cluster, "vm", "list", "--json")[1]) == []
    for host in cluster.hosts.values():
        assert host.agent.vms == {}
        assert not host.agent.seeds.directory.exists() or list(host.agent.seeds.directory.iterdir()) == []


def test_the_controller_refuses_too_big_user_data_with_nothing_left(cluster):
    from pinfold.model.vm import MAX_USER_DATA_BYTES

    body = {"name": "web", "vcpus": 1, "memory_mib": 128, "user_data": "é" * (MAX_USER_DATA_BYTES // 2 + 1)}
    response = httpx.post(
        f"{cluster.url}/api/v1/vms", json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid request"
    assert f"at most {MAX_USER_DATA_BYTES}" in response.json()["detail"]
    assert cluster.controller.store.vm("web") is None
    assert all(host.agent.vms == {} for host in cluster.hosts.values())


def test_a_bulk_create_shows_each_vms_host_and_exits_1_if_any_was_refused(cluster):
    """Two hosts take 8 VMs of 2 CPUs: `--count 10` makes 8 (the name gets
    -{n}), shows each host, and the two refused with the reason; exit 1."""
    code, out = cli(cluster, "vm", "create", "ci", "--count", "3", "--vcpus", "2", "--memory", "512")
    assert code == 0, out
    for n in range(3):
        assert f"ci-{n}" in out
    assert "3 VMs asked: 3 created, 0 existing, 0 refused" in out
    code, out = cli(
        cluster, "vm", "create", "b{n}x", "--count", "7", "--start", "1", "--vcpus", "2", "--json"
    )
    assert code == 1, out
    answer = json.loads(out)
    assert [vm["name"] for vm in answer["vms"]] == [f"b{n}x" for n in range(1, 8)]
    assert [vm["result"] for vm in answer["vms"]] == ["created"] * 5 + ["refused"] * 2
    code, out = cli(
        cluster, "vm", "create", "x", "--count", "2", "--vcpus", "2", "--all-or-nothing", "--explain"
    )
    assert code == 1, out
    assert "none was kept" in out
    assert "0/2 hosts fit" in out
    assert "not enough cpu" in out
    assert len(cluster.controller.vms()) == 8


def test_groups_from_the_command_line_and_explain_names_the_group(cluster):
    code, out = cli(cluster, "group", "create", "web", "--policy", "anti-affinity")
    assert code == 0, out
    assert "anti-affinity" in out
    code, out = cli(cluster, "group", "create", "bad", "--policy", "spread")
    assert code == 2, out
    for n in range(2):
        code, out = cli(cluster, "vm", "create", f"web-{n}", "--group", "web", "--memory", "256")
        assert code == 0, out
    assert {vm.host_id for vm in cluster.controller.vms()} == {"h1", "h2"}
    code, out = cli(cluster, "vm", "create", "web-2", "--group", "web", "--memory", "256", "--explain")
    assert code == 1, out
    assert "0/2 hosts fit: 2 group policy: web (anti-affinity)" in out
    assert "rules out the 2 hosts holding its members" in out
    rows = [line for line in out.splitlines() if "group policy: web (anti-affinity)" in line and "h1" in line]
    assert rows, out  # the table's row for h1 names the group
    code, out = cli(cluster, "group", "list", "--json")
    assert [(g["name"], g["members"]) for g in json.loads(out)] == [("web", ["web-0", "web-1"])]
    code, out = cli(cluster, "group", "delete", "web")
    assert code == 1
    assert "group in use" in out
    for n in range(2):
        assert cli(cluster, "vm", "delete", f"web-{n}")[0] == 0
    assert cli(cluster, "group", "delete", "web") == (0, "deleted group web\n")
