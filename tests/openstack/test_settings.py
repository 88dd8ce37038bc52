"""How pinfold reaches a cloud: a clouds.yaml cloud or explicit settings,
never the environment; RAPID's OpenStack keys mapped onto them."""

from __future__ import annotations

from pathlib import Path

import openstack.config
import pytest

from pinfold.openstack.settings import CloudSettings, from_rapid_keys
from pinfold.rapid.config import OPENSTACK_KEYS
from tests.rapid.test_config import SHIPPED

#: RAPID's shipped OpenStack keys (PROTOCOL.md section 7), one with blanks around it
RAPID = {key: SHIPPED[key] for key in OPENSTACK_KEYS} | {"androidHelperVmImageId": " 18e0b1a9 "}


def test_rapids_keys_map_onto_the_settings() -> None:
    settings = from_rapid_keys(RAPID)
    assert (settings.auth_url, settings.user_id, settings.password) == (
        "http://0.0.0.0:5000/v3",
        "userId",
        "admin",
    )
    assert (settings.project_id, settings.domain_id) == ("0a1b", "2c3d")
    assert (settings.network, settings.key_name, settings.security_group) == (
        "5e6f",
        "rapid_vms",
        "Offloading",
    )
    assert settings.flavors == {"1_1024_20": "8ff03907", "2_1024_20": "d97def8c", "4_1024_20": "b8c86381"}
    assert settings.images == {
        "linux-normal": "4c5cdd9c",
        "linux-helper": "4c5cdd9c",
        "android-normal": "18e0b1a9",
        "android-helper": "18e0b1a9",
    }
    assert settings.problem() is None
    assert "admin" not in repr(settings)


def test_empty_rapid_keys_are_left_out_and_the_lack_is_named() -> None:
    settings = from_rapid_keys(dict.fromkeys(RAPID, "") | {"authAddress": "http://127.0.0.1:5000/v3"})
    assert (settings.flavors, settings.images, settings.network) == ({}, {}, "")
    assert settings.problem() == (
        "no clouds.yaml cloud named, and the explicit settings lack a user (username or user_id), password, "
        "a project (project_id or project_name)"
    )


def test_explicit_settings_make_a_region_without_files_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """openstacksdk's own loader, given the settings' options: the auth is
    what was set, and OS_* variables are not mixed in."""
    monkeypatch.setenv("OS_USERNAME", "from-the-environment")
    monkeypatch.setenv("OS_REGION_NAME", "elsewhere")
    settings = from_rapid_keys(RAPID)
    region = openstack.config.OpenStackConfig(**settings.loader_options()).get_one(
        **settings.region_options()
    )
    auth = region.config["auth"]
    assert auth["user_id"] == "userId"
    assert "username" not in auth
    assert (auth["project_id"], auth["user_domain_id"], auth["project_domain_id"]) == ("0a1b", "2c3d", "2c3d")
    assert region.region_name != "elsewhere"
    assert float(region.config["api_timeout"]) == 30.0


def test_a_clouds_yaml_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_PASSWORD", "from-the-environment")
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  lab:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: member\n"
        "      password: pw\n      project_name: demo\n      user_domain_name: Default\n"
        "      project_domain_name: Default\n    region_name: RegionOne\n"
    )
    settings = CloudSettings(cloud="lab", clouds_yaml=clouds, network="private")
    assert settings.problem() is None
    region = openstack.config.OpenStackConfig(**settings.loader_options()).get_one(
        **settings.region_options()
    )
    assert (region.config["auth"]["username"], region.config["auth"]["password"]) == ("member", "pw")
    assert region.region_name == "RegionOne"
