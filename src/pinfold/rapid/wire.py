"""RAPID exchanges on sockets: one request per connection, Java object
streams both ways, a timeout on every socket.

Both sides send their stream header first, without waiting for the other's
(PROTOCOL.md 3.1: a peer that waits would deadlock with one that does too).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import TypeVar

from pinfold.rapid.codec import CodecError, Reader, Writer

__all__ = ["Exchange", "PeerError", "call"]

T = TypeVar("T")


class PeerError(Exception):
    """A peer could not be reached, did not answer in time, or answered
    something that is not RAPID."""


class Exchange:
    """One connection: `writer` to fill then `send()`, `reader` for the reply."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self.sock = sock
        sock.settimeout(timeout_s)
        self.writer = Writer()
        self.sock.sendall(self.writer.data_to_send())  # our header, at once
        self.reader = Reader(self._recv)

    def _recv(self, count: int) -> bytes:
        return self.sock.recv(count)

    def send(self) -> None:
        self.writer.flush()
        self.sock.sendall(self.writer.data_to_send())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


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
