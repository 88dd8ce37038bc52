"""How both daemons serve HTTP: uvicorn, bounded against clients that hold
the server without finishing their requests. One place, so that the agent and
the controller cannot drift apart.

uvicorn runs on uvloop with httptools' parser (C both): with asyncio and h11
(pure Python) a small request cost the server 1.15-1.36 ms of CPU, here
0.81-0.86 ms (`benchmarks/bench_serving.py`, BENCHMARKS.md); every create
crosses two servers (the controller's, then its agent's).

uvicorn bounds the idle time between two requests of a kept-alive connection
(`timeout_keep_alive`) but not the time a request takes to arrive: a client
that sends headers that never end, or a body a byte at a time, holds its
connection for as long as it likes (3,000 such requests were all still open
after 20 s). Here:

- each request must arrive whole (headers and body) within
  `request_timeout_s` of its first byte (of the connection, for the first
  request): a deadline for the whole request, not per read, so a trickle does
  not extend it. Past it the client gets `408 {"error", "code", "detail"}` and the
  connection is closed. No deadline runs while the app works on a request (one
  that begins to arrive meanwhile gets its deadline once the answer is done) or
  while a kept-alive connection waits for the next one (uvicorn's own
  keep-alive timeout bounds that);
- a connection beyond `max_connections` is answered `503` (without reading a
  body or calling the app) and closed; until its request arrives, the same
  deadline bounds it;
- a request's head (request line and headers) over `MAX_HEAD_BYTES` (16 KiB) is
  answered `400` and its connection closed as soon as that much has arrived;
- a body over `max_body_bytes` is refused with `413` as soon as its
  Content-Length says so, or as soon as that many bytes of a chunked body have
  arrived: the app is called with the body read whole, never with part of it.

Over TLS (a certificate and key given) the deadline starts once the handshake
is done; the handshake itself is bounded by the event loop's own 60 s, which uvicorn
does not let one set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, FilePath, model_validator
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pinfold.model.errors import ErrorCode, error_body
from pinfold.tls import warn_plain_listener

__all__ = ["BodyLimit", "ExtraHeaders", "HttpSettings", "ServerLimits", "run", "server", "warm_up"]

logger = logging.getLogger(__name__)

#: how long a timed-out TLS connection's orderly close may take before it is dropped
TLS_CLOSE_GRACE_S = 1.0
#: uvicorn's exit status when its server did not start (a port in use, say)
STARTUP_FAILURE = 3


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold of a daemon's HTTP server."""

    #: seconds for a request to arrive whole, from its first byte
    request_timeout_s: float = 10.0
    #: connections held at once; more are answered 503 and closed
    max_connections: int = 1000
    #: the largest request body accepted; larger ones are answered 413
    max_body_bytes: int = 1 << 20


class HttpSettings(BaseModel):
    """The settings of a daemon's HTTP server, which both daemons' settings include."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: seconds for a request (headers and body) to arrive whole, from its first byte
    request_timeout_s: float = Field(default=ServerLimits.request_timeout_s, gt=0)
    #: connections held at once; one more is answered 503 and closed
    max_connections: int = Field(default=ServerLimits.max_connections, ge=1)
    #: the largest request body, in bytes; a larger one is answered 413
    max_body_bytes: int = Field(default=ServerLimits.max_body_bytes, ge=1024)

    #: serve HTTPS with this certificate (PEM, the chain after it) and its key
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    #: verify peers (the controller, the agents) against this CA file, or a peer's own
    #: self-signed certificate (pinned); default: the system's CAs
    tls_ca: FilePath | None = None

    @model_validator(mode="after")
    def _certificate_with_its_key(self) -> HttpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: set both (HTTPS) or neither (plain HTTP)")
        return self

    @property
    def limits(self) -> ServerLimits:
        return ServerLimits(self.request_timeout_s, self.max_connections, self.max_body_bytes)

    @property
    def tls(self) -> tuple[Path, Path] | None:
        """(certificate, key) to serve HTTPS with, or None for plain HTTP."""
        return (self.tls_cert, self.tls_key) if self.tls_cert and self.tls_key else None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def run(app: ASGIApp, settings: HttpSettings, host: str, port: int, who: str) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn stops gracefully on both); exit
    with uvicorn's status 3 when the server could not start, as `uvicorn.run`
    does. Plain HTTP off loopback is warned about. The app answers one
    request in process first (`warm_up`)."""
    warn_plain_listener(who, host, tls=settings.tls is not None)
    served = server(app, host, port, settings.limits, settings.tls)
    warm_up(app)
    with contextlib.suppress(KeyboardInterrupt):
        served.run()
    if not served.started:
        sys.exit(STARTUP_FAILURE)


def warm_up(app: ASGIApp, path: str = "/healthz") -> None:
    """Send `app` one GET of `path` in process, before the port opens: an
    app's first request builds Starlette's middleware stack and imports parts
    of anyio, 11-16 ms that the first create sent to each agent waited for, a
    hundred times what a request costs (BENCHMARKS.md, issue 16, fifteenth
    round). `path` must be a read without side effects. Only a speed-up: a
    failure is logged, and the daemon serves all the same."""

    async def get() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://warm-up") as client:
            await client.get(path)

    try:
        asyncio.run(get())
    except Exception:
        logger.exception("the warm-up request failed")


