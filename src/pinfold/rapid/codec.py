"""The subset of the Java Object Serialization stream protocol that RAPID speaks (PROTOCOL.md 3.1).

RAPID's peers wrap every socket in a Java `ObjectOutputStream`/`ObjectInputStream`
but only use `writeByte/Int/Long/UTF`, `writeObject(ArrayList<String>)` and, for the
AS protocol (3.6.3), a raw byte written under the object stream. This module
reproduces exactly the bytes a JDK emits for those calls, so that a Java peer cannot
tell pinfold from the original VMM, and decodes them back.

Pure: `Writer` appends to a buffer the caller sends; `Reader` pulls bytes through a
`read(n)` callable (a socket's `recv`, `io.BytesIO.read`), so the network layer owns
sockets and timeouts. Decoding never raises anything but `CodecError` on bad input
and refuses declared lengths above the `MAX_*` limits before reading them.

Byte-exactness rests on three JDK behaviours, each reproduced below:

- primitives go through a 1024-byte buffer that becomes a block-data record
  (`77 len`, or `7A u32len` above 255 bytes) on `flush()`, before an object, or when
  a byte arrives and the buffer is full: so a value can straddle two blocks;
- strings are *modified* UTF-8 of UTF-16 code units (NUL as `C0 80`, each surrogate
  of a pair as 3 bytes);
- objects get handles (0x7E0000 + n, in order of appearance, for the whole stream),
  and an object written again is a `TC_REFERENCE` to its handle.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from enum import Enum, IntEnum

__all__ = [
    "BASE_HANDLE",
    "JAVA_BLOCK_SIZE",
    "MAX_BLOCK_LENGTH",
    "MAX_LIST_SIZE",
    "MAX_STRING_BYTES",
    "STREAM_HEADER",
    "TC",
    "CodecError",
    "ReadFn",
    "Reader",
    "TruncatedError",
    "Writer",
    "decode_modified_utf8",
    "encode_modified_utf8",
]

STREAM_HEADER = b"\xac\xed\x00\x05"
"""STREAM_MAGIC 0xACED, STREAM_VERSION 5: what every `ObjectOutputStream` writes first."""

BASE_HANDLE = 0x7E0000
"""The first object handle of a stream (`baseWireHandle`)."""

JAVA_BLOCK_SIZE = 1024
"""`ObjectOutputStream`'s primitive buffer (`MAX_BLOCK_SIZE`): no JDK block is longer."""

MAX_BLOCK_LENGTH = 1 << 20
"""The longest block-data record the reader accepts (1 MiB): far above the JDK's 1024."""

MAX_STRING_BYTES = 1 << 20
"""The longest TC_LONGSTRING the reader accepts (1 MiB); TC_STRING is capped at 65535 by its u16."""

MAX_LIST_SIZE = 65535
"""The most elements the reader accepts in a list: RAPID's replies hold a handful."""


class TC(IntEnum):
    """The type codes (`ObjectStreamConstants.TC_*`) that RAPID's subset uses."""

    NULL = 0x70
    REFERENCE = 0x71
    CLASSDESC = 0x72
    OBJECT = 0x73
    STRING = 0x74
    BLOCKDATA = 0x77
    ENDBLOCKDATA = 0x78
    BLOCKDATALONG = 0x7A
    LONGSTRING = 0x7C


_ARRAYLIST_CLASS = "java.util.ArrayList"
_ARRAYLIST_SUID = 8683452581122892189
# What follows the class name in the JDK's descriptor of java.util.ArrayList:
# serialVersionUID, flags SC_SERIALIZABLE|SC_WRITE_METHOD, one field `int size`,
# TC_ENDBLOCKDATA (no class annotation), TC_NULL (AbstractList is not serializable).
_ARRAYLIST_DESC_TAIL = (
    struct.pack(">qBH", _ARRAYLIST_SUID, 0x03, 1)
    + b"I"
    + struct.pack(">H", 4)
    + b"size"
    + bytes((TC.ENDBLOCKDATA, TC.NULL))
)
_ARRAYLIST_DESC = struct.pack(">H", len(_ARRAYLIST_CLASS)) + _ARRAYLIST_CLASS.encode() + _ARRAYLIST_DESC_TAIL

