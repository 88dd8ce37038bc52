"""The agent's console routes: `WS /api/v1/vms/{name}/console` and
`GET /api/v1/vms/{name}/console/log` (docs/agent.md, "Consoles").

The WebSocket carries the console's bytes as binary frames both ways (a text
frame from the client is taken as its UTF-8 bytes). `?mode=write` (the
default) asks for the one writer's seat, `?mode=read` watches; input from a
reader is dropped. Refusals come before the upgrade, as JSON with their status:
401 without the agent token, 404 for no such VM, 409 for a VM that is not
running or a writer's seat already taken. A console that ends afterwards (the
guest stopped, was deleted) is closed with code 1000 and the reason; a client
too slow to take the output is closed with 1013.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Query, WebSocket
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from pinfold.agent.consoles import ConsoleHub, Seat
from pinfold.agent.core import AgentError
from pinfold.agent.service import Agent
from pinfold.model.errors import ErrorCode
from pinfold.web import (
    CONSOLE_MODES,
    LOG_DEFAULT_BYTES,
    LOG_MAX_BYTES,
    ApiError,
    refuse_websocket,
    token_check,
    until_first_ends,
    websocket_input,
    websocket_token_ok,
)

__all__ = ["add_console_routes", "relay_queue"]

#: output chunks a client may have waiting before it is closed as too slow
MAX_QUEUED = 4096
CLOSE_NORMAL = 1000
CLOSE_FAILED = 1011
CLOSE_TOO_SLOW = 1013


class _Ended(str):
    """Queued instead of bytes: the console ended, for this reason."""

    code = CLOSE_NORMAL


class _TooSlow(_Ended):
    code = CLOSE_TOO_SLOW


def relay_queue() -> tuple[asyncio.Queue[bytes | _Ended], Callable[[bytes], None], Callable[[str], None]]:
    """A queue and the two thread-safe callbacks (`output`, `closed`) that fill
    it from the driver's thread, bounded at MAX_QUEUED chunks."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | _Ended] = asyncio.Queue()

    def offer(item: bytes | _Ended) -> None:
        if isinstance(item, bytes) and queue.qsize() >= MAX_QUEUED:
            item = _TooSlow("the client does not keep up with the console's output")
        queue.put_nowait(item)

    def output(data: bytes) -> None:
        loop.call_soon_threadsafe(offer, data)

    def closed(reason: str) -> None:
        loop.call_soon_threadsafe(offer, _Ended(reason))

    return queue, output, closed


async def _send_output(websocket: WebSocket, queue: asyncio.Queue[bytes | _Ended]) -> None:
    while True:
        item = await queue.get()
        if isinstance(item, _Ended):
            await websocket.close(code=item.code, reason=item[:120])
            return
        await websocket.send_bytes(item)


async def _take_input(websocket: WebSocket, seat: Seat) -> None:
    async for data in websocket_input(websocket):
        try:
            await run_in_threadpool(seat.write, data)
        except AgentError as error:
            await websocket.close(code=CLOSE_FAILED, reason=error.detail[:120])
            return


def add_console_routes(app: FastAPI, agent: Agent, token: str) -> ConsoleHub:
    """The console routes on `app`, both behind the agent token (a console
    shows and takes what a root shell does)."""
    hub = ConsoleHub(agent)
    auth = Depends(token_check(token, what="agent token"))

    @app.websocket("/api/v1/vms/{name}/console")
    async def console(websocket: WebSocket, name: str, mode: str = "write") -> None:
        if not websocket_token_ok(websocket, token):
            await refuse_websocket(websocket, ErrorCode.UNAUTHORIZED, "a valid agent token is required")
            return
        if mode not in CONSOLE_MODES:
            await refuse_websocket(websocket, ErrorCode.INVALID_REQUEST, "mode must be write or read")
            return
        queue, output, closed = relay_queue()
        try:
            seat = await run_in_threadpool(hub.attach, name, mode == "write", output, closed)
        except AgentError as error:
            await refuse_websocket(websocket, error.code, error.detail)
            return
        try:
            await websocket.accept()
            await until_first_ends(_send_output(websocket, queue), _take_input(websocket, seat))
        finally:
            await run_in_threadpool(seat.leave)

    @app.get("/api/v1/vms/{name}/console/log", dependencies=[auth])
    def console_log(
        name: str, limit: Annotated[int, Query(alias="bytes", ge=1, le=LOG_MAX_BYTES)] = LOG_DEFAULT_BYTES
    ) -> Response:
        """The last `bytes` bytes of the console log, as the guest wrote them."""
        try:
            data = agent.console_log(name, limit)
        except AgentError as error:
            raise ApiError(error.code, error.detail) from error
        return Response(data, media_type="application/octet-stream")

    return hub