def server(
    app: ASGIApp,
    host: str,
    port: int,
    limits: ServerLimits,
    tls: tuple[Path, Path] | None = None,
    log_level: str = "warning",
) -> uvicorn.Server:
    """uvicorn serving `app` on `host`:`port` within `limits`, over HTTPS
    with `tls` (certificate, key) (`run()` it)."""
    protocol = type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
    cert, key = tls or (None, None)
    config = uvicorn.Config(
        BodyLimit(app, limits.max_body_bytes), host=host, port=port, log_level=log_level, http=protocol,
        loop="uvloop", ssl_certfile=cert, ssl_keyfile=key,
    )  # fmt: skip
    return uvicorn.Server(config)


#: the most a request's head (its request line and headers) may take; one over it
#: is answered 400 and its connection closed. h11 held heads to this; httptools holds
#: them to nothing, and grows a partial one at each read (a cost quadratic in its size)
MAX_HEAD_BYTES = 16 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools' C parser) with a deadline for
    each request to arrive whole, a bound on the connections held and one on
    a request's head (see the module's docstring)."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    _deadline: asyncio.TimerHandle | None = None
    #: a request has begun to arrive and has not arrived whole yet
    _arriving = False
    #: ... and its head has not ended (`self.cycle` is still the request's before)
    _in_head = False
    #: what has arrived of that head, at least (a read may end a body, then begin it)
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            # answered when its request arrives (closing now, with the request
            # unread, could reset the connection before the client reads a 503)
            self.app = TooManyConnections(self.limits.max_connections)
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or timed out: nothing more is read
        if self._deadline is None and not self._arriving and not self._answer_pending():
            self._start_deadline()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.send_400_response(f"The request head is over {MAX_HEAD_BYTES} bytes.")

    def on_message_begin(self) -> None:
        self._arriving = self._in_head = True
        self._head_bytes = 0
        if self._deadline is None and not self._answer_pending():
            self._start_deadline()  # a request after one that ended in the same read
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._arriving = self._in_head = False
        self._stop_deadline()  # the request has arrived whole
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """An answer is done: a request that began to arrive meanwhile (its
        deadline held while the daemon worked) gets its deadline now."""
        super().on_response_complete()
        if self._arriving and self._deadline is None and not self.transport.is_closing():
            self._start_deadline()

    def _answer_pending(self) -> bool:
        """The daemon works on a request, or answers it: no deadline starts."""
        return self.cycle is not None and not self.cycle.response_complete

    def handle_websocket_upgrade(self) -> None:
        """The connection becomes a WebSocket (a console): no HTTP request is
        arriving any more, so its deadline ends here. Left running, it closed
        every console 10 s after its handshake, writing a 408 into the
        WebSocket stream on the way."""
        self._arriving = self._in_head = False
        self._stop_deadline()
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        """On the server's stop: an idle TLS connection is dropped at once.
        TLS's orderly close waits for the peer's close_notify, which an idle
        pooled client (the controller's, an agent's) does not send until it
        next reads, and uvicorn waits for every connection to end."""
        idle = self.cycle is None or self.cycle.response_complete
        super().shutdown()
        if idle and self.scheme == "https":
            self.transport.abort()

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.loop.call_later(self.limits.request_timeout_s, self._request_timed_out)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _request_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        answered = not self._in_head and self.cycle is not None and self.cycle.response_started
        if not answered:  # nothing of an answer to this request sent yet
            detail = f"the request did not arrive whole within {self.limits.request_timeout_s:g} s"
            self.transport.write(_raw_answer(ErrorCode.REQUEST_TIMEOUT, detail))
        if self.cycle is not None:
            self.cycle.disconnected = True  # an app still waiting on this request answers no one
        self.transport.close()
        if self.scheme == "https":  # a client that sent no whole request will not answer TLS's close either
            self.loop.call_later(TLS_CLOSE_GRACE_S, self.transport.abort)


def _raw_answer(code: ErrorCode, detail: str) -> bytes:
    """A whole JSON answer that closes the connection, written as bytes: the
    protocol has no request to answer while its headers have not ended."""
    body = json.dumps(error_body(code, detail)).encode()
    status = code.status
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class TooManyConnections:
    """The app of a connection over the bound: 503, and the connection closed."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"more than {self.max_connections} connections at once: try again later"
        await _refusal(ErrorCode.SERVICE_UNAVAILABLE, detail)(scope, receive, send)


def _refusal(code: ErrorCode, detail: str) -> JSONResponse:
    return JSONResponse(error_body(code, detail), code.status, headers={"connection": "close"})


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413
    before it is read whole; a body within it is read whole first, and the app
    gets it in one message (a client that leaves before sending all of its
    body never reaches the app)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body arrived: nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is over {self.max_bytes} bytes"
        await _refusal(ErrorCode.PAYLOAD_TOO_LARGE, detail)(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    """The request's Content-Length, 0 without one (httptools has refused a malformed one)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the whole body once, then the client's own
    messages (a disconnect, which streaming responses listen for)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


class ExtraHeaders:
    """ASGI middleware adding `headers` to every answer to a path `applies`
    to (the dashboard's security headers, say), errors included."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str], applies: Callable[[str], bool]) -> None:
        self.app = app
        self.headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
        ]
        self.applies = applies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
