"""The VMM's TCP server: one request per connection, a bounded pool of
workers, a timeout on every socket, and an optional allow-list of peers.

RAPID's server handed each connection to an unbounded thread pool and set no
timeout, so silent clients pinned threads forever (section 8.1). Here a
connection beyond what the workers and a short queue can take is closed at
once, and a peer that stops talking is dropped after the socket timeout.
A request that breaks the handler is logged (logger `pinfold.rapid.server`)
and closed without a reply, as RAPID did; the server goes on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from pinfold.rapid.codec import CodecError
from pinfold.rapid.wire import Exchange

__all__ = ["RapidServer"]

log = logging.getLogger(__name__)


class RapidServer:
    def __init__(
        self,
        handler: Callable[[Exchange, str], None],
        host: str,
        port: int,
        workers: int,
        timeout_s: float,
        allow: Sequence[str] = (),
    ) -> None:
        self._handler = handler
        self._timeout_s = timeout_s
        self._allow = [ipaddress.ip_network(network, strict=False) for network in allow]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rapid-worker")
        self._slots = threading.BoundedSemaphore(workers * 2)  # running + a short queue
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self._listener.settimeout(0.5)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="rapid-accept", daemon=True)
        self.rejected = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._listener.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peer = str(address[0])
            if self._allowed(peer) and self._slots.acquire(blocking=False):
                self._pool.submit(self._serve, sock, peer)
                continue
            self.rejected += 1
            log.info("RAPID: connection from %s closed: not allowed, or no worker free", peer)
            sock.close()

    def _allowed(self, peer: str) -> bool:
        if not self._allow:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._allow)

    def _serve(self, sock: socket.socket, peer: str) -> None:
        try:
            exchange = Exchange(sock, self._timeout_s)
            self._handler(exchange, peer)
        except (OSError, CodecError, ValueError) as error:  # RAPID's answer: close without a reply
            log.debug("RAPID: broken request from %s: %s", peer, error)
        except Exception:  # a bug: the pool would keep it in a future nobody reads
            log.exception("RAPID: request from %s failed", peer)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            self._slots.release()
