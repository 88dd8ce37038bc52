"""pinfold.rapid.codec against the golden vectors and the JDK's corner cases."""

from __future__ import annotations

import io
import struct

import pytest

from pinfold.rapid.codec import (
    MAX_BLOCK_LENGTH,
    MAX_LIST_SIZE,
    MAX_STRING_BYTES,
    STREAM_HEADER,
    CodecError,
    Reader,
    TruncatedError,
    Writer,
    decode_modified_utf8,
    encode_modified_utf8,
)
from tests.rapid.ops import decode, encode, kinds_of, read_op, values
from tests.rapid.vectors import GOLDEN, REPEATED, REPEATED_TAIL, Vector

HEADER = STREAM_HEADER.hex()
ARRAYLIST_DESC = (
    "72 0013 6a6176612e7574696c2e41727261794c697374 7881d21d99c7619d 03 0001 49 0004 73697a65 78 70"
)


def stream(text: str) -> bytes:
    return bytes.fromhex(text)


def golden_ids(vector: Vector) -> str:
    return vector.name


# ----------------------------------------------------------------------------- golden vectors


@pytest.mark.parametrize("vector", GOLDEN, ids=golden_ids)
def test_encoder_matches_golden_vector(vector: Vector) -> None:
    assert encode(vector.ops).hex() == vector.data.hex()


@pytest.mark.parametrize("vector", GOLDEN, ids=golden_ids)
def test_decoder_reads_golden_vector_whole(vector: Vector) -> None:
    assert decode(vector.data, kinds_of(vector.ops)) == values(vector.ops)


@pytest.mark.parametrize("vector", GOLDEN, ids=golden_ids)
def test_decoder_reads_golden_vector_one_byte_at_a_time(vector: Vector) -> None:
    source = io.BytesIO(vector.data)
    calls: list[int] = []

    def read(count: int) -> bytes:
        calls.append(count)
        return source.read(1)

    reader = Reader(read)
    assert [read_op(reader, kind) for kind in kinds_of(vector.ops)] == values(vector.ops)
    reader.read_end()
    assert min(calls) >= 1


@pytest.mark.parametrize("vector", GOLDEN, ids=golden_ids)
def test_decoder_leaves_trailing_bytes_unread(vector: Vector) -> None:
    trailing = stream("77 01 05 ff")
    source = io.BytesIO(vector.data + trailing)
    reader = Reader(source.read)
    assert [read_op(reader, kind) for kind in kinds_of(vector.ops)] == values(vector.ops)
    assert source.read() == trailing


@pytest.mark.parametrize("vector", GOLDEN, ids=golden_ids)
def test_read_end_refuses_trailing_bytes(vector: Vector) -> None:
    reader = Reader.from_bytes(vector.data + b"\x00")
    for kind in kinds_of(vector.ops):
        read_op(reader, kind)
    with pytest.raises(CodecError, match="after the end"):
        reader.read_end()


def test_repeated_strings_vector_ends_with_the_golden_references() -> None:
    data = encode([("list", REPEATED)])
    assert data.endswith(stream(REPEATED_TAIL + " 78"))


# ----------------------------------------------------------------------------- encoding


def test_writer_emits_the_header_before_any_value() -> None:
    writer = Writer()
    assert writer.data_to_send() == STREAM_HEADER
    assert writer.data_to_send() == b""


def test_writer_without_header_emits_only_values() -> None:
    writer = Writer(header=False)
    writer.write_byte(1)
    writer.flush()
    assert writer.data_to_send() == stream("77 01 01")


def test_primitives_wait_for_flush() -> None:
    writer = Writer()
    writer.write_int(7)
    assert writer.data_to_send() == STREAM_HEADER
    writer.flush()
    assert writer.data_to_send() == stream("77 04 00000007")


def test_full_buffer_splits_a_value_across_two_blocks() -> None:
    # 2 + 1019 bytes of UTF, then an int: the JDK's 1024-byte buffer fills after
    # three bytes of the int and drains only when the fourth arrives.
    writer = Writer()
    writer.write_utf("a" * 1019)
    writer.write_int(0x01020304)
    writer.flush()
    expected = HEADER + "7a 00000400 03fb" + "61" * 1019 + "010203" + "7701 04"
    assert writer.data_to_send() == stream(expected)


