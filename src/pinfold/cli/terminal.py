"""`pinfold vm console NAME`: the VM's serial console in this terminal, through
the controller's console WebSocket (docs/controller.md, "Consoles").

The terminal is put in raw mode (every key goes to the guest, Ctrl-C too) and
given back as it was on leaving. Ctrl-] (0x1d, as in `virsh console` and
telnet) leaves; so does the end of standard input, or the console's end (the
guest stopped). `--read-only` watches without taking the writer's seat.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl
import termios
import threading
import tty
from collections.abc import Iterator
from typing import BinaryIO

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

__all__ = ["ESCAPE", "ESCAPE_NAME", "raw_terminal", "relay", "ssl_for", "websocket_url"]

#: the byte that leaves the console: Ctrl-]
ESCAPE = b"\x1d"
ESCAPE_NAME = "Ctrl-]"
_CHUNK = 4096


def websocket_url(controller_url: str, path: str) -> str:
    """ws:// or wss:// for the controller's http:// or https:// URL."""
    scheme, rest = controller_url.rstrip("/").split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}"


def ssl_for(url: str, context: ssl.SSLContext | bool) -> ssl.SSLContext | None:
    """The TLS context the websockets client takes for a wss:// URL (none for ws://)."""
    if not url.startswith("wss://"):
        return None
    return context if isinstance(context, ssl.SSLContext) else ssl.create_default_context()


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """`fd` in raw mode for the block, when it is a terminal; restored however the block ends."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def relay(ws: ClientConnection, stdin_fd: int, out: BinaryIO) -> str:
    """Keys from `stdin_fd` to the console and its output to `out`, until
    ESCAPE, the end of input, or the console's end; returns why it ended."""
    wake_read, wake_write = os.pipe()
    ended: list[str] = []

    def show_output() -> None:
        try:
            for message in ws:
                out.write(message if isinstance(message, bytes) else message.encode())
                out.flush()
        except ConnectionClosed:
            pass
        ended.append(ws.close_reason or "the console closed")
        os.write(wake_write, b"x")

    reader = threading.Thread(target=show_output, name="console-output", daemon=True)
    reader.start()
    why = ""
    try:
        while not why:
            ready, _, _ = select.select([stdin_fd, wake_read], [], [])
            if wake_read in ready:
                break
            data = os.read(stdin_fd, _CHUNK)
            if not data:
                why = "end of input"
            elif ESCAPE in data:
                before = data.split(ESCAPE, 1)[0]
                if before:
                    ws.send(before)
                why = f"left with {ESCAPE_NAME}"
            else:
                ws.send(data)
    except ConnectionClosed:
        pass
    finally:
        ws.close()
        reader.join(timeout=5)
        os.close(wake_read)
        os.close(wake_write)
    return why or (ended[0] if ended else "the console closed")