_BYTE = struct.Struct(">b")
_INT = struct.Struct(">i")
_LONG = struct.Struct(">q")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class CodecError(ValueError):
    """Bytes that are not a stream RAPID's Java peers would write (or that exceed a MAX_* limit)."""


class TruncatedError(CodecError):
    """The byte source ended (EOF) in the middle of a value."""


# ----------------------------------------------------------------------------- modified UTF-8


def encode_modified_utf8(value: str) -> bytes:
    """Java's modified UTF-8 of `value` (`DataOutput.writeUTF` without the length).

    Java encodes UTF-16 code units, not code points: NUL becomes `C0 80` and a
    character above U+FFFF becomes its two surrogates, 3 bytes each. A string with an
    unpaired surrogate has no Java counterpart pinfold wants to send: ValueError.
    """
    if value.isascii() and "\x00" not in value:
        return value.encode("ascii")
    try:
        utf16 = value.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string holds an unpaired surrogate at index {exc.start}") from None
    out = bytearray()
    for (unit,) in _U16.iter_unpack(utf16):
        if 0 < unit < 0x80:
            out.append(unit)
        elif unit < 0x800:  # including NUL
            out += bytes((0xC0 | unit >> 6, 0x80 | unit & 0x3F))
        else:
            out += bytes((0xE0 | unit >> 12, 0x80 | unit >> 6 & 0x3F, 0x80 | unit & 0x3F))
    return bytes(out)


def decode_modified_utf8(data: bytes) -> str:
    """The string Java's `readUTF` reads from `data`, as a Python str.

    As lenient as `DataInputStream.readUTF` (a raw 00 byte or an overlong form is a
    character), as strict where it throws (a bad lead or continuation byte, a cut
    sequence). Surrogate pairs are joined; an unpaired surrogate is refused so that
    every decoded str is valid Unicode.
    """
    if data.isascii() and b"\x00" not in data:
        return data.decode("ascii")
    units: list[int] = []
    i, end = 0, len(data)
    while i < end:
        lead = data[i]
        if lead < 0x80:
            units.append(lead)
            i += 1
        elif 0xC0 <= lead < 0xE0:
            if i + 2 > end or data[i + 1] & 0xC0 != 0x80:
                raise CodecError(f"malformed modified UTF-8: bad 2-byte sequence at byte {i}")
            units.append((lead & 0x1F) << 6 | data[i + 1] & 0x3F)
            i += 2
        elif 0xE0 <= lead < 0xF0:
            if i + 3 > end or data[i + 1] & 0xC0 != 0x80 or data[i + 2] & 0xC0 != 0x80:
                raise CodecError(f"malformed modified UTF-8: bad 3-byte sequence at byte {i}")
            units.append((lead & 0x0F) << 12 | (data[i + 1] & 0x3F) << 6 | data[i + 2] & 0x3F)
            i += 3
        else:
            raise CodecError(f"malformed modified UTF-8: byte {lead:#04x} at {i}")
    try:
        return struct.pack(f">{len(units)}H", *units).decode("utf-16-be")
    except UnicodeDecodeError:
        raise CodecError("modified UTF-8 holds an unpaired surrogate") from None


# ----------------------------------------------------------------------------- encoding


