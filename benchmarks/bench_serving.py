"""CPU a small request costs the server, for pinfold's HTTP serving and for
plain uvicorn stacks to compare it with (issue 16, eighth and ninth rounds).

Each variant serves, in its own process on loopback, a route that answers a
small JSON body (the shape of a create's answer); one kept-alive httpx client
posts to it. The server's CPU is read from /proc before and after, so what
the client and the machine's other load do does not count.

    python -m benchmarks.bench_serving [--requests 3000] [--rounds 2]

Stacks, each with a sync FastAPI route (as the daemons' routes are):
`pinfold` (`pinfold.serving.server`: uvloop, httptools, the request deadline
and connection bound), `asyncio-h11` and `uvloop-httptools` (plain uvicorn).
Then, on pinfold's stack, lighter routes that say where a request's CPU goes:
`untraced` (the sync route with FastAPI's native OpenTelemetry off: on by
default since FastAPI 0.16x, with no-op providers unless some are configured),
`async` (the same FastAPI route as a coroutine: no hop to a worker thread),
`starlette` (a Starlette route: no FastAPI) and `asgi` (a bare ASGI app: the
server alone). Rounds alternate the variants; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import httpx
import psutil
from fastapi.telemetry import TelemetryConfig
from tests.servers import free_port

from benchmarks.common import poll, process_cpu_s

STACKS = ("asyncio-h11", "uvloop-httptools", "pinfold")
ROUTES = ("sync", "untraced", "async", "starlette", "asgi")
#: FastAPI's native telemetry, all of it off (the `untraced` route)
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
#: (stack, route): every stack with the sync route, then pinfold's with the lighter ones
VARIANTS = [(stack, "sync") for stack in STACKS] + [("pinfold", route) for route in ROUTES[1:]]


def answer(body: dict[str, Any]) -> dict[str, Any]:
    return {"name": body.get("name"), "state": "running", "host": "h00", "pinning": [1, 2, 3]}


def app_for(route: str) -> Any:
    """The ASGI app serving POST /vms with `route`'s kind of handler."""
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    if route == "asgi":
        return bare_app
    if route == "starlette":

        async def handle(request: Request) -> JSONResponse:
            return JSONResponse(answer(json.loads(await request.body())))

        return Starlette(routes=[Route("/vms", handle, methods=["POST"])])
    app = FastAPI(telemetry=NO_TELEMETRY) if route == "untraced" else FastAPI()
    if route == "async":

        @app.post("/vms", response_model=None)
        async def create_async(body: dict[str, Any]) -> dict[str, Any]:
            return answer(body)

    else:

        @app.post("/vms", response_model=None)
        def create(body: dict[str, Any]) -> dict[str, Any]:
            return answer(body)

    return app


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """POST /vms as a bare ASGI app: the body read whole, the answer in one piece."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    content = json.dumps(answer(json.loads(body))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def serve(stack: str, route: str, port: int) -> None:
    """Serve POST /vms with `stack` and `route` until terminated."""
    import uvicorn

    from pinfold.serving import ServerLimits, server

    app = app_for(route)
    if stack == "pinfold":
        server(app, "127.0.0.1", port, ServerLimits()).run()
        return
    loop, http = stack.split("-")
    uvicorn.run(app, host="127.0.0.1", port=port, loop=loop, http=http, log_level="warning")


def measure(stack: str, route: str, requests: int) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.bench_serving", "--serve", stack, "--route", route]
    command += ["--port", str(port)]
    process = subprocess.Popen(command)
    server = psutil.Process(process.pid)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def answers() -> bool:
                try:
                    return client.post("/vms", json={"name": "up"}).status_code == 200
                except httpx.TransportError:
                    return False

            poll(answers, f"the {stack} server ({route} route)", timeout_s=30, every_s=0.1)
            for i in range(200):  # warm up
                client.post("/vms", json={"name": f"w{i}", "vcpus": 2})
            before, started = process_cpu_s(server), time.perf_counter()
            for i in range(requests):
                client.post("/vms", json={"name": f"vm{i}", "vcpus": 2, "memory_mib": 2048})
            wall, after = time.perf_counter() - started, process_cpu_s(server)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "stack": stack,
        "route": route,
        "requests_per_s": round(requests / wall, 1),
        "server_cpu_ms_a_request": round((after - before) * 1000 / requests, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--route", choices=ROUTES, default="sync", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.route, args.port)
        return
    results = [measure(stack, route, args.requests) for _ in range(args.rounds) for stack, route in VARIANTS]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
