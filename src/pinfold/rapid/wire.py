"""RAPID exchanges on sockets: one request per connection, Java object
streams both ways, a timeout on every socket.

Both sides send their stream header first, without waiting for the other's
(PROTOCOL.md 3.1: a peer that waits would deadlock with one that does too).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from pinfold.rapid.codec import CodecError, Reader, Writer

__all__ = ["Exchange", "PeerError", "call"]

T = TypeVar("T")


class PeerError(Exception):
    """A peer could not be reached, did not answer in time, or answered
    something that is not RAPID."""


class Exchange:
    """One connection: `writer` to fill then `send()`, `reader` for the reply.

    `timeout_s` bounds each read and write. With `deadline_s`, each message
    the peer owes must also be read in full within that long: from
    `deadline` (a time.monotonic() value; default: now) for the first, from
    each `send()` for the next; a read past it raises TimeoutError however
    fast the bytes before it came, so a peer that trickles its message
    cannot hold the connection. `header`: send our stream header now (False:
    it was sent already)."""

    def __init__(
        self, sock: socket.socket, timeout_s: float, *, deadline_s: float | None = None,
        deadline: float | None = None, header: bool = True,
    ) -> None:  # fmt: skip
        self.sock = sock
        self._timeout_s = timeout_s
        self._deadline_s = deadline_s
        self._deadline = deadline if deadline is not None else _after(deadline_s)
        sock.settimeout(timeout_s)
        self.writer = Writer(header=header)
        self.sock.sendall(self.writer.data_to_send())  # our header, at once
        self.reader = Reader(self._recv)

    def _recv(self, count: int) -> bytes:
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the peer's message was not in by its deadline")
            self.sock.settimeout(min(left, self._timeout_s))
        return self.sock.recv(count)

    def send(self) -> None:
        self.writer.flush()
        self.sock.settimeout(self._timeout_s)
        self.sock.sendall(self.writer.data_to_send())
        self._deadline = _after(self._deadline_s)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _after(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def call(
    address: tuple[str, int],
    timeout_s: float,
    request: Callable[[Writer], None],
    reply: Callable[[Reader], T] | None = None,
) -> T | None:
    """Connect, send one request, read its reply (if the message has one).
    Raises PeerError for anything that goes wrong on the way."""
    try:
        sock = socket.create_connection(address, timeout=timeout_s)
    except OSError as error:
        raise PeerError(f"cannot reach {address[0]}:{address[1]}: {error}") from error
    exchange = Exchange(sock, timeout_s)
    try:
        request(exchange.writer)
        exchange.send()
        return reply(exchange.reader) if reply is not None else None
    except (OSError, CodecError) as error:
        raise PeerError(f"{address[0]}:{address[1]}: {error}") from error
    finally:
        exchange.close()
