"""The VMM's TCP server: one request per connection, a bounded pool of
workers, a deadline for each message, and an optional allow-list of peers.

RAPID's server handed each connection to an unbounded thread pool and set no
timeout, so silent clients pinned threads forever (section 8.1); a worker
per connection with a timeout per read is not enough either: with
vmmMaxConnection 10, 20 idle sockets held every worker until their reads
timed out, and a peer sending one byte now and then held one for as long as
it went on. Here:

- A connection waits in one selector thread until its peer sends something:
  it gets the server's stream header at once (RAPID's Java peers wait for it
  before they write), and no worker. Only a connection with data to read
  takes a worker (or a place in a short queue; beyond that it is closed at
  once), so requests never wait behind idle peers. At most `max_waiting`
  connections wait; a new one beyond that closes the longest-waiting one.
- Each message the peer owes has one deadline, from the accept (then from
  each reply the server sends) until the message is read in full, whatever
  comes in between: a waiting connection is closed when it passes, a
  worker's read fails then (`wire.Exchange`).
- A peer is refused at accept unless it is allowed: any, with neither an
  allow-list of networks nor an `admit` predicate (as in RAPID); else one in
  a listed network or one `admit` accepts (the VMM's known peers).

A request that breaks the handler is logged (logger `pinfold.rapid.server`)
and closed without a reply, as RAPID did; the server goes on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pinfold.rapid.codec import STREAM_HEADER, CodecError
from pinfold.rapid.wire import Exchange

__all__ = ["RapidServer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Waiting:
    peer: str
    #: when the peer's first message must be read in full (time.monotonic())
    deadline: float


class RapidServer:
    def __init__(
        self,
        handler: Callable[[Exchange, str], None],
        host: str,
        port: int,
        workers: int,
        timeout_s: float,
        allow: Sequence[str] = (),
        *,
        deadline_s: float | None = None,
        admit: Callable[[str], bool] | None = None,
        max_waiting: int = 1024,
    ) -> None:
        """`timeout_s`: of each read; `deadline_s` (default `timeout_s`): of
        each whole message; `admit(peer)`: a peer allowed besides `allow`'s
        networks."""
        self._handler = handler
        self._timeout_s = timeout_s
        self._deadline_s = deadline_s if deadline_s is not None else timeout_s
        self._allow = [ipaddress.ip_network(network, strict=False) for network in allow]
        self._admit = admit
        self._max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rapid-worker")
        self._slots = threading.BoundedSemaphore(workers * 2)  # running + a short queue
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._waiting: dict[socket.socket, _Waiting] = {}  # in order of arrival
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rapid-accept", daemon=True)
        self.rejected = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for sock in list(self._waiting):
            self._drop(sock)
        self._selector.close()
        self._listener.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the selector thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(self._select_timeout()):
                if key.data is None:
                    self._accept()
                else:
                    self._ready(key.fileobj)  # type: ignore[arg-type]
            self._expire()

    def _select_timeout(self) -> float:
        """Until the next deadline of a waiting connection, at most 0.5 s (to see `stop`)."""
        first = next(iter(self._waiting.values()), None)  # the oldest has the nearest deadline
        return 0.5 if first is None else max(0.0, min(0.5, first.deadline - time.monotonic()))

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, say: the next select tries again
                log.warning("RAPID: cannot accept a connection", exc_info=True)
                return
            peer = str(address[0])
            if not self._allowed(peer):
                self._refuse(sock, peer, "not allowed")
                continue
            try:
                sock.setblocking(False)
                sock.send(STREAM_HEADER)  # 4 bytes into an empty buffer
            except OSError:
                sock.close()
                continue
            if len(self._waiting) >= self._max_waiting:
                oldest = next(iter(self._waiting))
                log.info("RAPID: too many idle connections: %s's closed", self._waiting[oldest].peer)
                self._drop(oldest)
            self._waiting[sock] = _Waiting(peer, time.monotonic() + self._deadline_s)
            self._selector.register(sock, selectors.EVENT_READ, peer)

    def _ready(self, sock: socket.socket) -> None:
        """The peer sent something (or closed): a worker reads and answers it."""
        waiting = self._waiting.pop(sock)
        self._selector.unregister(sock)
        if not self._slots.acquire(blocking=False):
            self._refuse(sock, waiting.peer, "no worker free")
            return
        sock.setblocking(True)
        self._pool.submit(self._serve, sock, waiting)

    def _expire(self) -> None:
        """Close the waiting connections whose peers sent nothing by their deadline."""
        now = time.monotonic()
        while self._waiting:
            sock, waiting = next(iter(self._waiting.items()))
            if waiting.deadline > now:
                return
            log.debug("RAPID: %s sent nothing in %.1f s: closed", waiting.peer, self._deadline_s)
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._waiting.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()

    def _refuse(self, sock: socket.socket, peer: str, why: str) -> None:
        self.rejected += 1
        log.info("RAPID: connection from %s closed: %s", peer, why)
        sock.close()

    def _allowed(self, peer: str) -> bool:
        if not self._allow and self._admit is None:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if any(address in network for network in self._allow):
            return True
        return self._admit is not None and self._admit(peer)

    # -- workers ---------------------------------------------------------------------------

    def _serve(self, sock: socket.socket, waiting: _Waiting) -> None:
        peer = waiting.peer
        try:
            exchange = Exchange(
                sock, self._timeout_s, deadline_s=self._deadline_s, deadline=waiting.deadline, header=False
            )
            self._handler(exchange, peer)
        except (OSError, CodecError, ValueError) as error:  # RAPID's answer: close without a reply
            log.debug("RAPID: broken request from %s: %s", peer, error)
        except Exception:  # a bug: the pool would keep it in a future nobody reads
            log.exception("RAPID: request from %s failed", peer)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            self._slots.release()
