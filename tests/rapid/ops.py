"""Codec operations as data, so that one test table drives the Writer, the Reader and the JDK peer.

An op is `(kind, value)`: ("byte", int), ("int", int), ("long", int), ("utf", str),
("list", list[str]), ("raw", int) or ("flush", None). Decoding yields the same ops
without the flushes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pinfold.rapid.codec import TC, Reader, Writer

Op = tuple[str, Any]


def encode(ops: Iterable[Op], *, flush: bool = True) -> bytes:
    """The stream a Writer emits for `ops` (flushed at the end unless told not to)."""
    writer = Writer()
    for op in ops:
        apply(writer, op)
    if flush:
        writer.flush()
    return writer.data_to_send()


def apply(writer: Writer, op: Op) -> None:
    kind, value = op
    if kind == "byte":
        writer.write_byte(value)
    elif kind == "int":
        writer.write_int(value)
    elif kind == "long":
        writer.write_long(value)
    elif kind == "utf":
        writer.write_utf(value)
    elif kind == "list":
        writer.write_string_list(value)
    elif kind == "raw":
        writer.write_raw_byte(value)
    elif kind == "flush":
        writer.flush()
    else:
        raise AssertionError(kind)


def read_op(reader: Reader, kind: str) -> Op:
    readers: dict[str, Callable[[], Any]] = {
        "byte": reader.read_byte,
        "int": reader.read_int,
        "long": reader.read_long,
        "utf": reader.read_utf,
        "list": reader.read_string_list,
        "raw": reader.read_raw_byte,
    }
    return (kind, readers[kind]())


def values(ops: Iterable[Op]) -> list[Op]:
    """What decoding `ops` gives back: no flushes, bytes as Java's signed bytes."""
    out: list[Op] = []
    for kind, value in ops:
        if kind == "flush":
            continue
        if kind in ("byte", "raw"):
            value = value - 256 if value > 127 else value
        out.append((kind, value))
    return out


def decode(data: bytes, kinds: Sequence[str], *, read_end: bool = True) -> list[Op]:
    reader = Reader.from_bytes(data)
    ops = [read_op(reader, kind) for kind in kinds]
    if read_end:
        reader.read_end()
    return ops


def kinds_of(ops: Iterable[Op]) -> list[str]:
    return [kind for kind, _ in ops if kind != "flush"]


# ----------------------------------------------------------------------------- the JDK peer's syntax


def _hex(text: str) -> str:
    return text.encode().hex()


def to_peer(op: Op) -> str:
    kind, value = op
    if kind == "flush":
        return "flush"
    if kind == "utf":
        return f"utf:{_hex(value)}"
    if kind == "list":
        return f"list:{len(value)}:" + ",".join(_hex(item) for item in value)
    return f"{kind}:{value}"


def from_peer(line: str) -> list[Op]:
    ops: list[Op] = []
    for word in line.split():
        kind, _, rest = word.partition(":")
        if kind == "utf":
            ops.append((kind, bytes.fromhex(rest).decode()))
        elif kind == "list":
            count, _, items = rest.partition(":")
            ops.append((kind, [bytes.fromhex(item).decode() for item in items.split(",")][: int(count)]))
        elif kind in ("byte", "int", "long", "raw"):
            ops.append((kind, int(rest)))
        else:
            raise AssertionError(f"JDK peer said {line!r}")
    return ops


# ----------------------------------------------------------------------------- re-chunking


def segments(ops: Iterable[Op]) -> list[tuple[str, bytes]]:
    """The stream of `ops` after its header as ("block", payload) / ("wire", bytes) pieces.

    Each op is flushed on its own, so its block records can be told apart from an
    object's bytes or a raw byte; consecutive block payloads are merged into one.
    """
    writer = Writer()
    writer.data_to_send()  # the header
    pieces: list[tuple[str, bytes]] = []
    for op in ops:
        apply(writer, op)
        writer.flush()
        data = writer.data_to_send()
        if op[0] in ("list", "raw"):
            pieces.append(("wire", data))
            continue
        payload = _block_payload(data)
        if pieces and pieces[-1][0] == "block":
            pieces[-1] = ("block", pieces[-1][1] + payload)
        elif payload:
            pieces.append(("block", payload))
    return pieces


def _block_payload(data: bytes) -> bytes:
    payload = b""
    while data:
        if data[0] == TC.BLOCKDATA:
            length, start = data[1], 2
        else:
            assert data[0] == TC.BLOCKDATALONG
            length, start = int.from_bytes(data[1:5], "big"), 5
        payload += data[start : start + length]
        data = data[start + length :]
    return payload


def block_records(payload: bytes, sizes: Iterable[int], long_form: Iterable[bool]) -> bytes:
    """`payload` as block records of the given sizes (the last one takes the rest).

    A record is long (7A) when its size needs it or `long_form` says so, which mixes
    both forms at every size.
    """
    out = bytearray()
    for size, long in zip(sizes, long_form, strict=False):
        if not payload:
            break
        chunk, payload = payload[:size], payload[size:]
        if long or len(chunk) > 0xFF:
            out += bytes((TC.BLOCKDATALONG,)) + len(chunk).to_bytes(4, "big")
        else:
            out += bytes((TC.BLOCKDATA, len(chunk)))
        out += chunk
    if payload:
        out += bytes((TC.BLOCKDATALONG,)) + len(payload).to_bytes(4, "big") + payload
    return bytes(out)
