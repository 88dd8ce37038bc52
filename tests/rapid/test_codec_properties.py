"""Property tests: round trips, any re-splitting of block data, and hostile input."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from pinfold.rapid.codec import STREAM_HEADER, CodecError, Reader, TruncatedError
from tests.rapid.ops import (
    Op,
    block_records,
    decode,
    encode,
    kinds_of,
    read_op,
    segments,
    values,
)

KINDS = ["byte", "int", "long", "utf", "list", "raw"]

# Few distinct characters make repeated list elements (shared handles) likely; the
# full range covers NUL, 2- and 3-byte forms and surrogate pairs. No lone surrogate:
# the encoder refuses those (ValueError), as st.text() already knows.
short_text = st.text(alphabet="ab\x00é€😀", max_size=4) | st.text(max_size=20)
long_text = st.builds(
    lambda char, count: char * count, st.characters(exclude_categories=["Cs"]), st.integers(300, 3000)
)

op = st.one_of(
    st.tuples(st.just("byte"), st.integers(-128, 255)),
    st.tuples(st.just("int"), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just("long"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("utf"), short_text | long_text),
    st.tuples(st.just("list"), st.lists(short_text, max_size=8)),
    st.tuples(st.just("raw"), st.integers(-128, 255)),
    st.tuples(st.just("flush"), st.none()),
)


def in_order(ops: list[Op]) -> list[Op]:
    """`ops` with a flush before each raw byte: unflushed, primitives would come after it (as in Java)."""
    out: list[Op] = []
    for item in ops:
        if item[0] == "raw":
            out.append(("flush", None))
        out.append(item)
    return out


op_lists = st.lists(op, max_size=12).map(in_order)


@given(op_lists)
def test_round_trip(ops: list[Op]) -> None:
    assert decode(encode(ops), kinds_of(ops)) == values(ops)


@given(op_lists)
def test_round_trip_one_byte_at_a_time(ops: list[Op]) -> None:
    source = io.BytesIO(encode(ops))
    reader = Reader(lambda count: source.read(1))
    assert [read_op(reader, kind) for kind in kinds_of(ops)] == values(ops)
    reader.read_end()


@given(op_lists, st.data())
def test_any_split_of_the_block_data_decodes_the_same(ops: list[Op], data: st.DataObject) -> None:
    stream = bytearray(STREAM_HEADER)
    for kind, piece in segments(ops):
        if kind == "wire":
            stream += piece
            continue
        sizes = data.draw(st.lists(st.integers(1, 1100), max_size=len(piece)))
        long_form = data.draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
        stream += block_records(piece, sizes, long_form)
    assert decode(bytes(stream), kinds_of(ops)) == values(ops)


@given(st.lists(op, min_size=1, max_size=8).map(in_order), st.data())
def test_every_truncation_is_a_truncated_error(ops: list[Op], data: st.DataObject) -> None:
    stream = encode(ops)
    cut = data.draw(st.integers(0, len(stream) - 1))
    reader = Reader.from_bytes(stream[:cut])
    try:
        for kind in kinds_of(ops):
            read_op(reader, kind)
        reader.read_end()
    except TruncatedError:
        return
    raise AssertionError(f"decoding {stream[:cut].hex()} did not hit the cut")


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans(), st.lists(st.sampled_from(KINDS), max_size=10))
def test_garbage_only_raises_codec_error(garbage: bytes, with_header: bool, kinds: list[str]) -> None:
    reader = Reader.from_bytes(STREAM_HEADER + garbage if with_header else garbage)
    try:
        for kind in kinds:
            read_op(reader, kind)
        reader.read_end()
    except CodecError:
        pass


@settings(max_examples=300)
@given(st.lists(op, min_size=1, max_size=8).map(in_order), st.data())
def test_corrupted_streams_only_raise_codec_error(ops: list[Op], data: st.DataObject) -> None:
    stream = bytearray(encode(ops))
    for _ in range(data.draw(st.integers(1, 4))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    reader = Reader.from_bytes(bytes(stream))
    try:
        for kind in kinds_of(ops):
            read_op(reader, kind)
        reader.read_end()
    except CodecError:
        pass
