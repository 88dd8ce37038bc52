"""What pinfold adds over openstacksdk on a real cloud (issue 14): create to
ACTIVE and create to address, through `pinfold.openstack.Cloud` and through
the same calls made directly with openstacksdk, in one run, rounds
interleaved (direct, pinfold, direct, ...) so that the cloud's drift hits
both alike.

    python -m benchmarks.bench_openstack CLOUDS_YAML [--rounds 5] [--cloud pinfold-lab]

Direct: `create_server`, then `get_server` polled until ACTIVE, then the
server's Neutron ports polled until one has a fixed IP, at the same
intervals `Cloud` polls (0.1 s growing to 1 s). pinfold: `Cloud.create`
(which also checks that the owner has no server of that name), then
`Cloud.addresses` polled; both given the image's and the network's ids, as
RAPID's keys give them. Every server is deleted after its round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openstack.config
import openstack.connection

from pinfold.openstack.cloud import Cloud
from pinfold.openstack.flavors import choose_flavor
from pinfold.openstack.settings import CloudSettings


def _poll(ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
    pause, deadline = 0.1, time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError("not ready in time")
        time.sleep(pause)
        pause = min(1.0, pause * 1.5)


def direct(
    connection: openstack.connection.Connection, flavor: str, image: str, network: str
) -> dict[str, float]:
    """One server with openstacksdk alone: seconds to ACTIVE and to an address."""
    compute = connection.compute
    start = time.perf_counter()
    server = compute.create_server(
        name=f"bench-direct-{uuid.uuid4().hex[:6]}",
        flavor_id=flavor,
        image_id=image,
        networks=[{"uuid": network}],
    )
    try:
        _poll(lambda: compute.get_server(server.id).status == "ACTIVE")
        active = time.perf_counter() - start
        _poll(lambda: any(port.fixed_ips for port in connection.network.ports(device_id=server.id)))
        return {"active_s": active, "address_s": time.perf_counter() - start}
    finally:
        compute.delete_server(server.id)
        compute.wait_for_delete(server)


def through_pinfold(cloud: Cloud, flavor: Any, image: str) -> dict[str, float]:
    """One server through `Cloud`: seconds to ACTIVE (create returns then) and to an address."""
    name = f"bench-pinfold-{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    cloud.create(name, flavor, image)
    try:
        active = time.perf_counter() - start
        _poll(lambda: bool(cloud.addresses(name)))
        return {"active_s": active, "address_s": time.perf_counter() - start}
    finally:
        cloud.delete(name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("clouds", type=Path)
    parser.add_argument("--cloud", default="pinfold-lab")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    loader = openstack.config.OpenStackConfig(config_files=[str(args.clouds)], load_envvars=False)
    connection = openstack.connection.Connection(config=loader.get_one(cloud=args.cloud))
    network = next(iter(connection.network.networks()))
    image = next(iter(connection.image.images()))
    settings = CloudSettings(cloud=args.cloud, clouds_yaml=args.clouds, network=network.id)
    cloud = Cloud.connect(settings, f"bench-{uuid.uuid4().hex[:6]}")
    flavor = choose_flavor(cloud.flavors(), 1, 1, 0)
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "pinfold": []}
    for _ in range(args.rounds):
        runs["direct"].append(direct(connection, flavor.id, image.id, network.id))
        runs["pinfold"].append(through_pinfold(cloud, flavor, image.id))
    result = {
        way: {
            key: round(statistics.median(run[key] for run in found), 3) for key in ("active_s", "address_s")
        }
        for way, found in runs.items()
    }
    result["overhead_ms"] = {
        key: round((result["pinfold"][key] - result["direct"][key]) * 1000)
        for key in ("active_s", "address_s")
    }
    print(json.dumps({"rounds": args.rounds, "flavor": flavor.name, "medians": result}, indent=2))


if __name__ == "__main__":
    main()