def test_exactly_full_buffer_is_one_block_on_flush() -> None:
    writer = Writer()
    writer.write_utf("a" * 1022)
    writer.flush()
    assert writer.data_to_send() == stream(HEADER + "7a 00000400 03fe" + "61" * 1022)


def test_raw_byte_overtakes_buffered_primitives_like_the_jdk() -> None:
    # JDK 17: oos.writeLong(42); socket.write(57); oos.flush() gives the same bytes.
    writer = Writer()
    writer.write_long(42)
    writer.write_raw_byte(57)
    writer.flush()
    assert writer.data_to_send() == stream("aced0005 39 7708 000000000000002a")


def test_list_flushes_pending_primitives_first() -> None:
    assert encode([("byte", 1), ("list", [])]) == stream(
        HEADER + "7701 01 73" + ARRAYLIST_DESC + "00000000 7704 00000000 78"
    )


def test_second_list_refers_to_class_and_strings_of_the_first() -> None:
    data = encode([("list", ["a"]), ("list", ["b", "a"])])
    expected = (
        HEADER
        + "73"
        + ARRAYLIST_DESC
        + "00000001 7704 00000001 74 0001 61 78"  # handles: 0 desc, 1 list, 2 "a"
        + "73 71 007e0000 00000002 7704 00000002 74 0001 62 71 007e0002 78"  # 3 list, 4 "b"
    )
    assert data == stream(expected)


def test_utf_strings_are_not_shared_with_list_strings() -> None:
    data = encode([("utf", "a"), ("list", ["a"])])
    assert data.endswith(stream("74 0001 61 78"))


def test_long_list_element_is_a_long_string() -> None:
    element = "é" * 40000  # 80000 bytes of modified UTF-8
    data = encode([("list", [element])])
    assert stream("7c 0000000000013880") + element.encode() + stream("78") in data
    assert decode(data, ["list"]) == [("list", [element])]


def test_write_utf_refuses_more_than_65535_bytes() -> None:
    writer = Writer()
    writer.write_utf("a" * 65535)
    with pytest.raises(ValueError, match="at most 65535 bytes"):
        writer.write_utf("é" * 32768)
    with pytest.raises(ValueError, match="at most 65535 bytes"):
        writer.write_utf("\x00" * 32768)


@pytest.mark.parametrize(
    ("method", "value"),
    [
        ("write_byte", 256),
        ("write_byte", -129),
        ("write_raw_byte", 256),
        ("write_int", 1 << 31),
        ("write_int", -(1 << 31) - 1),
        ("write_long", 1 << 63),
        ("write_long", -(1 << 63) - 1),
    ],
)
def test_writer_refuses_values_outside_the_java_type(method: str, value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        getattr(Writer(), method)(value)


def test_writer_refuses_an_unpaired_surrogate_without_writing() -> None:
    writer = Writer()
    writer.data_to_send()
    with pytest.raises(ValueError, match="unpaired surrogate"):
        writer.write_string_list(["ok", "\ud800"])
    with pytest.raises(ValueError, match="unpaired surrogate"):
        writer.write_utf("\udc00")
    writer.flush()
    assert writer.data_to_send() == b""


# ----------------------------------------------------------------------------- modified UTF-8


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("", ""),
        ("abc", "616263"),
        ("\x00", "c080"),
        ("a\x00b", "61c08062"),
        ("é", "c3a9"),
        ("\u07ff", "dfbf"),
        ("€", "e282ac"),
        ("\uffff", "efbfbf"),
        ("😀", "eda0bd edb880"),  # U+1F600 = D83D DE00, each surrogate 3 bytes
    ],
    ids=["empty", "ascii", "nul", "nul-inside", "2-byte", "2-byte-max", "3-byte", "3-byte-max", "emoji"],
)
def test_modified_utf8_round_trip(text: str, encoded: str) -> None:
    assert encode_modified_utf8(text) == stream(encoded)
    assert decode_modified_utf8(stream(encoded)) == text


@pytest.mark.parametrize(
    ("encoded", "text"),
    [("00", "\x00"), ("c181", "A"), ("e08181", "A")],
    ids=["raw-nul", "overlong-2", "overlong-3"],
)
def test_modified_utf8_decoding_is_as_lenient_as_java(encoded: str, text: str) -> None:
    assert decode_modified_utf8(stream(encoded)) == text


