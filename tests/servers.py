"""Real uvicorn servers on loopback for the tests, in threads."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from pinfold.serving import ServerLimits, server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """An app served on 127.0.0.1:`port` until `stop()`, by the server the
    daemons run."""

    def __init__(
        self,
        app: FastAPI,
        port: int | None = None,
        limits: ServerLimits | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._server = server(app, "127.0.0.1", self.port, limits or ServerLimits(), tls, log_level="error")
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    served = Served(app)
    try:
        yield served.url
    finally:
        served.stop()


def wait_for_health(url: str, process: subprocess.Popen[Any], what: str, timeout_s: float = 30) -> None:
    """Wait for a daemon started as `process` to answer `url`/healthz."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, f"{what} exited"
        assert time.monotonic() < deadline, f"{what} did not come up"
        time.sleep(0.1)
