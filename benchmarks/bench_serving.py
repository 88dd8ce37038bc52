"""CPU a small request costs the server, for pinfold's HTTP serving and for
plain uvicorn stacks to compare it with (issue 16, eighth round).

Each stack serves, in its own process on loopback, a sync FastAPI route that
answers a small JSON body (the shape of a create's answer); one kept-alive
httpx client posts to it. The server's CPU is read from /proc before and
after, so what the client and the machine's other load do does not count.

    python -m benchmarks.bench_serving [--requests 3000] [--rounds 2]

Stacks: `pinfold` (`pinfold.serving.server`: uvloop, httptools, the request
deadline and connection bound), `asyncio-h11` and `uvloop-httptools` (plain
uvicorn). Rounds alternate the stacks; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import psutil

from benchmarks.common import poll

STACKS = ("asyncio-h11", "uvloop-httptools", "pinfold")


def serve(stack: str, port: int) -> None:
    """Serve the small route with `stack` until terminated."""
    import uvicorn
    from fastapi import FastAPI

    from pinfold.serving import ServerLimits, server

    app = FastAPI()

    @app.post("/vms", response_model=None)
    def create(body: dict[str, Any]) -> dict[str, Any]:
        return {"name": body.get("name"), "state": "running", "host": "h00", "pinning": [1, 2, 3]}

    if stack == "pinfold":
        server(app, "127.0.0.1", port, ServerLimits()).run()
        return
    loop, http = stack.split("-")
    uvicorn.run(app, host="127.0.0.1", port=port, loop=loop, http=http, log_level="warning")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_cpu_ms(server: psutil.Process) -> float:
    """The process's user and system CPU so far, in ms."""
    times = server.cpu_times()
    return (times.user + times.system) * 1000


def measure(stack: str, requests: int) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.bench_serving", "--serve", stack, "--port", str(port)]
    process = subprocess.Popen(command)
    server = psutil.Process(process.pid)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def answers() -> bool:
                try:
                    return client.post("/vms", json={"name": "up"}).status_code == 200
                except httpx.TransportError:
                    return False

            poll(answers, f"the {stack} server", timeout_s=30, every_s=0.1)
            for i in range(200):  # warm up
                client.post("/vms", json={"name": f"w{i}", "vcpus": 2})
            before, started = server_cpu_ms(server), time.perf_counter()
            for i in range(requests):
                client.post("/vms", json={"name": f"vm{i}", "vcpus": 2, "memory_mib": 2048})
            wall, after = time.perf_counter() - started, server_cpu_ms(server)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "stack": stack,
        "requests_per_s": round(requests / wall, 1),
        "server_cpu_ms_a_request": round((after - before) / requests, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    results = [measure(stack, args.requests) for _ in range(args.rounds) for stack in STACKS]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