@pytest.mark.parametrize(
    "encoded",
    ["80", "c0", "c041", "e082", "e08241", "f09f9880", "ff", "eda0bd", "edb880", "eda0bd 41"],
    ids=[
        "lone-continuation",
        "cut-2",
        "bad-continuation-2",
        "cut-3",
        "bad-continuation-3",
        "4-byte-utf8",
        "ff",
        "lone-high-surrogate",
        "lone-low-surrogate",
        "high-surrogate-then-ascii",
    ],
)
def test_modified_utf8_decoding_refuses_malformed_bytes(encoded: str) -> None:
    with pytest.raises(CodecError):
        decode_modified_utf8(stream(encoded))


# ----------------------------------------------------------------------------- decoding


def test_block_records_of_any_length_are_one_byte_stream() -> None:
    data = stream(HEADER + "77 01 00 7a 00000003 000000 77 00 77 06 0000002a 0003 7a 00000002 6162 77 01 63")
    reader = Reader.from_bytes(data)
    assert reader.read_long() == 42
    assert reader.read_utf() == "abc"
    reader.read_end()


def test_raw_byte_between_blocks() -> None:
    reader = Reader.from_bytes(stream(HEADER + "77 01 01 39 77 01 02"))
    assert [reader.read_byte(), reader.read_raw_byte(), reader.read_byte()] == [1, 57, 2]


def test_bytes_are_signed_like_java() -> None:
    reader = Reader.from_bytes(stream(HEADER + "ff 77 01 80"))
    assert [reader.read_raw_byte(), reader.read_byte()] == [-1, -128]


def test_reader_without_header() -> None:
    assert Reader.from_bytes(stream("77 01 07"), header=False).read_byte() == 7


def test_reference_to_a_string_of_an_earlier_list() -> None:
    data = stream(
        HEADER + "73" + ARRAYLIST_DESC + "00000001 7704 00000001 74 0001 61 78"
        "73 71 007e0000 00000002 7704 00000002 71 007e0002 71 007e0002 78"
    )
    reader = Reader.from_bytes(data)
    assert reader.read_string_list() == ["a"]
    assert reader.read_string_list() == ["a", "a"]


def list_stream(size: str, elements: str) -> bytes:
    return stream(HEADER + "73" + ARRAYLIST_DESC + size + "7704" + size + elements)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (stream("aced0006 7701 01"), "header"),
        (stream("cafebabe 7701 01"), "header"),
        (stream(HEADER + "73"), "expected primitive data"),
        (stream(HEADER + "39"), "expected primitive data"),
        (stream(HEADER + f"7a {MAX_BLOCK_LENGTH + 1:08x}"), "exceeds"),
        (stream(HEADER + "7a ffffffff"), "exceeds"),
    ],
    ids=["version", "magic", "object-for-byte", "raw-for-byte", "block-over-limit", "block-negative"],
)
def test_read_byte_refuses(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message) as info:
        Reader.from_bytes(data).read_byte()
    assert not isinstance(info.value, TruncatedError)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (stream(HEADER + "7701 01"), "expected a java.util.ArrayList"),
        (stream(HEADER + "7700 73"), "expected a java.util.ArrayList"),
        (stream(HEADER + "74 0001 61"), "expected a java.util.ArrayList"),
        (stream(HEADER + "70"), "expected a java.util.ArrayList"),
        (stream(HEADER + "73 71 007e0000"), "unknown handle"),
        (stream(HEADER + "73 70"), "expected a class descriptor"),
        (stream(HEADER + "73 72 0014 6a6176612e7574696c2e4c696e6b65644c697374"), "unsupported class"),
        (
            stream(
                HEADER
                + "73 72 0013 6a6176612e7574696c2e41727261794c697374"
                + "0000000000000001 03 0001 49 0004 73697a65 78 70"
            ),
            "descriptor differs",
        ),
        (list_stream("ffffffff", ""), "list size -1"),
        (list_stream(f"{MAX_LIST_SIZE + 1:08x}", ""), "list size"),
        (list_stream("00000001", "70 78"), "expected a string"),
        (list_stream("00000001", "73"), "expected a string"),
        (list_stream("00000001", "71 007e0000 78"), "class descriptor, not to a string"),
        (list_stream("00000001", "71 007e0001 78"), "java.util.ArrayList, not to a string"),
        (list_stream("00000001", "71 007e0002 78"), "unknown handle"),
        (list_stream("00000001", f"7c {MAX_STRING_BYTES + 1:016x}"), "long string"),
        (list_stream("00000001", "7c ffffffffffffffff"), "long string"),
        (list_stream("00000001", "74 0001 61 74 0001 62 78"), "expected the end of the list"),
        (list_stream("00000000", "7701 00 78"), "expected the end of the list"),
    ],
    ids=[
        "block-for-list",
        "empty-block-before-list",
        "bare-string",
        "null",
        "class-reference-before-any",
        "null-class",
        "linkedlist",
        "other-serial-version",
        "negative-size",
        "size-over-limit",
        "null-element",
        "object-element",
        "element-refers-to-class",
        "element-refers-to-list",
        "element-refers-forward",
        "long-string-over-limit",
        "long-string-negative",
        "more-elements-than-size",
        "block-data-after-capacity",
    ],
)
def test_read_string_list_refuses(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message) as info:
        Reader.from_bytes(data).read_string_list()
    assert not isinstance(info.value, TruncatedError)


