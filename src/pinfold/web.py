"""What the agent's and the controller's HTTP APIs share: bearer tokens
(header, or `?token=` on SlackVM's routes), networks an operator opens to
SlackVM's token-less clients, and errors as JSON `{"error", "code", "detail"}`
(`error` and `code` hold the same `pinfold.model.errors.ErrorCode`; `error` is
kept for the clients written before `code`)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pinfold.model.errors import ErrorCode, PinfoldError, error_body

__all__ = [
    "CONSOLE_MODES",
    "CONSOLE_PROTOCOL",
    "LOG_DEFAULT_BYTES",
    "LOG_MAX_BYTES",
    "TOKEN_PROTOCOL",
    "ApiError",
    "bearer",
    "install_error_handlers",
    "json_answer",
    "open_to",
    "refuse_websocket",
    "token_check",
    "until_first_ends",
    "websocket_input",
    "websocket_token_ok",
]


class ApiError(PinfoldError):
    """An error answered as JSON with its code's status; `extra` adds fields
    to the body (a refused placement's `hosts`). `code` must be an `ErrorCode`
    (or its value): an unknown one raises `ValueError` here, not a 400 later."""

    def __init__(
        self, code: ErrorCode | str, detail: str = "", extra: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(code, detail)
        self.extra = dict(extra or {})


def bearer(request: Request) -> str:
    """The request's bearer token, from its Authorization header only (a
    token in a URL would end up in logs); empty when there is none."""
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


#: a browser cannot set headers on a WebSocket: it offers its token as this subprotocol
#: prefix (`pinfold.token.<token>`, with the subprotocol CONSOLE_PROTOCOL), never in the URL
#: a request's token check, as a FastAPI dependency (a coroutine function)
Check = Callable[..., Coroutine[Any, Any, None]]

TOKEN_PROTOCOL = "pinfold.token."
CONSOLE_PROTOCOL = "pinfold.console"
#: a console's `?mode=`: the one writer's seat, or watching
CONSOLE_MODES = ("write", "read")
#: the console log's `?bytes=`: its default and its bound
LOG_DEFAULT_BYTES = 64 * 1024
LOG_MAX_BYTES = 4 * 1024 * 1024


async def websocket_input(websocket: WebSocket) -> AsyncIterator[bytes]:
    """What a WebSocket client sends, as bytes (a text frame as its UTF-8),
    until it disconnects."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None and message.get("text") is not None:
            data = message["text"].encode()
        if data:
            yield data


async def until_first_ends(*work: Coroutine[Any, Any, None]) -> None:
    """Run `work` together until one ends (a relay's two directions), then cancel the others."""
    tasks = [asyncio.create_task(each) for each in work]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def websocket_token_ok(websocket: WebSocket, *tokens: str, protocol: bool = False) -> bool:
    """Whether a WebSocket handshake carries one of `tokens` in `Authorization:
    Bearer` or, with `protocol` (the controller's, for its dashboard), as an
    offered subprotocol `pinfold.token.<token>` (compared in constant time; an
    empty token never matches)."""
    header = websocket.headers.get("authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not given and protocol:
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
        given = next((p.removeprefix(TOKEN_PROTOCOL) for p in offered if p.startswith(TOKEN_PROTOCOL)), "")
    return bool(given) and any(
        token and hmac.compare_digest(given.encode(), token.encode()) for token in tokens
    )


async def refuse_websocket(websocket: WebSocket, code: ErrorCode | str, detail: str) -> None:
    """Refuse a WebSocket before the upgrade with the JSON error and status
    every other route answers (the ASGI denial response, which uvicorn offers);
    a server without it gets a close with code 1008 and the detail instead."""
    known = ErrorCode(code)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse(error_body(known, detail), status_code=known.status)
        )
        return
    await websocket.close(code=1008, reason=f"{known.value}: {detail}"[:120])


def json_answer(content: Any, status_code: int = 200) -> JSONResponse:
    """The JSON answer FastAPI makes of `content`, byte for byte, encoded by
    `json.dumps` alone when `content` is made of JSON's own types (str enums
    included): FastAPI walks every item in Python first (`jsonable_encoder`),
    0.18 ms for a VM's view with a 128-CPU pinning against 0.015 ms, on each
    create at the agent and again at the controller (issue 16). Anything else
    (a dataclass, a path) still goes through FastAPI's encoder."""
    try:
        return JSONResponse(content, status_code)
    except TypeError:
        return JSONResponse(jsonable_encoder(content), status_code)


def token_check(*tokens: str, what: str = "token", query: bool = False) -> Check:
    """A FastAPI dependency accepting any of `tokens` (compared in constant time)
    from `Authorization: Bearer`. With `query`, `?token=` is taken too: only
    for SlackVM's routes, whose client sends no header (a token in a URL ends
    up in logs and browser history, so no other route takes one there).
    Coroutines: the check runs on the event loop, where a plain function
    would hop to a worker thread and back for each request."""

    def verify(given: str) -> None:
        # an empty token never matches, even if a caller handed one in by mistake
        if not given or not any(
            token and hmac.compare_digest(given.encode(), token.encode()) for token in tokens
        ):
            raise ApiError(ErrorCode.UNAUTHORIZED, f"a valid {what} is required")

    async def check_header(request: Request) -> None:
        verify(bearer(request))

    async def check_header_or_query(
        request: Request, token_query: Annotated[str | None, Query(alias="token")] = None
    ) -> None:
        verify(bearer(request) or token_query or "")

    return check_header_or_query if query else check_header


def open_to(networks: Sequence[str], otherwise: Check) -> Check:
    """A dependency letting clients from `networks` through without a token
    (SlackVM's client and global scheduler send none), others through
    `otherwise` (a `token_check(..., query=True)`)."""
    parsed = [ipaddress.ip_network(network, strict=False) for network in networks]

    async def check(
        request: Request, token_query: Annotated[str | None, Query(alias="token")] = None
    ) -> None:
        client = request.client.host if request.client is not None else ""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            address = None
        if address is not None and any(address in network for network in parsed):
            return
        await otherwise(request, token_query)

    return check


def install_error_handlers(app: FastAPI) -> None:
    """ApiError -> its code's status (`ErrorCode.status`); FastAPI's
    validation errors -> 422 "invalid request" naming each bad field; its own
    404 and 405 replies -> the same JSON shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({**error_body(exc.code, exc.detail), **exc.extra}, status_code=exc.code.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's own replies (no such route: 404, method not allowed: 405)
        in the shape of every other error, the status's phrase as the code
        (`ErrorCode.NOT_FOUND`, `METHOD_NOT_ALLOWED`; any other status, which
        no route raises today, keeps its phrase or its number)."""
        known = exc.status_code in HTTPStatus._value2member_map_
        code = HTTPStatus(exc.status_code).phrase.lower() if known else str(exc.status_code)
        detail = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(code, detail), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())
        # 422, not the code's 400: FastAPI's schema said no, before any check of pinfold's
        return JSONResponse(error_body(ErrorCode.INVALID_REQUEST, detail), status_code=422)


#: the tag of a body's usual form in a union of forms (the controller's create
#: body, one VM or many): left out of error messages, which read as before
SINGLE = "single"


def _where(loc: Sequence[Any]) -> str:
    """A validation error's location, `body.vcpus`, without the `SINGLE` tag."""
    return ".".join(str(part) for part in loc if part != SINGLE)
