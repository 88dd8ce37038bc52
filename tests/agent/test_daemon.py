"""`pinfold agent` as an operator runs it: settings layers, the token file,
and the daemon itself in a subprocess, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from pinfold.agent.config import (
    AgentConfig,
    ConfigError,
    advertised_url,
    enrols_blind,
    load_config,
    load_enrolment_token,
    load_or_create_token,
)
from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import VMRequest
from pinfold.tokens import TokenError
from tests.conftest import I7
from tests.servers import free_port, wait_for_health


def test_flags_override_environment_which_overrides_the_file(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('port = 9001\ndriver = "sim"\ncritical_size = 3\n')
    env = {"PINFOLD_AGENT_PORT": "9002", "PINFOLD_AGENT_CRITICAL_SIZE": "4"}
    settings = load_config(config, {"port": 9003}, env)
    assert (settings.port, settings.critical_size, settings.driver) == (9003, 4, "sim")


@pytest.mark.parametrize(
    ("listen", "advertised"),
    [
        ("127.0.0.1", "http://127.0.0.1:9001"),
        ("0.0.0.0", "http://127.0.0.1:9001"),
        ("::", "http://127.0.0.1:9001"),
        ("::1", "http://[::1]:9001"),  # was http://::1:9001, which the controller cannot call
        ("fe80::1%eth0", "http://[fe80::1%eth0]:9001"),
    ],
)
def test_the_address_told_to_the_controller_is_a_url_it_can_call(listen: str, advertised: str) -> None:
    assert advertised_url(load_config(None, {"listen": listen, "port": 9001}, {})) == advertised


@pytest.mark.parametrize(
    ("content", "flags", "problem"),
    [
        ("prot = 1\n", {}, "prot: Extra inputs"),
        ("port = 0\n", {}, "port"),
        ('driver = "xen"\n', {}, "driver"),
        ("port = \n", {}, "agent.toml"),
        ("", {"token": "short"}, "token"),
        ('slackvm_open_networks = ["127.0.0.0/33"]\n', {}, "slackvm_open_networks"),
        ('[[pools]]\nname = "a b"\nsize = 1\nvcpus = 1\nmemory_mib = 1\n', {}, "pools.0.name"),
        ('[[pools]]\nname = "a"\nsize = -1\nvcpus = 1\nmemory_mib = 1\n', {}, "pools.0.size"),
        ('[[pools]]\nname = "a"\nsize = 1\nvcpus = 1\nmemory_mib = 1\n' * 2, {}, "same name"),
        ("migration_timeout_s = 0\n", {}, "migration_timeout_s"),
        ("migration_timeout_s = 1501\n", {}, "migration_timeout_s"),
    ],
    ids=[
        "unknown-key",
        "bad-port",
        "bad-driver",
        "not-toml",
        "short-token",
        "bad-network",
        "pool-name",
        "pool-size",
        "pool-twice",
        "migration-timeout-zero",
        "migration-timeout-past-the-controllers-wait",
    ],
)
def test_bad_settings_say_which_and_where(tmp_path, content, flags, problem):
    config = tmp_path / "agent.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        load_config(config, flags, {})


def test_monitor_period_and_token_file_flags_override_the_environment_which_overrides_the_file(
    tmp_path, monkeypatch
):
    from pinfold.cli import app

    served: list[AgentConfig] = []
    monkeypatch.setattr("pinfold.agent.daemon.serve", served.append)
    config = tmp_path / "agent.toml"
    config.write_text(f'monitor_period_s = 30.0\ntoken_file = "{tmp_path / "file.token"}"\n')
    env: dict[str, str | None] = {
        "PINFOLD_AGENT_MONITOR_PERIOD_S": "20",
        "PINFOLD_AGENT_TOKEN_FILE": str(tmp_path / "env.token"),
    }
    unset = dict.fromkeys(env)
    flags = ["--monitor-period", "5", "--token-file", str(tmp_path / "flag.token")]
    cases: list[tuple[list[str], dict[str, str | None], tuple[float, str]]] = [
        ([], unset, (30.0, "file.token")),
        ([], env, (20.0, "env.token")),
        (flags, env, (5.0, "flag.token")),
    ]
    for given, environ, (period, token_file) in cases:
        result = CliRunner().invoke(app, ["agent", "--config", str(config), *given], env=environ)
        assert result.exit_code == 0, result.output
        assert served[-1].monitor_period_s == period
        assert served[-1].token_file == tmp_path / token_file
    refused = CliRunner().invoke(app, ["agent", "--monitor-period", "0"], env=unset)
    assert (refused.exit_code, "monitor_period_s" in refused.output) == (2, True)
    assert CliRunner().invoke(app, ["agent", "--token", "x" * 32]).exit_code == 2  # no token in ps


def test_a_token_file_is_read_never_created(tmp_path):
    token_file = tmp_path / "cluster.token"
    token_file.write_text("cluster-token-0123456789\n")
    settings = AgentConfig(data_dir=tmp_path / "data", token_file=token_file)
    assert load_or_create_token(settings) == "cluster-token-0123456789"
    assert not (tmp_path / "data" / "agent.token").exists()
    for problem, content in [("No such file", None), ("no usable token", "short\n")]:
        token_file.unlink(missing_ok=True)
        if content is not None:
            token_file.write_text(content)
        with pytest.raises(TokenError, match=problem):
            load_or_create_token(settings)
    with pytest.raises(ConfigError, match="set one, not both"):
        load_config(None, {"token": "t" * 16, "token_file": token_file}, {})


def test_an_agent_that_would_enrol_with_a_token_of_its_own_making_is_told(tmp_path):
    """Its random token is refused by the controller for ever: said at start."""
    url = "http://127.0.0.1:8100"
    assert enrols_blind(AgentConfig(data_dir=tmp_path, controller_url=url))
    assert not enrols_blind(AgentConfig(data_dir=tmp_path))  # no controller: nothing to enrol with
    assert not enrols_blind(AgentConfig(data_dir=tmp_path, controller_url=url, enrolment_token="e" * 16))
    assert not enrols_blind(AgentConfig(data_dir=tmp_path, controller_url=url, token="t" * 16))
    (tmp_path / "host.token").write_text("credential-0123456789abcdef\n")
    assert not enrols_blind(AgentConfig(data_dir=tmp_path, controller_url=url))  # enrolled already


def test_the_enrolment_token_is_the_setting_or_its_file_else_the_agents_own(tmp_path):
    """Without one, an agent enrols with its own token: what an agent given the
    cluster's agent token as its own before host credentials keeps doing."""
    enrolment_file = tmp_path / "enrolment.token"
    enrolment_file.write_text("cluster-enrolment-0123456789\n")
    data = tmp_path / "data"
    assert load_enrolment_token(AgentConfig(data_dir=data), "own-token-0123456789") == "own-token-0123456789"
    given = AgentConfig(data_dir=data, enrolment_token_file=enrolment_file)
    assert load_enrolment_token(given, "own-token-0123456789") == "cluster-enrolment-0123456789"
    enrolment_file.write_text("short\n")
    with pytest.raises(TokenError, match="no usable token"):
        load_enrolment_token(given, "own-token-0123456789")
    with pytest.raises(ConfigError, match="set one, not both"):
        load_config(None, {"enrolment_token": "t" * 16, "enrolment_token_file": enrolment_file}, {})


