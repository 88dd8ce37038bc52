"""The VMM's TCP server on its own: a handler that breaks is logged, its
peer hears nothing (as from RAPID), and the server goes on."""

from __future__ import annotations

import logging
import select
import socket
import time

import pytest

from pinfold.rapid.codec import CodecError, Writer
from pinfold.rapid.server import RapidServer
from pinfold.rapid.wire import Exchange
from tests.rapid.peers import no_reply, request


def handler(exchange: Exchange, peer: str) -> None:
    """Opcode 1 is a bug; 2 has three longs after it; any opcode is echoed."""
    opcode = exchange.reader.read_byte()
    if opcode == 1:
        raise RuntimeError("a bug in a handler")
    if opcode == 2:
        for _ in range(3):
            exchange.reader.read_long()
    exchange.writer.write_byte(opcode)
    exchange.send()


def test_a_handler_that_breaks_is_logged_and_the_server_goes_on(caplog):
    server = RapidServer(handler, "127.0.0.1", 0, 2, 5.0)
    server.start()
    try:
        with caplog.at_level(logging.ERROR, logger="pinfold.rapid.server"):
            assert no_reply(server.port, 1) == b"\xac\xed\x00\x05"  # our header, then the close
            for _ in range(3):  # more than the workers: none was lost to the failures
                no_reply(server.port, 1)

        def ping(out: Writer) -> None:
            out.write_byte(5)

        assert request(server.port, ping, lambda reply: reply.read_byte()) == 5
    finally:
        server.stop()
    failures = [r for r in caplog.records if r.name == "pinfold.rapid.server"]
    assert len(failures) == 4
    assert all(r.exc_info is not None and "127.0.0.1" in r.getMessage() for r in failures)
    assert "a bug in a handler" in caplog.text


def ping(out: Writer) -> None:
    out.write_byte(5)


def echoed(port: int, source: str = "127.0.0.1") -> int:
    """One request from `source` (loopback has all of 127/8 to be other peers)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    exchange = Exchange(sock, 30)
    try:
        ping(exchange.writer)
        exchange.send()
        return exchange.reader.read_byte()
    finally:
        exchange.close()


def test_a_request_does_not_wait_behind_idle_connections():
    """vmmMaxConnection 10 and 20 idle sockets blocked every request for
    59.7 s (each held a worker, or a place in its queue, until its read
    timed out). An idle connection holds no worker now: a request is
    answered at once, however long the idle ones may stay."""
    workers, deadline_s = 2, 20.0
    server = RapidServer(handler, "127.0.0.1", 0, workers, deadline_s)
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2 * workers)]
    try:
        began = time.monotonic()
        for _ in range(workers + 1):
            assert request(server.port, ping, lambda reply: reply.read_byte()) == 5
        assert time.monotonic() - began < deadline_s / 4
        for sock in idle:  # each got the server's header, and is still open: nothing was taken from it
            assert sock.recv(4) == b"\xac\xed\x00\x05"
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_peer_that_trickles_its_message_is_cut_off_at_the_message_deadline():
    """One byte every 20 s kept a connection (and its worker) as long as the
    peer went on: the timeout was per read. The deadline is for the whole
    message: here 1 s, with a byte every 0.2 s, well within any per-read
    timeout, for longer than the deadline four times over."""
    deadline_s = 1.0
    server = RapidServer(handler, "127.0.0.1", 0, 2, deadline_s)
    server.start()
    message = b"\xac\xed\x00\x05\x77\x19\x02" + bytes(24)  # opcode 2 and its 24 bytes, never finished
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        assert sock.recv(4) == b"\xac\xed\x00\x05"
        began, sent, closed = time.monotonic(), 0, False
        while not closed and time.monotonic() - began < 4 * deadline_s:
            try:
                sock.sendall(message[sent : sent + 1])
            except OSError:  # reset: the server closed it
                closed = True
                break
            sent += 1
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                try:
                    closed = sock.recv(1) == b""
                except OSError:
                    closed = True
        assert closed, f"still open after {time.monotonic() - began:.1f} s, {sent} bytes"
        assert sent < len(message)
        assert time.monotonic() - began >= deadline_s * 0.9
    finally:
        sock.close()
        server.stop()


def test_the_allow_list_refuses_a_peer_not_on_it():
    """127.0.0.2 is another peer than 127.0.0.1, on loopback."""
    server = RapidServer(handler, "127.0.0.1", 0, 2, 5.0, allow=("127.0.0.1/32",))
    server.start()
    try:
        assert echoed(server.port, "127.0.0.1") == 5
        with pytest.raises((CodecError, OSError)):  # closed at once: EOF, or a reset while sending
            echoed(server.port, "127.0.0.2")
    finally:
        server.stop()