def _check_range(value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise ValueError(f"{what} {value} out of range {low}..{high}")


class Writer:
    """Builds the bytes a Java `ObjectOutputStream` emits for the same calls.

    Primitive writes are buffered like the JDK's; `flush()` turns the buffer into a
    block-data record and `data_to_send()` hands over everything emitted so far. The
    stream header is emitted at construction, as the JDK does, so a server can send it
    before reading anything (PROTOCOL.md 3.1: waiting for the peer's can deadlock).
    Values out of range for their Java type raise ValueError, nothing is truncated.
    """

    def __init__(self, *, header: bool = True) -> None:
        self._out = bytearray(STREAM_HEADER if header else b"")
        self._block = bytearray()
        self._next_handle = BASE_HANDLE
        self._list_class_handle: int | None = None
        self._string_handles: dict[str, int] = {}

    def write_byte(self, value: int) -> None:
        """`writeByte`: one byte; -128..255 (Java keeps the low 8 bits of an int)."""
        _check_range(value, -128, 255, "byte")
        self._primitive(bytes((value & 0xFF,)))

    def write_int(self, value: int) -> None:
        """`writeInt`: 4 bytes big-endian, two's complement."""
        _check_range(value, -(1 << 31), (1 << 31) - 1, "int")
        self._primitive(_INT.pack(value))

    def write_long(self, value: int) -> None:
        """`writeLong`: 8 bytes big-endian, two's complement."""
        _check_range(value, -(1 << 63), (1 << 63) - 1, "long")
        self._primitive(_LONG.pack(value))

    def write_utf(self, value: str) -> None:
        """`writeUTF`: u16 byte length + modified UTF-8; longer than 65535 bytes is a ValueError."""
        encoded = encode_modified_utf8(value)
        if len(encoded) > 0xFFFF:
            raise ValueError(f"writeUTF takes at most 65535 bytes of modified UTF-8, not {len(encoded)}")
        self._primitive(_U16.pack(len(encoded)) + encoded)

    def write_raw_byte(self, value: int) -> None:
        """A byte written to the socket's own stream, under the object stream (PROTOCOL.md 3.6.3).

        This is how the VMM sends DS_MIGRATION_VM_AS: it flushes a fresh
        `ObjectOutputStream` (header), then calls `write(57)` on the socket's
        `OutputStream`, and the AS reads it with `InputStream.read()`. The byte is not
        in a block-data record: `ObjectOutputStream.write(int)` would give `77 01 39`.
        Like the JDK, it overtakes primitives still buffered in the object stream.
        """
        _check_range(value, -128, 255, "byte")
        self._out.append(value & 0xFF)

    def write_string_list(self, values: Sequence[str]) -> None:
        """`writeObject(new ArrayList<String>(values))`, as ArrayList.writeObject lays it out.

        The class descriptor is written once per stream and referenced afterwards; a
        string equal to one written before in this stream (in any list) is a
        TC_REFERENCE to it. The JDK shares by identity, which for RAPID's interned
        literals (and the golden vectors) is the same thing.
        """
        encoded = [encode_modified_utf8(value) for value in values]  # refuse before writing anything
        self._drain()  # the JDK ends the current block before an object
        out = self._out
        out.append(TC.OBJECT)
        if self._list_class_handle is None:
            out.append(TC.CLASSDESC)
            out += _ARRAYLIST_DESC
            self._list_class_handle = self._new_handle()
        else:
            out += struct.pack(">BI", TC.REFERENCE, self._list_class_handle)
        self._new_handle()  # the list itself
        out += _INT.pack(len(values))  # the serializable field `size`, outside block data
        out += bytes((TC.BLOCKDATA, 4)) + _INT.pack(len(values))  # writeObject's capacity
        for value, data in zip(values, encoded, strict=True):
            handle = self._string_handles.get(value)
            if handle is not None:
                out += struct.pack(">BI", TC.REFERENCE, handle)
                continue
            if len(data) <= 0xFFFF:
                out += struct.pack(">BH", TC.STRING, len(data))
            else:
                out += struct.pack(">BQ", TC.LONGSTRING, len(data))
            out += data
            self._string_handles[value] = self._new_handle()
        out.append(TC.ENDBLOCKDATA)

    def flush(self) -> None:
        """`flush()`: buffered primitives become one block-data record."""
        self._drain()

    def data_to_send(self) -> bytes:
        """Everything emitted since the last call; primitives wait in the buffer until `flush()`."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def _primitive(self, data: bytes) -> None:
        # The JDK drains its buffer only when a byte arrives and the buffer is full,
        # never ahead of time: a value can be split across two blocks.
        view = memoryview(data)
        while view:
            if len(self._block) == JAVA_BLOCK_SIZE:
                self._drain()
            room = JAVA_BLOCK_SIZE - len(self._block)
            self._block += view[:room]
            view = view[room:]

    def _drain(self) -> None:
        length = len(self._block)
        if length == 0:
            return
        if length <= 0xFF:
            self._out += bytes((TC.BLOCKDATA, length))
        else:
            self._out += struct.pack(">BI", TC.BLOCKDATALONG, length)
        self._out += self._block
        self._block.clear()

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle


# ----------------------------------------------------------------------------- decoding

ReadFn = Callable[[int], bytes]
"""`read(n)`: 1..n bytes, or b"" at EOF (the contract of `socket.recv` and `io.BytesIO.read`)."""


class _Kind(Enum):
    """What a handle that is not a string stands for."""

    LIST_CLASS = "the java.util.ArrayList class descriptor"
    LIST = "a java.util.ArrayList"


class Reader:
    """Reads what a Java `ObjectInputStream` would, from a `read(n)` byte source.

    The header is checked before the first value. Consecutive block-data records, of
    any lengths, are one byte stream for primitives. The reader asks the source for
    exactly the bytes it needs, so it never consumes past the end of a message, and a
    source that can block (a socket with a timeout) blocks only when data is due.
    Anything but the expected value raises CodecError; EOF raises TruncatedError.
    Exceptions of the source itself (a socket timeout) pass through unchanged. After
    any of these the position in the stream is lost: drop the reader (and the
    connection), as a Java peer does.
    """

    def __init__(self, read: ReadFn, *, header: bool = True) -> None:
        self._read = read
        self._header_due = header
        self._block_left = 0  # unread bytes of the current block-data record
        self._handles: list[str | _Kind] = []  # index = handle - BASE_HANDLE

    @classmethod
    def from_bytes(cls, data: bytes, *, header: bool = True) -> Reader:
        """A reader over a complete message: its end is EOF."""
        return cls(io.BytesIO(data).read, header=header)

    def read_byte(self) -> int:
        """`readByte`: -128..127."""
        return int(_BYTE.unpack(self._block_bytes(1))[0])

    def read_int(self) -> int:
        """`readInt`."""
        return int(_INT.unpack(self._block_bytes(4))[0])

    def read_long(self) -> int:
        """`readLong`."""
        return int(_LONG.unpack(self._block_bytes(8))[0])

    def read_utf(self) -> str:
        """`readUTF`: u16 length + modified UTF-8, possibly spread over several blocks."""
        (length,) = _U16.unpack(self._block_bytes(2))
        return decode_modified_utf8(self._block_bytes(length))

    def read_raw_byte(self) -> int:
        """A byte outside block data (see `Writer.write_raw_byte`): -128..127.

        Only valid between block-data records, as on the AS, which reads it from the
        socket's stream right after the header.
        """
        self._start()
        if self._block_left:
            raise CodecError(f"expected a raw byte, but {self._block_left} bytes of block data are unread")
        return int(_BYTE.unpack(self._read_exact(1))[0])

    def read_string_list(self) -> list[str]:
        """`(ArrayList<String>) readObject()`; anything but such a list is a CodecError."""
        tag = self._object_tag()
        if tag != TC.OBJECT:
            raise CodecError(f"expected a java.util.ArrayList object, found {_describe(tag)}")
        self._read_list_class()
        self._handles.append(_Kind.LIST)
        (size,) = _INT.unpack(self._read_exact(4))  # the field `size`, outside block data
        if not 0 <= size <= MAX_LIST_SIZE:
            raise CodecError(f"list size {size} outside 0..{MAX_LIST_SIZE}")
        self._block_bytes(4)  # the capacity ArrayList.writeObject adds; Java ignores it too
        values: list[str] = []
        for _ in range(size):
            values.append(self._read_list_element())
        tag = self._object_tag()
        if tag != TC.ENDBLOCKDATA:
            raise CodecError(f"expected the end of the list ({size} elements), found {_describe(tag)}")
        return values

    def read_end(self) -> None:
        """Require that the stream ends here: no unread block data, then EOF."""
        self._start()
        if self._block_left:
            raise CodecError(f"{self._block_left} bytes of block data left unread")
        if self._read(1):
            raise CodecError("bytes after the end of the message")

    def _start(self) -> None:
        if self._header_due:
            self._header_due = False
            header = self._read_exact(len(STREAM_HEADER))
            if header != STREAM_HEADER:
                raise CodecError(f"not a Java object stream: header {header.hex()}, expected aced0005")

    def _read_exact(self, count: int) -> bytes:
        chunks: list[bytes] = []
        left = count
        while left:
            chunk = self._read(left)
            if not chunk:
                raise TruncatedError(f"stream ended {left} bytes short of a {count}-byte read")
            if len(chunk) > left:
                raise ValueError(f"read({left}) returned {len(chunk)} bytes")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _block_bytes(self, count: int) -> bytes:
        """`count` bytes of primitive data, crossing block-data records as needed."""
        self._start()
        chunks: list[bytes] = []
        while count:
            if self._block_left == 0:
                self._block_left = self._block_header()
                continue
            take = min(count, self._block_left)
            chunks.append(self._read_exact(take))
            self._block_left -= take
            count -= take
        return b"".join(chunks)

    def _block_header(self) -> int:
        tag = self._read_exact(1)[0]
        if tag == TC.BLOCKDATA:
            return self._read_exact(1)[0]
        if tag == TC.BLOCKDATALONG:
            (length,) = _U32.unpack(self._read_exact(4))
            if length > MAX_BLOCK_LENGTH:
                raise CodecError(f"block-data record of {length} bytes exceeds {MAX_BLOCK_LENGTH}")
            return int(length)
        raise CodecError(f"expected primitive data (a block-data record), found {_describe(tag)}")

    def _object_tag(self) -> int:
        """The type code of the next object; primitive data left before it is an error, as in Java."""
        self._start()
        if self._block_left:
            raise CodecError(f"expected an object, but {self._block_left} bytes of block data are unread")
        return self._read_exact(1)[0]

    def _read_list_class(self) -> None:
        tag = self._read_exact(1)[0]
        if tag == TC.REFERENCE:
            if self._handle() is not _Kind.LIST_CLASS:
                raise CodecError("class reference does not point to the java.util.ArrayList descriptor")
            return
        if tag != TC.CLASSDESC:
            raise CodecError(f"expected a class descriptor, found {_describe(tag)}")
        (name_length,) = _U16.unpack(self._read_exact(2))
        name = decode_modified_utf8(self._read_exact(name_length))
        if name != _ARRAYLIST_CLASS:
            raise CodecError(f"unsupported class {name!r}: RAPID sends only {_ARRAYLIST_CLASS}")
        if self._read_exact(len(_ARRAYLIST_DESC_TAIL)) != _ARRAYLIST_DESC_TAIL:
            raise CodecError(
                "java.util.ArrayList descriptor differs from the JDK's (version, flags or fields)"
            )
        self._handles.append(_Kind.LIST_CLASS)

    def _read_list_element(self) -> str:
        tag = self._object_tag()
        if tag == TC.REFERENCE:
            target = self._handle()
            if isinstance(target, _Kind):
                raise CodecError(f"list element refers to {target.value}, not to a string")
            return target
        if tag == TC.STRING:
            (length,) = _U16.unpack(self._read_exact(2))
        elif tag == TC.LONGSTRING:
            (length,) = _LONG.unpack(self._read_exact(8))
            if not 0 <= length <= MAX_STRING_BYTES:
                raise CodecError(f"long string of {length} bytes outside 0..{MAX_STRING_BYTES}")
        else:
            raise CodecError(f"expected a string in the list, found {_describe(tag)}")
        value = decode_modified_utf8(self._read_exact(length))
        self._handles.append(value)
        return value

    def _handle(self) -> str | _Kind:
        (handle,) = _U32.unpack(self._read_exact(4))
        index = int(handle) - BASE_HANDLE
        if not 0 <= index < len(self._handles):
            raise CodecError(f"reference to unknown handle {handle:#x}")
        return self._handles[index]


def _describe(tag: int) -> str:
    try:
        return f"TC_{TC(tag).name} ({tag:#04x})"
    except ValueError:
        return f"byte {tag:#04x}"
