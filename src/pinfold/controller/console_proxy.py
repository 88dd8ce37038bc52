"""The controller's console routes: the agent's console WebSocket and log,
proxied behind the admin token (docs/controller.md, "Consoles").

`WS /api/v1/vms/{name}/console?mode=write|read` connects to the VM's agent with
the agent token and relays binary frames both ways; the agent's refusal (404
unknown vm, 409 not running or writer's seat taken) comes back before the
upgrade with its status and JSON, an agent that does not answer is a 502, and
the agent's close (code and reason) is passed on to the client. The admin
token comes in `Authorization: Bearer`, or from a browser (the dashboard), which
cannot set headers on a WebSocket, as the offered subprotocol
`pinfold.token.<token>` next to `pinfold.console` (the one answered).
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

import websockets
from fastapi import Depends, FastAPI, Query, WebSocket
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pinfold.controller.agents import AgentClient, AgentRefusedError, AgentUnreachableError
from pinfold.controller.service import Controller, ControllerError
from pinfold.model.errors import ErrorCode
from pinfold.web import (
    CONSOLE_MODES,
    CONSOLE_PROTOCOL,
    LOG_DEFAULT_BYTES,
    LOG_MAX_BYTES,
    ApiError,
    refuse_websocket,
    token_check,
    until_first_ends,
    websocket_input,
    websocket_token_ok,
)

__all__ = ["add_console_routes"]

CONNECT_TIMEOUT_S = 10.0


def _agents_code(status: int, code: str, detail: str) -> tuple[ErrorCode, str]:
    """The agent's refusal as the controller's: its own code, but a 401 (the
    controller's agent token is wrong) or an answer without a known code is
    the agent's failure, not the client's."""
    try:
        known = ErrorCode(code)
    except ValueError:
        return ErrorCode.AGENT_FAILED, f"the agent answered {status}: {detail}"
    if known is ErrorCode.UNAUTHORIZED:
        return ErrorCode.AGENT_FAILED, f"the agent refused the controller's token: {detail}"
    return known, detail


def _refused_upgrade(refused: InvalidStatus) -> tuple[ErrorCode, str]:
    """The agent's JSON refusal of the upgrade (see `_agents_code`)."""
    try:
        document: Any = json.loads(refused.response.body or b"{}")
        return _agents_code(
            refused.response.status_code, str(document["error"]), str(document.get("detail", ""))
        )
    except (ValueError, KeyError, TypeError):
        return ErrorCode.AGENT_FAILED, f"the agent answered {refused.response.status_code}"


async def _to_agent(websocket: WebSocket, upstream: ClientConnection) -> None:
    try:
        async for data in websocket_input(websocket):
            await upstream.send(data)
    except ConnectionClosed:  # the agent ended it while a key was on its way: say why, as below
        await _pass_close_on(websocket, upstream)


async def _from_agent(websocket: WebSocket, upstream: ClientConnection) -> None:
    try:
        async for data in upstream:
            await websocket.send_bytes(data if isinstance(data, bytes) else data.encode())
    except ConnectionClosed:
        pass
    await _pass_close_on(websocket, upstream)


async def _pass_close_on(websocket: WebSocket, upstream: ClientConnection) -> None:
    """Close the client's WebSocket with the agent's close code and reason
    (whichever direction saw the agent's close first)."""
    code = upstream.close_code
    reason = upstream.close_reason or ""
    if code is None or code in (1005, 1006):  # no status sent, or no close frame at all
        code, reason = (1000, reason) if code == 1005 else (1011, "the agent's console went away")
    with contextlib.suppress(RuntimeError):  # closed already (by the other direction)
        await websocket.close(code=code, reason=reason[:120])


def _offered(websocket: WebSocket) -> bool:
    """Whether the client offered CONSOLE_PROTOCOL (a browser, which must be
    answered with one of the subprotocols it offered)."""
    offered = websocket.headers.get("sec-websocket-protocol", "")
    return CONSOLE_PROTOCOL in [p.strip() for p in offered.split(",")]


def add_console_routes(app: FastAPI, controller: Controller, admin_token: str) -> None:
    """The console routes on `app`, both behind the admin token."""
    admin = Depends(token_check(admin_token, what="admin token"))

    def agent_of(name: str) -> AgentClient:
        try:
            return controller.agent_of(name)
        except ControllerError as error:
            raise ApiError(error.code, error.detail) from error

    @app.websocket("/api/v1/vms/{name}/console")
    async def console(websocket: WebSocket, name: str, mode: str = "write") -> None:
        if not websocket_token_ok(websocket, admin_token, protocol=True):
            await refuse_websocket(websocket, ErrorCode.UNAUTHORIZED, "a valid admin token is required")
            return
        if mode not in CONSOLE_MODES:
            await refuse_websocket(websocket, ErrorCode.INVALID_REQUEST, "mode must be write or read")
            return
        try:
            client = await run_in_threadpool(agent_of, name)
        except ApiError as error:
            await refuse_websocket(websocket, error.code, error.detail)
            return
        try:
            upstream = await websockets.connect(
                client.console_url(name, mode), open_timeout=CONNECT_TIMEOUT_S, **client.websocket_options()
            )
        except InvalidStatus as refused:
            code, detail = _refused_upgrade(refused)
            await refuse_websocket(websocket, code, detail)
            return
        except (OSError, TimeoutError, websockets.InvalidHandshake) as error:
            await refuse_websocket(websocket, ErrorCode.AGENT_FAILED, f"cannot reach the agent: {error}")
            return
        try:
            await websocket.accept(subprotocol=CONSOLE_PROTOCOL if _offered(websocket) else None)
            await until_first_ends(_to_agent(websocket, upstream), _from_agent(websocket, upstream))
        finally:
            await upstream.close()

    @app.get("/api/v1/vms/{name}/console/log", dependencies=[admin])
    def console_log(
        name: str, limit: Annotated[int, Query(alias="bytes", ge=1, le=LOG_MAX_BYTES)] = LOG_DEFAULT_BYTES
    ) -> Response:
        client = agent_of(name)
        try:
            data = client.console_log(name, limit)
        except AgentRefusedError as error:
            code, detail = _agents_code(error.status, error.code, error.detail)
            raise ApiError(code, detail) from error
        except AgentUnreachableError as error:
            raise ApiError(ErrorCode.AGENT_FAILED, error.detail) from error
        return Response(data, media_type="application/octet-stream")
