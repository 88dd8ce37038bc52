"""The controller's settings in layers, their errors, and its two tokens."""

from __future__ import annotations

import stat

import pytest

from pinfold.agent.config import AgentConfig
from pinfold.controller.config import ControllerConfigError, load_controller_config
from pinfold.controller.daemon import build_controller


def test_flags_override_environment_which_overrides_the_file(tmp_path):
    path = tmp_path / "controller.toml"
    path.write_text('port = 9100\npolicy = "best-fit"\nheartbeat_period_s = 5\n')
    env = {
        "PINFOLD_CONTROLLER_PORT": "9200",
        "PINFOLD_CONTROLLER_SLACKVM_OPEN_NETWORKS": "127.0.0.0/8, 10.0.0.0/8",
    }
    config = load_controller_config(path, {"port": 9300}, env)
    assert (config.port, config.policy, config.heartbeat_period_s) == (9300, "best-fit", 5.0)
    assert config.slackvm_open_networks == ("127.0.0.0/8", "10.0.0.0/8")
    assert config.url == f"sqlite:///{config.data_dir / 'controller.db'}"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('policy = "random"\n', "policy"),
        ("stale_after_s = 10\nagent_timeout_s = 30\n", "stale_after_s must be longer"),
        ('slackvm_open_networks = ["10.0.0.0/33"]\n', "slackvm_open_networks"),
        ("port = \n", "controller.toml"),
        ("colour = 1\n", "colour"),
    ],
)
def test_bad_settings_say_which(tmp_path, content, problem):
    path = tmp_path / "controller.toml"
    path.write_text(content)
    with pytest.raises(ControllerConfigError, match=problem):
        load_controller_config(path, {}, {})


def test_both_tokens_are_made_once_with_mode_0600(tmp_path):
    config = load_controller_config(None, {"data_dir": tmp_path / "data"}, {})
    admin, agent = config.tokens()
    assert admin != agent
    assert config.tokens() == (admin, agent)
    for name in ("admin.token", "agent.token"):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600


def test_lifecycle_actions_wait_longer_than_an_agents_forced_shutdown(tmp_path):
    """An agent's shutdown forces the guest off after its shutdown_timeout_s:
    the controller's default wait for an action outlasts that with room."""
    default = load_controller_config(None, {}, {})
    assert default.agent_action_timeout_s >= AgentConfig().shutdown_timeout_s + default.agent_timeout_s
    env = {"PINFOLD_CONTROLLER_AGENT_ACTION_TIMEOUT_S": "120"}
    config = load_controller_config(None, {"data_dir": tmp_path}, env)
    assert (config.agent_timeout_s, config.agent_action_timeout_s) == (30.0, 120.0)
    controller, clients = build_controller(config, "agent-token-0123456789")
    try:
        assert clients._action_timeout_s == 120.0
    finally:
        clients.close()
        controller.store.engine.dispose()


def test_coalescing_bound_reaches_the_controller(tmp_path):
    """`coalesce_at_most` from the environment bounds both of the built
    controller's coalescers (1: every create and delete alone); 0 is refused."""
    assert load_controller_config(None, {}, {}).coalesce_at_most == 32
    env = {"PINFOLD_CONTROLLER_COALESCE_AT_MOST": "1"}
    controller, clients = build_controller(
        load_controller_config(None, {"data_dir": tmp_path}, env), "t" * 20
    )
    try:
        assert controller.coalesce_at_most == 1
        assert (controller.coalescer.most, controller.deleter.most) == (1, 1)
    finally:
        clients.close()
        controller.store.engine.dispose()
    with pytest.raises(ControllerConfigError, match="coalesce_at_most"):
        load_controller_config(None, {}, {"PINFOLD_CONTROLLER_COALESCE_AT_MOST": "0"})