def test_token_is_created_once_with_mode_0600(tmp_path):
    settings = AgentConfig(data_dir=tmp_path / "data")
    token = load_or_create_token(settings)
    path = tmp_path / "data" / "agent.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(settings) == token
    assert len(token) >= 32


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_daemon_serves_and_stops_on_sigterm_or_sigint(tmp_path, signum):
    port = free_port()
    token_file = tmp_path / "cluster.token"
    token_file.write_text("cluster-token-0123456789abcdef\n")
    command = [sys.executable, "-m", "pinfold", "agent", "--driver", "sim", "--port", str(port)]
    command += ["--topology", str(I7), "--data-dir", str(tmp_path / "data"), "--token-file", str(token_file)]
    command += ["--monitor-period", "0.2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, "the agent")
        created = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/vms",
            json={"name": "a", "vcpus": 1, "memory_mib": 64},
            headers={"Authorization": "Bearer cluster-token-0123456789abcdef"},
        )
        assert created.status_code == 201
        monitor = httpx.get(f"http://127.0.0.1:{port}/api/v1/host").json()["monitor"]
        assert monitor["period_s"] == 0.2
    finally:
        process.send_signal(signum)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert not (tmp_path / "data" / "agent.token").exists()  # the file named was used
    assert "sim driver" in output
    assert "pinfold agent: stopped" in output
    assert (tmp_path / "data" / "agent.db").exists()
    assert os.path.getsize(tmp_path / "data" / "agent.db") > 0


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_daemon_keeps_its_warm_pool_full_and_hands_members_out(tmp_path):
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        '[[pools]]\nname = "small"\nsize = 1\nvcpus = 1\nmemory_mib = 128\nratio = 2.0\nwarmup_s = 0\n'
    )
    command = [sys.executable, "-m", "pinfold", "agent", "--config", str(config), "--driver", "sim"]
    command += ["--port", str(port), "--topology", str(I7), "--data-dir", str(tmp_path / "data")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def pool() -> object:
        try:
            return httpx.get(f"{url}/api/v1/host", timeout=1).json()["pools"]["small"]
        except httpx.HTTPError:
            return None

    try:
        wait_until(
            lambda: pool() == {"size": 1, "ready": 1, "warming": 0, "last_error": None}, 30, "a ready member"
        )
        token = (tmp_path / "data" / "agent.token").read_text().strip()
        created = httpx.post(
            f"{url}/api/v1/vms",
            json={"name": "web", "vcpus": 1, "memory_mib": 128, "ratio": 2.0},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201, created.text
        assert (created.json()["domain"], created.json()["state"]) == ("pool-small-0", "running")
        wait_until(
            lambda: pool() == {"size": 1, "ready": 1, "warming": 0, "last_error": None},
            30,
            "the pool to refill",
        )
        assert [vm["name"] for vm in httpx.get(f"{url}/api/v1/vms").json()] == ["web"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def test_direct_kernel_boot_settings_reach_the_agent(tmp_path):
    from pinfold.agent.daemon import build_agent

    config = tmp_path / "agent.toml"
    config.write_text(
        f'driver = "sim"\ntopology = "{I7}"\ndata_dir = "{tmp_path / "data"}"\n'
        'kernel = "/boot/vmlinuz"\ninitrd = "/boot/initrd.img"\ncmdline = "console=ttyS0"\n'
    )
    agent, driver, description = build_agent(load_config(config, {}, {}))
    assert isinstance(driver, SimDriver)
    assert description.startswith("sim driver")
    assert agent.settings.kernel == Path("/boot/vmlinuz")
    assert agent.settings.initrd == Path("/boot/initrd.img")
    assert agent.settings.cmdline == "console=ttyS0"
    agent.close()


def test_the_migration_time_limit_reaches_the_agent(tmp_path):
    from pinfold.agent.daemon import build_agent

    config = tmp_path / "agent.toml"
    config.write_text(f'driver = "sim"\ntopology = "{I7}"\ndata_dir = "{tmp_path / "data"}"\n')
    agent, _, _ = build_agent(load_config(config, {"migration_timeout_s": 2.5}, {}))
    assert agent.settings.migration_timeout_s == 2.5
    agent.close()


def test_network_settings_reach_the_agent_and_the_sim_host_has_the_default_network(tmp_path):
    from pinfold.agent.daemon import build_agent

    config = tmp_path / "agent.toml"
    config.write_text(
        f'driver = "sim"\ntopology = "{I7}"\ndata_dir = "{tmp_path / "data"}"\n'
        'default_network = "default"\n[own_network]\nname = "pinfold"\nsubnet = "10.77.0.0/24"\n'
    )
    agent, _, _ = build_agent(load_config(config, {}, {}))
    assert agent.settings.default_network == "default"
    shown = {n["name"]: (n["owned"], n["default"], n["subnet"]) for n in agent.networks()}
    assert shown == {"default": (False, True, None), "pinfold": (True, False, "10.77.0.0/24")}
    assert [nic.network for nic in agent.create(VMRequest("web", 1, 256)).nics] == ["default"]
    agent.close()
    flagged = load_config(config, {"default_network": "pinfold"}, {"PINFOLD_AGENT_DEFAULT_NETWORK": "x"})
    assert flagged.default_network == "pinfold"  # the flag over the environment over the file


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('default_network = "a b"', "default_network"),
        ('default_bridge = "br/0"', "default_bridge"),
        ('default_network = "default"\ndefault_bridge = "br0"', "not both"),
        ('[own_network]\nname = "n"\nsubnet = "10.0.0.0/30"', "too small"),
        ('[own_network]\nname = "n"\nsubnet = "10.0.0.1/24"', "own_network.subnet"),
        ('[own_network]\nname = "n"\nsubnet = "fd00::/64"', "own_network.subnet"),
        ('[own_network]\nsubnet = "10.0.0.0/24"', "own_network.name"),
    ],
)
def test_bad_network_settings_say_which(tmp_path, content, problem):
    config = tmp_path / "agent.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        load_config(config, {}, {})


def test_the_openstack_driver_takes_its_cloud_from_flags_or_its_table(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('driver = "openstack"\n[openstack]\ncloud = "a"\nimage = "img"\nflavor = "f"\n')
    settings = load_config(config, {"os_cloud": "b", "os_network": "net", "host_id": "h1"}, {})
    assert (settings.openstack.cloud, settings.openstack.image, settings.openstack.flavor) == (
        "b",
        "img",
        "f",
    )
    assert settings.openstack.settings().network == "net"
    assert settings.cloud_owner == "pinfold-agent@h1"


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ({"driver": "openstack"}, "driver openstack: no clouds.yaml cloud named"),
        ({"driver": "openstack", "os_cloud": "a", "rapid_config": "/x.xml"}, "RAPID's own openStackSupport"),
        (
            {"driver": "openstack", "os_cloud": "a", "default_network": "default"},
            "default_network are libvirt's",
        ),
    ],
)
def test_an_openstack_agent_without_a_cloud_or_with_rapid_is_refused(
    flags: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(None, flags, {})
