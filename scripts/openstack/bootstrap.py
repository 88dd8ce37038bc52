"""Fill the loopback OpenStack lab with what pinfold's tests need.

Run by scripts/openstack-up with the lab's own venv (openstacksdk, PyYAML and
PyMySQL live there, not in the project's venv):

    bootstrap.py databases LAB   once MariaDB answers: the services' databases
                                 and their account
    bootstrap.py identity LAB    once Keystone is served: the service users,
                                 the catalogue, pinfold's project and user, and
                                 LAB/clouds.yaml
    bootstrap.py resources LAB   once every service is started: flavors, images,
                                 a network; then wait until the compute host can
                                 take servers
    bootstrap.py check LAB       a lab already up and filled: pinfold's user
                                 logs in and Neutron and Nova answer it

One openstacksdk session does in seconds what ~23 CLI calls do in a minute.
Every step finds before it creates, so a second run changes nothing. Waiting
is polling with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pymysql
import yaml
from keystoneauth1 import exceptions as ksa_exceptions

import openstack
from openstack import exceptions as sdk_exceptions

HOST = "127.0.0.1"
KEYSTONE = f"http://{HOST}:5000/v3"
REGION = "RegionOne"
COMPUTE_HOST = "pinfold-lab"
USER_CLOUD = "pinfold-lab"
ADMIN_CLOUD = "pinfold-lab-admin"
PROJECT = "pinfold"
USER = "pinfold"

# name, type, URL of every service the lab serves (Keystone registers itself).
SERVICES = [
    ("placement", "placement", f"http://{HOST}:8778"),
    ("glance", "image", f"http://{HOST}:9292"),
    ("neutron", "network", f"http://{HOST}:9696"),
    ("nova", "compute", f"http://{HOST}:8774/v2.1"),
]
# name: (vCPUs, MiB, GB, extra specs). lab.dedicated carries the extra spec
# with which the openstack driver asks for 1:1 (pinned) CPUs; the fake compute
# driver pins nothing.
FLAVORS: dict[str, tuple[int, int, int, dict[str, str]]] = {
    "lab.tiny": (1, 128, 1, {}),
    "lab.small": (2, 512, 2, {}),
    "lab.medium": (4, 2048, 10, {}),
    "lab.dedicated": (2, 512, 2, {"hw:cpu_policy": "dedicated"}),
    # More disk than the fake host has (600000 GB) and within every quota
    # (Nova counts no disk): Nova's scheduler answers "No valid host".
    "lab.nohost": (1, 128, 700000, {}),
}
# The fake driver boots nothing: a few KB stand for a disk image.
IMAGES = ["lab-image", "lab-helper-image"]
NETWORK = "lab-net"
SUBNET = "lab-subnet"
CIDR = "10.99.0.0/24"

T = TypeVar("T")


def log(message: str) -> None:
    print(f"bootstrap: {message}", file=sys.stderr, flush=True)


def poll(what: str, probe: Callable[[], T | None], timeout: float = 300.0) -> T:
    """The first truthy answer of ``probe``; errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            answer = probe()
            if answer:
                return answer
        except (sdk_exceptions.SDKException, ksa_exceptions.ClientException, pymysql.Error) as exc:
            last = exc
        time.sleep(0.5)
    raise SystemExit(f"bootstrap: {what} not ready after {timeout:.0f} s (last error: {last})")


def read_secrets(lab: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (lab / "secrets.env").read_text().splitlines() if "=" in line)
    return dict(pairs)


