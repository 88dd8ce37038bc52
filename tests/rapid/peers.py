"""Python peers that speak RAPID's protocol, for the VMM's tests: a DS, a
SLAM, an AS (both its client side and its port-4322 server), and a client
helper. Each server records what it received, in order."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pinfold.rapid.codec import Reader, Writer
from pinfold.rapid.protocol import ERROR, OK, Op
from pinfold.rapid.wire import Exchange, call


class Peer:
    """A one-request-per-connection server on loopback; `answer` handles one
    exchange given its opcode, appending what it read to `received`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.received: list[tuple[Any, ...]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        exchange = Exchange(sock, 10)
        try:
            self.answer(exchange, exchange.reader.read_byte())
        except Exception:  # a test peer: what it could not read shows up as missing messages
            pass
        finally:
            exchange.close()

    def answer(self, exchange: Exchange, opcode: int) -> None:
        raise NotImplementedError

    def record(self, message: tuple[Any, ...]) -> None:
        with self._changed:
            self.received.append(message)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[Any, ...]]], bool], timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; received {self.received}")
                self._changed.wait(left)

    def of(self, opcode: int) -> list[tuple[Any, ...]]:
        with self._changed:
            return [m for m in self.received if m[0] == opcode]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


#: AS -> DS (the DS's, not the VMM's: only the fake DS reads it)
AS_RM_REGISTER_DS = 37


@dataclass
class DSRow:
    """One row of the DS's `vm_info` table, as far as a VMM's messages set it."""

    vmm_id: int
    category: int
    user_id: int
    status: int
    ip: str = ""


class FakeDS(Peer):
    """RAPID's DS, as far as a VMM sees it, with its `vm_info` bookkeeping
    (`rows`, by vmid): VM_REGISTER_DS inserts a row, VM_NOTIFY_DS and
    HELPER_NOTIFY_DS change a known vmid's and ignore an unknown one, and
    AS_RM_REGISTER_DS looks the row up by user id alone, as the genuine
    DS's selectOne does: two rows for one user (a helper registered twice)
    and it answers nothing (TooManyResultsException). `holding`: opcodes
    whose exchanges stall (recorded, then neither answered nor closed) until
    `released` is set; `drop`: users whose next VM_REGISTER_DS is recorded
    and then closed without an answer (and no row: it failed before its insert)."""

    def __init__(self, slam_port: int, vmm_id: int = 7, accept: bool = True) -> None:
        self.slam_port = slam_port
        self.vmm_id = vmm_id
        self.accept = accept
        self._next_vmid = 9
        self.known: set[str] = set()
        self.rows: dict[int, DSRow] = {}
        self.holding: set[int] = set()
        self.released = threading.Event()
        self.drop: set[int] = set()
        super().__init__()

    def record(self, message: tuple[Any, ...]) -> None:
        super().record(message)
        if message[0] in self.holding:
            self.released.wait(30)

    def forget(self, vmm_id: int) -> None:
        """A DS whose database was reset: it registers the VMM anew, under `vmm_id`."""
        self.known.clear()
        self.rows.clear()
        self.vmm_id = vmm_id

    def answer(self, exchange: Exchange, opcode: int) -> None:
        read = exchange.reader
        if opcode == Op.VMM_REGISTER_DS:
            fields = (read.read_utf(), read.read_int(), read.read_int(), read.read_int(), read.read_long(),
                      read.read_int(), read.read_int(), read.read_utf())  # fmt: skip
            self.record((opcode, *fields))
            if self.accept and fields[0] not in self.known:  # a real DS refuses an address it knows
                self.known.add(fields[0])
                exchange.writer.write_byte(OK)
                exchange.writer.write_long(self.vmm_id)
                exchange.writer.write_utf("127.0.0.1")
                exchange.writer.write_int(self.slam_port)
            else:
                exchange.writer.write_byte(ERROR)
            exchange.send()
        elif opcode == Op.VMM_NOTIFY_DS:
            self.record((opcode, read.read_long(), read.read_int(), read.read_long(), read.read_int()))
        elif opcode == Op.VM_REGISTER_DS:
            registration = (
                read.read_long(),
                read.read_int(),
                read.read_int(),
                read.read_long(),
                read.read_int(),
            )
            vmid = self._next_vmid
            self._next_vmid += 1
            self.record((opcode, *registration, vmid))  # before answering: the VMM goes on at once
            if registration[3] in self.drop:
                self.drop.discard(registration[3])
                return
            vmm_id, category, _, user_id, status = registration
            self.rows[vmid] = DSRow(vmm_id, category, user_id, status)
            exchange.writer.write_long(vmid)
            exchange.send()
        elif opcode == Op.VM_NOTIFY_DS:
            vmid, status = read.read_long(), read.read_int()
            self.record((opcode, vmid, status))
            if vmid in self.rows:
                self.rows[vmid].status = status
        elif opcode == Op.HELPER_NOTIFY_DS:
            vmid, ip = read.read_long(), read.read_utf()
            self.record((opcode, vmid, ip))
            if vmid in self.rows:
                self.rows[vmid].ip = ip
        elif opcode == AS_RM_REGISTER_DS:
            self._as_register(exchange, read.read_long())

    def of_user(self, user_id: int) -> dict[int, DSRow]:
        """The rows the DS holds for a user (by vmid)."""
        return {vmid: row for vmid, row in self.rows.items() if row.user_id == user_id}

    def _as_register(self, exchange: Exchange, user_id: int) -> None:
        """AS_RM_REGISTER_DS: OK and the vmid of the user's one row; ERROR for
        none; for more, the genuine DS's selectOne throws: no answer at all."""
        rows = self.of_user(user_id)
        self.record((AS_RM_REGISTER_DS, user_id, len(rows)))
        if len(rows) > 1:
            return
        exchange.writer.write_byte(OK if rows else ERROR)
        if rows:
            exchange.writer.write_long(next(iter(rows)))
        exchange.send()


