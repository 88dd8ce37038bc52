"""The VMM's TCP server on its own: a handler that breaks is logged, its
peer hears nothing (as from RAPID), and the server goes on."""

from __future__ import annotations

import logging

from pinfold.rapid.codec import Writer
from pinfold.rapid.server import RapidServer
from pinfold.rapid.wire import Exchange
from tests.rapid.peers import no_reply, request


def handler(exchange: Exchange, peer: str) -> None:
    """Opcode 1 is a bug; any other is echoed."""
    opcode = exchange.reader.read_byte()
    if opcode == 1:
        raise RuntimeError("a bug in a handler")
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