def test_capacity_split_across_blocks_is_accepted() -> None:
    data = stream(HEADER + "73" + ARRAYLIST_DESC + "00000001 7702 0000 7a 00000002 0001 74 0001 61 78")
    assert Reader.from_bytes(data).read_string_list() == ["a"]


def test_unread_block_data_before_a_list_is_refused() -> None:
    reader = Reader.from_bytes(stream(HEADER + "7702 0102 73"))
    assert reader.read_byte() == 1
    with pytest.raises(CodecError, match="1 bytes of block data are unread"):
        reader.read_string_list()


def test_raw_byte_inside_a_block_is_refused() -> None:
    reader = Reader.from_bytes(stream(HEADER + "7702 0102"))
    reader.read_byte()
    with pytest.raises(CodecError, match="expected a raw byte"):
        reader.read_raw_byte()


def test_read_end_refuses_unread_block_data() -> None:
    reader = Reader.from_bytes(stream(HEADER + "7702 0102"))
    reader.read_byte()
    with pytest.raises(CodecError, match="left unread"):
        reader.read_end()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "byte"),
        (stream("aced00"), "byte"),
        (stream(HEADER), "byte"),
        (stream(HEADER + "77"), "byte"),
        (stream(HEADER + "7a 0000"), "byte"),
        (stream(HEADER + "7704 000000"), "int"),
        (stream(HEADER + "7702 0005 7701 61"), "utf"),
        (stream(HEADER), "list"),
        (stream(HEADER + "73 72 0013 6a617661"), "list"),
        (list_stream("00000002", "74 0001 61"), "list"),
    ],
    ids=[
        "empty",
        "half-header",
        "no-block",
        "no-length",
        "cut-long-length",
        "cut-int",
        "cut-utf",
        "no-list",
        "cut-class",
        "cut-elements",
    ],
)
def test_eof_inside_a_value_is_truncated_error(data: bytes, kind: str) -> None:
    with pytest.raises(TruncatedError):
        read_op(Reader.from_bytes(data), kind)


def test_declared_lengths_over_the_limits_are_refused_before_reading() -> None:
    asked: list[int] = []
    source = io.BytesIO(list_stream("00000001", f"7c {MAX_STRING_BYTES + 1:016x}") + b"x" * 64)

    def read(count: int) -> bytes:
        asked.append(count)
        return source.read(count)

    with pytest.raises(CodecError, match="long string"):
        Reader(read).read_string_list()
    assert max(asked) <= 64


def test_errors_of_the_byte_source_pass_through() -> None:
    def read(count: int) -> bytes:
        raise TimeoutError("peer silent")

    with pytest.raises(TimeoutError):
        Reader(read).read_byte()


def test_a_source_returning_more_than_asked_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="returned"):
        Reader(lambda count: b"\x00" * (count + 1)).read_byte()


def test_codec_errors_are_value_errors() -> None:
    assert issubclass(TruncatedError, CodecError)
    assert issubclass(CodecError, ValueError)


def test_struct_layout_of_a_long_block_header() -> None:
    # 7A is followed by a big-endian u32, not a Java long.
    data = encode([("utf", "b" * 300)])
    assert data[4:9] == bytes((0x7A,)) + struct.pack(">I", 302)