class FakeSLAM(Peer):
    def answer(self, exchange: Exchange, opcode: int) -> None:
        if opcode == Op.VMM_REGISTER_SLAM:
            self.record((opcode, exchange.reader.read_utf(), exchange.reader.read_int()))
            exchange.writer.write_byte(OK)
            exchange.send()


class FakeASServer(Peer):
    """The AS's own port (4322 in RAPID): answers DS_MIGRATION_VM_AS with
    `reply` (OK, ERROR, or None for silence)."""

    def __init__(self, reply: int | None = OK) -> None:
        self.reply = reply
        super().__init__()

    def _serve(self, sock: socket.socket) -> None:
        exchange = Exchange(sock, 10)
        try:
            header_and_raw = exchange.reader  # the opcode is a raw byte after the header
            opcode = header_and_raw.read_raw_byte()
            self.record((opcode, header_and_raw.read_long()))
            if self.reply is None:
                time.sleep(3)
                return
            exchange.writer.write_byte(self.reply)
            exchange.send()
        except Exception:
            pass
        finally:
            exchange.close()


def request(port: int, write: Callable[[Writer], None], read: Callable[[Reader], Any] | None = None) -> Any:
    return call(("127.0.0.1", port), 30, write, read)


def start_vm(
    port: int, user_id: int, vcpus: int = 1, memory_mb: int = 512, os_type: int = 0, gpu: int = 1200
) -> Any:
    """SLAM_START_VM_VMM: (status, user id, ip) or (status,)."""

    def write(out: Writer) -> None:
        out.write_byte(Op.SLAM_START_VM_VMM)
        out.write_long(user_id)
        for value in (os_type, vcpus, memory_mb, gpu):
            out.write_int(value)

    def read(reply: Reader) -> tuple[Any, ...]:
        status = reply.read_byte()
        return (status, reply.read_long(), reply.read_utf()) if status == OK else (status,)

    return request(port, write, read)


def as_register_ds(ds_port: int, user_id: int) -> tuple[int, ...]:
    """What a VM's AS asks the DS once the VMM gave it its user id: (OK, vmid) or (ERROR,)."""

    def write(out: Writer) -> None:
        out.write_byte(AS_RM_REGISTER_DS)
        out.write_long(user_id)

    def read(reply: Reader) -> tuple[int, ...]:
        status = reply.read_byte()
        return (status, reply.read_long()) if status == OK else (status,)

    answer: tuple[int, ...] = request(ds_port, write, read)
    return answer


def as_register(port: int, as_ip: str, confirm: int = OK, source: str | None = None) -> tuple[int, ...]:
    """AS_RM_REGISTER_VMM, then the DS-registration byte on the same connection
    (from `source`, an address of 127/8, if given)."""
    bind = (source, 0) if source is not None else None
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=bind)
    exchange = Exchange(sock, 30)
    try:
        exchange.writer.write_byte(Op.AS_RM_REGISTER_VMM)
        exchange.writer.write_utf(as_ip)
        exchange.send()
        status = exchange.reader.read_byte()
        if status != OK:
            return (status,)
        user_id = exchange.reader.read_long()
        exchange.writer.write_byte(confirm)
        exchange.send()
        return (status, user_id)
    finally:
        exchange.close()


def no_reply(port: int, opcode: int, *longs_then_ints: tuple[str, int]) -> bytes:
    """Send a message RAPID never answers; what came back (the VMM's header only)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    exchange = Exchange(sock, 30)
    exchange.writer.write_byte(opcode)
    for kind, value in longs_then_ints:
        (exchange.writer.write_long if kind == "long" else exchange.writer.write_int)(value)
    exchange.send()
    sock.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := sock.recv(1024):
        received += chunk
    sock.close()
    return received