def cloud(username: str, password: str, project: str) -> dict[str, Any]:
    return {
        "auth": {
            "auth_url": KEYSTONE,
            "username": username,
            "password": password,
            "project_name": project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": REGION,
        "identity_api_version": 3,
        "interface": "public",
    }


def connect(config: dict[str, Any]) -> openstack.connection.Connection:
    return openstack.connect(**config)


DATABASES = ["keystone", "placement", "glance", "neutron", "nova_api", "nova", "nova_cell0"]


def databases(lab: Path) -> None:
    """Every service's database and the one account they share, as MariaDB's
    root through its socket (root's login is the socket's peer, no password)."""
    secrets = read_secrets(lab)
    db = pymysql.connect(unix_socket=str(lab / "run" / "mysqld.sock"), user="root")
    try:
        with db.cursor() as cursor:
            for name in DATABASES:  # identifiers cannot be parameters; these are constants
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
            cursor.execute(
                "CREATE USER IF NOT EXISTS 'openstack'@%s IDENTIFIED BY %s", (HOST, secrets["DB_PASSWORD"])
            )
            cursor.execute("GRANT ALL PRIVILEGES ON *.* TO 'openstack'@%s", (HOST,))
        db.commit()
    finally:
        db.close()


def ensure_user(conn: Any, name: str, password: str, project: Any, *roles: Any) -> None:
    # An existing user keeps its password: the lab's passwords are made once,
    # and hashing one again costs Keystone a second.
    user = conn.identity.find_user(name, domain_id="default")
    if user is None:
        user = conn.identity.create_user(name=name, password=password, domain_id="default")
    for role in roles:
        conn.identity.assign_project_role_to_user(project, user, role)


def ensure_project(conn: Any, name: str) -> Any:
    project = conn.identity.find_project(name, domain_id="default")
    return project or conn.identity.create_project(name=name, domain_id="default")


def ensure_service(conn: Any, name: str, kind: str, url: str) -> None:
    service = conn.identity.find_service(name)
    if service is None:
        service = conn.identity.create_service(name=name, type=kind)
    present = {e.interface for e in conn.identity.endpoints(service_id=service.id)}
    for interface in ("public", "internal", "admin"):
        if interface not in present:
            conn.identity.create_endpoint(
                service_id=service.id, interface=interface, url=url, region_id=REGION
            )


def identity(lab: Path) -> None:
    secrets = read_secrets(lab)
    admin_cloud = cloud("admin", secrets["ADMIN_PASSWORD"], "admin")
    conn = connect(admin_cloud)
    poll("keystone", lambda: conn.identity.find_role("admin"), timeout=120)
    admin_role = conn.identity.find_role("admin")
    # Nova sends its own token as X-Service-Token with the user's; keystonemiddleware
    # accepts it only from a user with the "service" role (service_token_roles_required).
    service_role = conn.identity.find_role("service")
    member_role = conn.identity.find_role("member")
    service_project = ensure_project(conn, "service")
    for name, kind, url in SERVICES:
        ensure_user(conn, name, secrets["SERVICE_PASSWORD"], service_project, admin_role, service_role)
        ensure_service(conn, name, kind, url)
    project = ensure_project(conn, PROJECT)
    ensure_user(conn, USER, secrets["PINFOLD_PASSWORD"], project, member_role)
    clouds = {
        "clouds": {
            USER_CLOUD: cloud(USER, secrets["PINFOLD_PASSWORD"], PROJECT),
            ADMIN_CLOUD: admin_cloud,
        }
    }
    target = lab / "clouds.yaml"
    staged = target.with_suffix(".new")
    staged.touch(mode=0o600)
    staged.write_text(yaml.safe_dump(clouds, sort_keys=False))
    staged.replace(target)
    log(f"identity ready, clouds in {target}")


def ensure_flavors(conn: Any) -> None:
    for name, (vcpus, ram, disk, specs) in FLAVORS.items():
        if conn.compute.find_flavor(name) is None:
            flavor = conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, is_public=True)
            if specs:
                conn.compute.create_flavor_extra_specs(flavor, specs)


def ensure_images(conn: Any) -> None:
    for name in IMAGES:
        if conn.image.find_image(name) is None:
            conn.image.create_image(
                name,
                data=bytes(4096),
                disk_format="raw",
                container_format="bare",
                visibility="public",
                wait=True,
            )


def ensure_network(conn: Any) -> None:
    network = conn.network.find_network(NETWORK)
    if network is None:
        network = conn.network.create_network(name=NETWORK)
    if conn.network.find_subnet(SUBNET) is None:
        conn.network.create_subnet(name=SUBNET, network_id=network.id, ip_version=4, cidr=CIDR)


def host_mapped(secrets: dict[str, str]) -> bool:
    """Nova's scheduler maps a new compute host to its cell on a timer
    (discover_hosts_in_cells_interval); until then every boot fails."""
    db = pymysql.connect(host=HOST, user="openstack", password=secrets["DB_PASSWORD"], database="nova_api")
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT 1 FROM host_mappings WHERE host = %s", (COMPUTE_HOST,))
            return cursor.fetchone() is not None
    finally:
        db.close()


def compute_up(admin: Any) -> bool:
    return any(s.binary == "nova-compute" and s.state == "up" for s in admin.compute.services())


def resources(lab: Path) -> None:
    secrets = read_secrets(lab)
    admin = connect(cloud("admin", secrets["ADMIN_PASSWORD"], "admin"))
    user = connect(cloud(USER, secrets["PINFOLD_PASSWORD"], PROJECT))
    poll("nova-api", lambda: list(admin.compute.flavors()) is not None)
    ensure_flavors(admin)
    poll("glance", lambda: list(admin.image.images()) is not None)
    ensure_images(admin)
    poll("neutron", lambda: list(user.network.networks()) is not None)
    ensure_network(user)
    poll("the compute host in Placement", lambda: list(admin.placement.resource_providers(name=COMPUTE_HOST)))
    poll("the compute host in its cell", lambda: host_mapped(secrets))
    poll("the nova-compute service", lambda: compute_up(admin))
    poll("pinfold's flavors", lambda: user.compute.find_flavor("lab.tiny"))
    poll("pinfold's images", lambda: user.image.find_image(IMAGES[0]))
    log("resources ready")


def check(lab: Path) -> None:
    secrets = read_secrets(lab)
    user = connect(cloud(USER, secrets["PINFOLD_PASSWORD"], PROJECT))
    poll("pinfold's network", lambda: user.network.find_network(NETWORK), timeout=60)
    poll("pinfold's flavors", lambda: user.compute.find_flavor("lab.tiny"), timeout=60)


COMMANDS: dict[str, Callable[[Path], None]] = {
    "databases": databases,
    "identity": identity,
    "resources": resources,
    "check": check,
}


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[1] not in COMMANDS:
        raise SystemExit(f"usage: bootstrap.py {'|'.join(COMMANDS)} LAB_DIRECTORY")
    COMMANDS[argv[1]](Path(argv[2]))


if __name__ == "__main__":
    main(sys.argv)
