"""How to reach an OpenStack cloud, and the defaults a VM is made with there.

Two ways to name the cloud, as openstacksdk itself takes them: a cloud of a
`clouds.yaml` file (`cloud`, and `clouds_yaml` for a file outside
openstacksdk's search path), or explicit settings (`auth_url`, a user by name
or id, `password`, a project by id or name, a domain). Nothing else is read:
no `OS_*` environment variable and no `clouds.yaml` of the user's home is
mixed into explicit settings, so that what pinfold was told is what it uses.

`from_rapid_keys` maps RAPID's OpenStack keys (configuration.xml, PROTOCOL.md
section 7) onto these settings:

| RAPID key | here | why |
|---|---|---|
| `authAddress` | `auth_url` | Keystone v3's URL, as RAPID's openstack4j took it |
| `openStackUserId` | `user_id` | a Keystone user **id** (openstack4j's `v3().credentials(userId, ...)`) |
| `openStackPasswd` | `password` | |
| `projectId1` | `project_id` | the project the token is scoped to |
| `projectId2` | `domain_id` | most likely the project's domain (PROTOCOL.md 4.4): user and project domain |
| `networkId` | `network` | the Neutron network every VM gets a port on |
| `publicKey` | `key_name` | a Nova key pair's *name* |
| `offloadingSecurity` | `security_group` | a security group's name, added to every VM |
| `defaultFlavorId` | `flavors["1_1024_20"]` | RAPID's named flavors |
| `type2_1024_20FlavorId` | `flavors["2_1024_20"]` | |
| `type4_1024_20FlavorId` | `flavors["4_1024_20"]` | the helpers' flavor |
| `linuxNormalVmImageId` | `images["linux-normal"]` | Glance ids (or names) per VM kind |
| `linuxHelperVmImageId` | `images["linux-helper"]` | |
| `androidNormalVmImageId` | `images["android-normal"]` | |
| `androidHelperVmImageId` | `images["android-helper"]` | the helpers' image (RAPID's choice) |

An empty key is left out (RAPID read a missing key as ""), so that a
deployment can name only what it uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["RAPID_FLAVOR_KEYS", "RAPID_IMAGE_KEYS", "CloudSettings", "from_rapid_keys", "rapid_image"]

#: RAPID's flavor keys -> the flavor's role here (RAPID's type "<vcpus>_<memory MB>_<disk GB>")
RAPID_FLAVOR_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "defaultFlavorId": "1_1024_20",
        "type2_1024_20FlavorId": "2_1024_20",
        "type4_1024_20FlavorId": "4_1024_20",
    }
)
#: RAPID's image keys -> the image's role here ("<os>-<kind>")
RAPID_IMAGE_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "linuxNormalVmImageId": "linux-normal",
        "linuxHelperVmImageId": "linux-helper",
        "androidNormalVmImageId": "android-normal",
        "androidHelperVmImageId": "android-helper",
    }
)


@dataclass(frozen=True)
class CloudSettings:
    """A cloud to reach (a clouds.yaml `cloud`, or the explicit fields) and
    the defaults of the VMs made there (`network`, `key_name`,
    `security_group`, and flavors and images by role: see the module)."""

    cloud: str = ""
    clouds_yaml: Path | None = None
    auth_url: str = ""
    username: str = ""
    user_id: str = ""
    password: str = field(default="", repr=False)
    project_id: str = ""
    project_name: str = ""
    domain_id: str = ""
    domain_name: str = ""
    region: str = ""
    network: str = ""
    key_name: str = ""
    security_group: str = ""
    flavors: Mapping[str, str] = field(default_factory=dict)
    images: Mapping[str, str] = field(default_factory=dict)
    #: seconds any one call to the cloud may take
    timeout_s: float = 30.0

    def problem(self) -> str | None:
        """What keeps these settings from naming a cloud, in one line; None if nothing."""
        if self.cloud:
            return None
        missing = [
            what
            for what, given in (
                ("auth_url", self.auth_url),
                ("a user (username or user_id)", self.username or self.user_id),
                ("password", self.password),
                ("a project (project_id or project_name)", self.project_id or self.project_name),
            )
            if not given
        ]
        if missing:
            return "no clouds.yaml cloud named, and the explicit settings lack " + ", ".join(missing)
        return None

    def loader_options(self) -> dict[str, Any]:
        """`openstack.config.OpenStackConfig`'s arguments: the named clouds.yaml
        (or openstacksdk's search path) for a cloud, no file for explicit
        settings; never the environment."""
        if self.cloud:
            files = [str(self.clouds_yaml)] if self.clouds_yaml is not None else None
            return {"config_files": files, "load_envvars": False}
        return {"load_yaml_config": False, "load_envvars": False}

    def region_options(self) -> dict[str, Any]:
        """`OpenStackConfig.get_one`'s arguments: the cloud's name, or the explicit auth."""
        common: dict[str, Any] = {"api_timeout": self.timeout_s}
        if self.region:
            common["region_name"] = self.region
        if self.cloud:
            return {"cloud": self.cloud, **common}
        auth = {
            key: value
            for key, value in (
                ("auth_url", self.auth_url),
                ("username", self.username),
                ("user_id", self.user_id),
                ("password", self.password),
                ("project_id", self.project_id),
                ("project_name", self.project_name),
                ("user_domain_id", self.domain_id),
                ("project_domain_id", self.domain_id),
                ("user_domain_name", self.domain_name),
                ("project_domain_name", self.domain_name),
            )
            if value
        }
        return {"auth": auth, "auth_type": "password", **common}


def from_rapid_keys(keys: Mapping[str, str]) -> CloudSettings:
    """RAPID's OpenStack keys (as `RapidConfig.openstack` keeps them) as
    settings (the module's table); empty keys are left out."""

    def given(key: str) -> str:
        return keys.get(key, "").strip()

    return CloudSettings(
        auth_url=given("authAddress"),
        user_id=given("openStackUserId"),
        password=given("openStackPasswd"),
        project_id=given("projectId1"),
        domain_id=given("projectId2"),
        network=given("networkId"),
        key_name=given("publicKey"),
        security_group=given("offloadingSecurity"),
        flavors={role: given(key) for key, role in RAPID_FLAVOR_KEYS.items() if given(key)},
        images={role: given(key) for key, role in RAPID_IMAGE_KEYS.items() if given(key)},
    )


def rapid_image(images: Mapping[str, str], *, helper: bool, os_type: int = 0) -> str:
    """The image (a role of `images`) of a RAPID VM: a helper's is Android's
    (RAPID's choice), a user's that of its osType (1 Android, else Linux); the
    other OS's when that one is not given; "" for none."""
    if helper:
        roles = ("android-helper", "linux-helper")
    elif os_type == 1:
        roles = ("android-normal", "linux-normal")
    else:
        roles = ("linux-normal", "android-normal")
    return next((images[role] for role in roles if images.get(role)), "")
