"""The codec: round trips of every frame, hard limits while decoding, and nothing but ProtocolError escaping.

Bytes are built by hand where the test is about the bytes (a header that lies, a non-minimal encoding); the
helpers below spell MessagePack directly so each case shows exactly what is on the wire.
"""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol import codec, frames
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from tests.profiles import examples
from tests.protocol import strategies

HUB = codec.FrameDecoder(frames.CLIENT_FRAMES, codec.SERVER_LIMITS)
"""What a hub runs on every message from a client."""
CLIENT = codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS)
"""What a client runs on every message from a hub."""
DECODE_CODES = frozenset(
    {
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.MALFORMED,
        ErrorCode.TOO_DEEP,
        ErrorCode.TOO_LONG,
        ErrorCode.BAD_FRAME,
        ErrorCode.UNKNOWN_FRAME,
    }
)
"""The only codes decoding may produce."""

FAST = settings(deadline=None, max_examples=examples(150), suppress_health_check=[HealthCheck.too_slow])


# --- MessagePack spelled by hand ---------------------------------------------------------------------------


class Raw(bytes):
    """Bytes inserted verbatim by :func:`m` (anything else is encoded with msgspec)."""


def p(value: Any) -> bytes:
    return value if isinstance(value, Raw) else msgspec.msgpack.encode(value)


def m(*items: Any) -> bytes:
    """A map of the alternating keys and values ``items`` (fixmap, or map16 from 16 entries)."""
    assert len(items) % 2 == 0
    n = len(items) // 2
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + b"".join(p(item) for item in items)


def ping_with(raw: bytes) -> bytes:
    """A valid ``ping`` with an unknown key ``x`` holding ``raw``: only the structure check judges it."""
    return m("t", "ping", "ts", 1, "x", Raw(raw))


def op_with(args: bytes) -> bytes:
    return m("t", "op", "seq", 1, "kind", "cart.add", "args", Raw(args))


def nested(depth: int) -> bytes:
    """A frame whose deepest container is at ``depth`` (the frame's own map is depth 1)."""
    return b"\x81\xa1x" * (depth - 1) + b"\x80"


def refuse(decoder: codec.FrameDecoder, data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decoder.decode(data)
    err = info.value
    assert err.__cause__ is None
    assert err.__context__ is None or err.__suppress_context__, "msgspec's exception must not leak as context"
    return err


def decode_or_refuse(
    decoder: codec.FrameDecoder, accept: tuple[type[frames.Frame], ...], data: bytes
) -> None:
    """Either a valid frame of an accepted kind (whose re-encoding is a fixed point) or a ProtocolError."""
    try:
        frame = decoder.decode(data)
    except ProtocolError as err:
        refused: ProtocolError | None = err
    else:
        refused = None
    if refused is not None:
        assert refused.code in DECODE_CODES
        assert refused.__cause__ is None
        return
    assert isinstance(frame, accept)
    again = codec.encode(frame)
    assert codec.encode(decoder.decode(again)) == again


# --- round trips -------------------------------------------------------------------------------------------


def test_strategies_cover_every_frame_tag() -> None:
    assert set(strategies.BY_TAG) == set(frames.TAGS)
    assert set(frames.CLIENT_FRAMES + frames.SERVER_FRAMES) == set(frames.TAGS.values())


@FAST
@given(strategies.client_frames)
def test_client_frames_round_trip_through_the_hub_decoder(frame: frames.Frame) -> None:
    data = codec.encode(frame)
    decoded = HUB.decode(data)
    assert type(decoded) is type(frame)
    assert decoded == frame
    assert codec.encode(decoded) == data


@FAST
@given(strategies.server_frames)
def test_hub_frames_round_trip_through_the_client_decoder(frame: frames.Frame) -> None:
    data = codec.encode(frame)
    decoded = CLIENT.decode(data)
    assert type(decoded) is type(frame)
    assert decoded == frame
    assert codec.encode(decoded) == data


def test_fields_at_their_default_are_omitted_and_explicit_defaults_decode_the_same() -> None:
    assert msgspec.msgpack.decode(codec.encode(frames.Ping(ts=5))) == {"t": "ping", "ts": 5}
    explicit = m("t", "sub", "id", 1, "topic", "catalog", "cursor", None)
    assert HUB.decode(explicit) == frames.Subscribe(id=1, topic="catalog")
    assert HUB.decode(m("t", "op", "seq", 1, "kind", "k", "args", {}, "hlc", 0, "ts", 0, "ctx", None)) == (
        frames.Op(seq=1, kind="k", args={})
    )


def test_unknown_keys_and_a_tag_that_is_not_first_are_accepted() -> None:
    data = m("ts", 7, "future_field", {"a": [1, 2]}, "t", "ping")
    assert HUB.decode(data) == frames.Ping(ts=7)


def test_extra_trailing_elements_of_a_cursor_are_ignored() -> None:
    data = m("t", "sub", "id", 1, "topic", "catalog", "cursor", ["e1", 3, "later"])
    assert HUB.decode(data) == frames.Subscribe(id=1, topic="catalog", cursor=frames.Cursor("e1", 3))


def test_fields_at_their_bounds_round_trip() -> None:
    hello = frames.Hello(versions=[2**32 - 1] * 16, token="x" * 8192, client_id="c" * 64, agent="é" * 128)
    assert HUB.decode(codec.encode(hello)) == hello
    op = frames.Op(seq=2**53 - 1, kind="k" * 64, args={}, ctx={f"c{i}": 2**53 - 1 for i in range(256)})
    assert HUB.decode(codec.encode(op)) == op
    batch = frames.OpBatch(ops=[frames.Op(seq=i + 1, kind="cart.add", args={}) for i in range(1024)])
    assert HUB.decode(codec.encode(batch)) == batch


def test_non_minimal_encodings_are_accepted() -> None:
    """Receivers accept every MessagePack width, not only the one msgspec would choose."""
    for head in (b"\xde\x00\x02", b"\xdf\x00\x00\x00\x02"):  # map16 / map32 as the frame's own map
        assert HUB.decode(head + p("t") + p("ping") + p("ts") + b"\xcf" + (9).to_bytes(8, "big")) == (
            frames.Ping(ts=9)
        )
    wide = [
        b"\xd9\x03abc",  # str8
        b"\xda\x00\x03abc",  # str16
        b"\xdb\x00\x00\x00\x03abc",  # str32
        b"\xc4\x01\x00",  # bin8
        b"\xc5\x00\x01\x00",  # bin16
        b"\xc6\x00\x00\x00\x01\x00",  # bin32
        b"\xdc\x00\x01\xc0",  # array16
        b"\xdd\x00\x00\x00\x01\xc2",  # array32
        b"\xde\x00\x01\xa1k\xc3",  # map16
        b"\xdf\x00\x00\x00\x01\xa1k\xff",  # map32
        b"\xca" + struct.pack(">f", 1.5),  # float32
        b"\xcb" + struct.pack(">d", -2.5),  # float64
        b"\xcc\xff",  # uint8
        b"\xcd\xff\xff",  # uint16
        b"\xce\xff\xff\xff\xff",  # uint32
        b"\xcf" + b"\xff" * 8,  # uint64
        b"\xd0\x80",  # int8
        b"\xd1\x80\x00",  # int16
        b"\xd2\x80\x00\x00\x00",  # int32
        b"\xd3\x80" + b"\x00" * 7,  # int64
    ]
    for raw in wide:
        assert HUB.decode(ping_with(raw)) == frames.Ping(ts=1)
    args = b"\x81\xa1v\x9f" + b"".join(wide[:15])  # the same values, kept in an op's open args
    decoded = HUB.decode(op_with(args))
    assert isinstance(decoded, frames.Op)
    assert decoded.args["v"][:3] == ["abc", "abc", "abc"]


# --- decoder robustness ------------------------------------------------------------------------------------

INTERESTING = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC4, 0xC7, 0xCB, 0xCF, 0xD4]
INTERESTING += [0xD9, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF]
byte_values = st.sampled_from(INTERESTING) | st.integers(0, 255)


@FAST
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xc1")
@example(b"\x81\xc1\xc1")
def test_random_bytes_decode_or_raise_protocol_error_only(data: bytes) -> None:
    decode_or_refuse(HUB, frames.CLIENT_FRAMES, data)
    decode_or_refuse(CLIENT, frames.SERVER_FRAMES, data)


@FAST
@given(st.sampled_from([0x81, 0x82, 0x83, 0x84, 0x8F, 0xDE, 0xDF]), st.lists(byte_values, max_size=96))
def test_random_bytes_behind_a_map_header_decode_or_raise_protocol_error_only(
    head: int, tail: list[int]
) -> None:
    data = bytes([head, *tail])
    decode_or_refuse(HUB, frames.CLIENT_FRAMES, data)
    decode_or_refuse(CLIENT, frames.SERVER_FRAMES, data)


@st.composite
def mutated(draw: st.DrawFn, frame_strategy: st.SearchStrategy[frames.Frame]) -> bytes:
    """A valid frame's bytes with one to three byte flips, replacements, insertions, deletions or a cut."""
    data = bytearray(codec.encode(draw(frame_strategy)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "replace", "insert", "delete", "cut"]))
        i = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[i:i] = bytes(draw(st.lists(byte_values, min_size=1, max_size=5)))
        elif kind == "cut":
            del data[i:]
        elif i < len(data):
            if kind == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif kind == "replace":
                data[i] = draw(byte_values)
            else:
                del data[i : i + draw(st.integers(1, 4))]
    return bytes(data)


@FAST
@given(mutated(strategies.client_frames))
def test_mutated_client_frames_decode_or_raise_protocol_error_only(data: bytes) -> None:
    decode_or_refuse(HUB, frames.CLIENT_FRAMES, data)


@FAST
@given(mutated(strategies.server_frames))
def test_mutated_hub_frames_decode_or_raise_protocol_error_only(data: bytes) -> None:
    decode_or_refuse(CLIENT, frames.SERVER_FRAMES, data)


def walk_first(decoder: codec.FrameDecoder, data: bytes) -> frames.Frame:
    """What decoding answers by the letter of §4.1: the structural walk, then msgspec (no quick path)."""
    codec.check_structure(data, decoder.limits)
    return decoder._decoder.decode(data)  # type: ignore[no-any-return]


def answer(decode: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "frame", codec.encode(decode(data))
    except ProtocolError as exc:
        return "refused", exc.code
    except msgspec.MsgspecError:
        return "refused", "msgspec"


@FAST
@given(mutated(strategies.client_frames))
@example(codec.encode(frames.Op(seq=1, kind="k", args={"a": 1})) + b"\xc0")  # trailing byte
@example(codec.encode(frames.Op(seq=1, kind="k", args={"a": [[[[[[[[1]]]]]]]]})))  # too deep
def test_a_short_op_frame_is_answered_as_the_walk_would(data: bytes) -> None:
    """The quick path (an ``op``/``ops`` frame of scalars decoded without the walk) never accepts what the
    walk refuses: whatever it accepts, the walk-first decode accepts as the same frame."""
    quick = HUB._quick(data) if len(data) <= HUB._quick_max else None
    if quick is not None:
        assert answer(lambda d: walk_first(HUB, d), data) == ("frame", codec.encode(quick))
        assert codec.encode(quick) == data


# --- every refusal, by hand --------------------------------------------------------------------------------

TINY = codec.Limits(max_frame=64, max_depth=3, max_len=2, max_str=4, max_items=3)
TINY_HUB = codec.FrameDecoder(frames.CLIENT_FRAMES, TINY)
VALID_OP = m("t", "op", "seq", 1, "kind", "k", "args", {})

REFUSALS: list[tuple[str, codec.FrameDecoder, bytes, ErrorCode]] = [
    # size
    ("larger than max_frame", HUB, ping_with(b"\xc5\xff\xf0" + b"\x00" * 0xFFF0), ErrorCode.FRAME_TOO_LARGE),
    (
        "larger than the client's max_frame",
        CLIENT,
        ping_with(b"\xc6" + (2**20).to_bytes(4, "big")) + bytes(2**20),
        ErrorCode.FRAME_TOO_LARGE,
    ),
    ("empty", HUB, b"", ErrorCode.MALFORMED),
    # not a map
    ("fixarray at the top", HUB, b"\x91\xa1t", ErrorCode.BAD_FRAME),
    ("array16 at the top", HUB, b"\xdc\x00\x00", ErrorCode.BAD_FRAME),
    ("string at the top", HUB, p("ping"), ErrorCode.BAD_FRAME),
    ("integer at the top", HUB, b"\x01", ErrorCode.BAD_FRAME),
    ("nil at the top", HUB, b"\xc0", ErrorCode.BAD_FRAME),
    # not even one complete value: malformed before "not a map" (the first violation in byte order wins)
    ("reserved byte at the top", HUB, b"\xc1", ErrorCode.MALFORMED),
    ("truncated array at the top", HUB, b"\x92\x01", ErrorCode.MALFORMED),
    ("array at the top with trailing bytes", HUB, b"\x91\x01\x02", ErrorCode.MALFORMED),
    # truncation and trailing bytes
    ("map declares more entries than bytes left", HUB, b"\x82\xa1t", ErrorCode.MALFORMED),
    ("a value is missing at the end", HUB, b"\x81\xcd\x00\x01", ErrorCode.MALFORMED),
    ("length field cut", HUB, b"\x81\xa1t\xda\x00", ErrorCode.MALFORMED),
    ("string shorter than declared", HUB, b"\x81\xa1t\xa5ping", ErrorCode.MALFORMED),
    ("str8 shorter than declared", HUB, b"\x81\xa1t\xd9\x05ping", ErrorCode.MALFORMED),
    ("scalar cut", HUB, b"\x81\xa1t\xcb\x00\x00", ErrorCode.MALFORMED),
    ("trailing bytes", HUB, m("t", "ping", "ts", 1) + b"\x00", ErrorCode.MALFORMED),
    ("two frames in one message", HUB, m("t", "ping", "ts", 1) * 2, ErrorCode.MALFORMED),
    # bytes MessagePack reserves, extensions
    ("reserved byte 0xc1", HUB, ping_with(b"\xc1"), ErrorCode.MALFORMED),
    ("fixext1", HUB, ping_with(b"\xd4\x01\x00"), ErrorCode.BAD_FRAME),
    ("fixext2", HUB, ping_with(b"\xd5\x01" + bytes(2)), ErrorCode.BAD_FRAME),
    ("fixext4", HUB, ping_with(b"\xd6\x01" + bytes(4)), ErrorCode.BAD_FRAME),
    ("fixext8", HUB, ping_with(b"\xd7\x01" + bytes(8)), ErrorCode.BAD_FRAME),
    ("fixext16", HUB, ping_with(b"\xd8\x01" + bytes(16)), ErrorCode.BAD_FRAME),
    ("ext8", HUB, ping_with(b"\xc7\x01\x01\x00"), ErrorCode.BAD_FRAME),
    ("ext16", HUB, ping_with(b"\xc8\x00\x01\x01\x00"), ErrorCode.BAD_FRAME),
    ("ext32", HUB, ping_with(b"\xc9\x00\x00\x00\x01\x01\x00"), ErrorCode.BAD_FRAME),
    ("timestamp extension (-1)", HUB, ping_with(b"\xd6\xff" + bytes(4)), ErrorCode.BAD_FRAME),
    # lengths
    ("fixstr longer than max_str", TINY_HUB, b"\x81\xa1t\xa5abcde", ErrorCode.TOO_LONG),
    ("str8 longer than max_str", TINY_HUB, b"\x81\xa1t\xd9\x05abcde", ErrorCode.TOO_LONG),
    ("bin8 longer than max_str", TINY_HUB, b"\x81\xa1t\xc4\x05abcde", ErrorCode.TOO_LONG),
    ("str16 longer than max_str", HUB, ping_with(b"\xda\x20\x01" + bytes(8193)), ErrorCode.TOO_LONG),
    ("bin16 longer than max_str", HUB, ping_with(b"\xc5\x20\x01" + bytes(8193)), ErrorCode.TOO_LONG),
    ("str32 declaring 4 GiB", HUB, ping_with(b"\xdb\xff\xff\xff\xff"), ErrorCode.TOO_LONG),
    ("bin32 declaring 4 GiB", HUB, ping_with(b"\xc6\xff\xff\xff\xff"), ErrorCode.TOO_LONG),
    ("fixarray longer than max_len", TINY_HUB, b"\x81\xa1t\x93\x01\x02\x03", ErrorCode.TOO_LONG),
    ("fixmap longer than max_len", TINY_HUB, b"\x83\xa1a\x01\xa1b\x02\xa1c\x03", ErrorCode.TOO_LONG),
    ("array16 of 1025", HUB, ping_with(b"\xdc\x04\x01" + bytes(1025)), ErrorCode.TOO_LONG),
    ("array32 declaring 2**32-1", HUB, ping_with(b"\xdd\xff\xff\xff\xff"), ErrorCode.TOO_LONG),
    ("map16 of 1025", HUB, ping_with(b"\xde\x04\x01" + bytes(2050)), ErrorCode.TOO_LONG),
    ("map32 declaring 2**32-1", HUB, ping_with(b"\xdf\xff\xff\xff\xff"), ErrorCode.TOO_LONG),
    ("frame map32 declaring 2**32-1", HUB, b"\xdf\xff\xff\xff\xff" + p("t"), ErrorCode.TOO_LONG),
    ("more entries in total than max_items", TINY_HUB, b"\x82\xa1a\x91\x01\xa1b\x91\x02", ErrorCode.TOO_LONG),
    (
        "17 arrays of 1000: more than 16384 entries",
        HUB,
        op_with(b"\x81\xa1a\xdc\x00\x11" + (b"\xdc\x03\xe8" + bytes(1000)) * 17),
        ErrorCode.TOO_LONG,
    ),
    # nesting
    ("nested one level too deep", TINY_HUB, b"\x81\xa1a\x91\x91\x91\x01", ErrorCode.TOO_DEEP),
    ("9 levels", HUB, nested(9), ErrorCode.TOO_DEEP),
    ("10,000 levels of arrays", HUB, op_with(b"\x91" * 10_000 + b"\x80"), ErrorCode.TOO_DEEP),
    # frame level
    ("no tag", HUB, m("ts", 1), ErrorCode.BAD_FRAME),
    ("tag is not a string", HUB, m("t", 1, "ts", 1), ErrorCode.BAD_FRAME),
    ("tag is nil", HUB, m("t", None, "ts", 1), ErrorCode.BAD_FRAME),
    ("unknown tag", HUB, m("t", "nope"), ErrorCode.UNKNOWN_FRAME),
    ("hub-only tag sent to a hub", HUB, m("t", "welcome"), ErrorCode.UNKNOWN_FRAME),
    ("client-only tag sent to a client", CLIENT, VALID_OP, ErrorCode.UNKNOWN_FRAME),
    (
        "hello sent to a client",
        CLIENT,
        m("t", "hello", "versions", [1], "token", "", "client_id", "c"),
        ErrorCode.UNKNOWN_FRAME,
    ),
    # fields
    ("missing required field", HUB, m("t", "op", "seq", 1, "kind", "k"), ErrorCode.BAD_FRAME),
    (
        "string where an int is due",
        HUB,
        m("t", "op", "seq", "1", "kind", "k", "args", {}),
        ErrorCode.BAD_FRAME,
    ),
    (
        "bool where an int is due",
        HUB,
        m("t", "op", "seq", True, "kind", "k", "args", {}),
        ErrorCode.BAD_FRAME,
    ),
    ("float where an int is due", HUB, m("t", "ping", "ts", 1.0), ErrorCode.BAD_FRAME),
    ("nil for a field that is not optional", HUB, m("t", "ping", "ts", None), ErrorCode.BAD_FRAME),
    ("seq 0", HUB, m("t", "op", "seq", 0, "kind", "k", "args", {}), ErrorCode.BAD_FRAME),
    ("seq 2**53", HUB, m("t", "op", "seq", 2**53, "kind", "k", "args", {}), ErrorCode.BAD_FRAME),
    ("negative time", HUB, m("t", "ping", "ts", -1), ErrorCode.BAD_FRAME),
    ("uint64 time", HUB, m("t", "ping", "ts", 2**64 - 1), ErrorCode.BAD_FRAME),
    (
        "client_id with a space",
        HUB,
        m("t", "hello", "versions", [1], "token", "", "client_id", "a b"),
        ErrorCode.BAD_FRAME,
    ),
    (
        "client_id of 65",
        HUB,
        m("t", "hello", "versions", [1], "token", "", "client_id", "c" * 65),
        ErrorCode.BAD_FRAME,
    ),
    (
        "no versions offered",
        HUB,
        m("t", "hello", "versions", [], "token", "", "client_id", "c"),
        ErrorCode.BAD_FRAME,
    ),
    (
        "agent of 129 code points",
        HUB,
        m("t", "hello", "versions", [1], "token", "", "client_id", "c", "agent", "é" * 129),
        ErrorCode.BAD_FRAME,
    ),
    ("topic of 2", HUB, m("t", "unsub", "topic", "ab"), ErrorCode.BAD_FRAME),
    (
        "cursor of one element",
        HUB,
        m("t", "sub", "id", 1, "topic", "catalog", "cursor", ["e"]),
        ErrorCode.BAD_FRAME,
    ),
    ("empty batch", HUB, m("t", "ops", "ops", []), ErrorCode.BAD_FRAME),
    (
        "batch of 1025 is too long before it is a bad batch",
        HUB,
        m("t", "ops", "ops", [{}] * 1025),
        ErrorCode.TOO_LONG,
    ),
    ("a ping inside a batch", HUB, m("t", "ops", "ops", [{"t": "ping", "ts": 1}]), ErrorCode.BAD_FRAME),
    (
        "a batch element without its tag",
        HUB,
        m(
            "t",
            "ops",
            "ops",
            [{"t": "op", "seq": 1, "kind": "k", "args": {}}, {"seq": 2, "kind": "k", "args": {}}],
        ),
        ErrorCode.BAD_FRAME,
    ),
    (
        "version vector of 257",
        HUB,
        m("t", "op", "seq", 1, "kind", "k", "args", {}, "ctx", {f"c{i}": 1 for i in range(257)}),
        ErrorCode.BAD_FRAME,
    ),
    ("args is not a map", HUB, m("t", "op", "seq", 1, "kind", "k", "args", []), ErrorCode.BAD_FRAME),
    ("args with a non-string key", HUB, op_with(b"\x81\x01\x01"), ErrorCode.BAD_FRAME),
    ("stats value not a number", HUB, m("t", "ping", "ts", 1, "stats", {"a": "x"}), ErrorCode.BAD_FRAME),
    # invalid UTF-8 and undecodable values
    ("invalid UTF-8 in the tag", HUB, b"\x81\xa1t\xa2\xff\xfe", ErrorCode.MALFORMED),
    ("invalid UTF-8 in a known key", HUB, m("t", "ping", Raw(b"\xa2\xff\xfe"), 1), ErrorCode.MALFORMED),
    (
        "invalid UTF-8 in a field",
        HUB,
        m("t", "op", "seq", 1, "kind", Raw(b"\xa2\xff\xfe"), "args", {}),
        ErrorCode.MALFORMED,
    ),
    ("invalid UTF-8 inside args", HUB, op_with(b"\x81\xa1a\xa1\xff"), ErrorCode.MALFORMED),
    (
        "ill-typed field before invalid UTF-8",
        HUB,
        m("t", "op", "seq", "x", "kind", Raw(b"\xa2\xff\xfe"), "args", {}),
        ErrorCode.MALFORMED,
    ),
    ("a map as a map key inside args", HUB, op_with(b"\x81\xa1a\x81\x80\x01"), ErrorCode.MALFORMED),
    ("a map as a key of the frame", HUB, b"\x81\x80\x01", ErrorCode.MALFORMED),
    # an unknown key's value is skipped by type, never by structure (PROTOCOL.md §3, §4.1)
    ("invalid UTF-8 under an unknown key", HUB, ping_with(b"\xa2\xff\xfe"), ErrorCode.MALFORMED),
    ("invalid UTF-8 in a key under an unknown key", HUB, ping_with(b"\x81\xa1\xff\x01"), ErrorCode.MALFORMED),
    ("an array as a map key under an unknown key", HUB, ping_with(b"\x81\x90\x01"), ErrorCode.MALFORMED),
    # precedence: structure before text, the first violation in byte order decides (PROTOCOL.md §4.1)
    (
        "a string over max_str after invalid UTF-8",
        HUB,
        ping_with(b"\x92\xa1\xff\xdb\xff\xff\xff\xff"),
        ErrorCode.TOO_LONG,
    ),
    (
        "ext before a too-long string",
        HUB,
        ping_with(b"\x92\xd4\x01\x00\xdb\xff\xff\xff\xff"),
        ErrorCode.BAD_FRAME,
    ),
    (
        "too-long string before an ext",
        HUB,
        ping_with(b"\x92\xdb\xff\xff\xff\xff\xd4\x01\x00"),
        ErrorCode.TOO_LONG,
    ),
    (
        "reserved byte before a too-deep value",
        HUB,
        op_with(b"\x82\xa1a\xc1\xa1b" + b"\x91" * 9 + b"\x01"),
        ErrorCode.MALFORMED,
    ),
    (
        "too long before too deep at one header",
        TINY_HUB,
        b"\x81\xa1a\x91\x91\x93\x01\x02\x03",
        ErrorCode.TOO_LONG,
    ),
    ("too deep before truncated at one header", TINY_HUB, b"\x81\xa1a\x91\x91\x91", ErrorCode.TOO_DEEP),
    ("truncated before too many entries at one header", TINY_HUB, b"\x82\xa1a\x92\x01", ErrorCode.MALFORMED),
    (
        "invalid UTF-8 anywhere before an ill-typed field",
        HUB,
        m("t", "ping", "ts", "x", "y", Raw(b"\xa1\xff")),
        ErrorCode.MALFORMED,
    ),
    ("unknown tag with an ill-typed field", HUB, m("t", "nope", "ts", "x"), ErrorCode.UNKNOWN_FRAME),
]


@pytest.mark.parametrize(
    ("decoder", "data", "code"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
def test_decoder_refuses_with_the_right_code(
    decoder: codec.FrameDecoder, data: bytes, code: ErrorCode
) -> None:
    assert refuse(decoder, data).code is code


def test_refusals_cover_every_code_decoding_can_produce() -> None:
    assert {case[3] for case in REFUSALS} == DECODE_CODES


@pytest.mark.parametrize(
    ("code", "close"),
    [
        (ErrorCode.FRAME_TOO_LARGE, CloseCode.MESSAGE_TOO_BIG),
        (ErrorCode.MALFORMED, CloseCode.INVALID_PAYLOAD),
        (ErrorCode.TOO_DEEP, CloseCode.PROTOCOL_ERROR),
        (ErrorCode.TOO_LONG, CloseCode.PROTOCOL_ERROR),
        (ErrorCode.BAD_FRAME, CloseCode.PROTOCOL_ERROR),
        (ErrorCode.UNKNOWN_FRAME, None),  # answered with an err frame; the connection stays open
    ],
)
def test_each_refusal_carries_the_close_code_a_hub_uses(code: ErrorCode, close: CloseCode | None) -> None:
    data = next(case[2] for case in REFUSALS if case[3] is code and case[1] is HUB)
    assert refuse(HUB, data).close_code is close


# --- limits are inclusive ----------------------------------------------------------------------------------


def exact_frame(size: int) -> bytes:
    """A valid ``ping`` of exactly ``size`` bytes: eight bin16 values under an unknown key."""
    head = m("t", "ping", "ts", 1, "x", Raw(b"\x98"))
    left = size - len(head) - 8 * 3
    sizes = [left // 8 + (1 if i < left % 8 else 0) for i in range(8)]
    return head + b"".join(b"\xc5" + n.to_bytes(2, "big") + bytes(n) for n in sizes)


def test_a_frame_of_exactly_max_frame_bytes_is_accepted_one_more_byte_is_not() -> None:
    data = exact_frame(codec.SERVER_LIMITS.max_frame)
    assert len(data) == codec.SERVER_LIMITS.max_frame
    assert HUB.decode(data) == frames.Ping(ts=1)
    assert refuse(HUB, exact_frame(codec.SERVER_LIMITS.max_frame + 1)).code is ErrorCode.FRAME_TOO_LARGE


def test_strings_and_containers_at_their_limit_are_accepted() -> None:
    limits = codec.SERVER_LIMITS
    codec.check_structure(
        ping_with(b"\xda" + limits.max_str.to_bytes(2, "big") + b"a" * limits.max_str), limits
    )
    codec.check_structure(
        ping_with(b"\xdc" + limits.max_len.to_bytes(2, "big") + bytes(limits.max_len)), limits
    )
    codec.check_structure(b"\x82\xa1a\x01\xa1b\x91\x01", TINY)  # 3 entries in total = max_items


def test_max_items_counts_the_entries_of_every_map_and_array_the_frames_own_map_included() -> None:
    """A map entry (key and value) counts one, an array element one; scalars and strings count nothing by
    themselves. Here: 4 entries of the frame, 1 of args, 17 elements of the outer array, 16,362 inside."""
    inner = (b"\xdc\x03\xe8" + bytes(1000)) * 16 + b"\xdc\x01\x6a" + bytes(362)
    exact = op_with(b"\x81\xa1a\xdc\x00\x11" + inner)
    assert codec.SERVER_LIMITS.max_items == 4 + 1 + 17 + 16 * 1000 + 362
    assert isinstance(HUB.decode(exact), frames.Op)
    one_more = op_with(b"\x82\xa1b\x01\xa1a\xdc\x00\x11" + inner)  # one more entry in args
    assert refuse(HUB, one_more).code is ErrorCode.TOO_LONG


def test_an_unknown_keys_binary_value_is_not_checked_for_utf8() -> None:
    assert HUB.decode(ping_with(b"\xc4\x02\xff\xfe")) == frames.Ping(ts=1)
    assert HUB.decode(ping_with(b"\xa2\xc3\xa9")) == frames.Ping(ts=1)  # valid UTF-8 ("é") passes


def test_an_integer_is_accepted_where_a_float_is_due() -> None:
    """A JavaScript sender cannot tell 3.0 from 3 and encodes it as an integer (PROTOCOL.md §3)."""
    ping = HUB.decode(m("t", "ping", "ts", 1, "stats", {"outbox": 3, "age": 2**53 - 1, "neg": -5}))
    assert isinstance(ping, frames.Ping) and ping.stats == {"outbox": 3.0, "age": 2.0**53 - 1, "neg": -5.0}
    assert all(type(v) is float for v in ping.stats.values())


def test_a_batch_of_tagged_ops_decodes_to_ops() -> None:
    data = m("t", "ops", "ops", [{"t": "op", "seq": 1, "kind": "k", "args": {}}])
    assert HUB.decode(data) == frames.OpBatch(ops=[frames.Op(seq=1, kind="k", args={})])


def test_nesting_below_the_limit_is_accepted() -> None:
    codec.check_structure(nested(codec.SERVER_LIMITS.max_depth - 1), codec.SERVER_LIMITS)


def test_nesting_at_the_limit_is_accepted() -> None:
    codec.check_structure(nested(codec.SERVER_LIMITS.max_depth), codec.SERVER_LIMITS)


def test_a_client_id_with_a_trailing_newline_is_refused() -> None:
    data = m("t", "hello", "versions", [1], "token", "", "client_id", "c1\n")
    assert refuse(HUB, data).code is ErrorCode.BAD_FRAME


def test_a_decoder_of_one_kind_still_requires_the_tag() -> None:
    assert refuse(codec.FrameDecoder([frames.Ping]), m("ts", 1)).code is ErrorCode.BAD_FRAME


def test_a_decoder_of_one_kind_refuses_other_tags() -> None:
    decoder = codec.FrameDecoder([frames.Hello])
    assert refuse(decoder, m("t", "ping", "ts", 1)).code is ErrorCode.UNKNOWN_FRAME


# --- hostile frames: refused in memory that does not depend on what they claim -----------------------------

MEMORY_BOUND = 256 * 1024


def peak_memory_refusing(decoder: codec.FrameDecoder, data: bytes) -> tuple[ErrorCode, int]:
    """The code a frame is refused with and the peak memory traced while refusing it (``data`` excluded)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            decoder.decode(data)
        except ProtocolError as err:
            code = err.code
        else:
            pytest.fail("the hostile frame was accepted")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return code, peak


def empty_maps(size: int, per_array: int) -> bytes:
    """``{"t": "op", "args": {"a": [[{}, {}, …], …]}}``: up to 1024 arrays of ``per_array`` empty maps.

    Each container is within ``max_len`` and the nesting is shallow: only the total entry count is hostile.
    """
    inner = b"\xdc" + per_array.to_bytes(2, "big") + b"\x80" * per_array
    head = m("t", "op", "args", Raw(b"\x81\xa1a\xdc"))
    count = min(1024, (size - len(head) - 2) // len(inner))
    return head + count.to_bytes(2, "big") + inner * count


HOSTILE = [
    ("frame map declaring 2**32-1 entries", HUB, b"\xdf\xff\xff\xff\xff" + bytes(64), ErrorCode.TOO_LONG),
    ("array declaring 2**32-1 elements", HUB, op_with(b"\x81\xa1a\xdd\xff\xff\xff\xff"), ErrorCode.TOO_LONG),
    ("to a client: map declaring 2**32-1", CLIENT, ping_with(b"\xdf\xff\xff\xff\xff"), ErrorCode.TOO_LONG),
    ("string declaring 4 GiB", HUB, ping_with(b"\xdb\xff\xff\xff\xff" + bytes(64)), ErrorCode.TOO_LONG),
    ("binary declaring 4 GiB", CLIENT, ping_with(b"\xc6\xff\xff\xff\xff" + bytes(64)), ErrorCode.TOO_LONG),
    ("10,000 nested maps", HUB, nested(10_000), ErrorCode.TOO_DEEP),
    ("10,000 nested arrays", CLIENT, ping_with(b"\x91" * 9_999 + b"\x80"), ErrorCode.TOO_DEEP),
    ("64 KiB of empty maps", HUB, empty_maps(codec.SERVER_LIMITS.max_frame, 60), ErrorCode.TOO_LONG),
]


@pytest.mark.parametrize(("decoder", "data", "code"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_frames_are_refused_in_bounded_memory(
    decoder: codec.FrameDecoder, data: bytes, code: ErrorCode
) -> None:
    assert len(data) <= decoder.limits.max_frame
    refused, peak = peak_memory_refusing(decoder, data)
    assert refused is code
    assert peak < MEMORY_BOUND, f"{peak} bytes traced while refusing a {len(data)}-byte frame"


def test_a_megabyte_of_empty_maps_to_a_client_is_refused_by_the_total_count() -> None:
    data = empty_maps(codec.CLIENT_LIMITS.max_frame, 1000)
    assert len(data) <= codec.CLIENT_LIMITS.max_frame
    err = refuse(CLIENT, data)
    assert err.code is ErrorCode.TOO_LONG
    assert "entries in one frame" in err.message


def test_the_memory_bound_is_meaningful_an_unchecked_decode_of_the_same_frame_inflates() -> None:
    """Control: without the structure check, 64 KiB of empty maps becomes megabytes (docs/traps.md §12)."""
    data = empty_maps(codec.SERVER_LIMITS.max_frame, 60)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        value = msgspec.msgpack.decode(data)
        peak = tracemalloc.get_traced_memory()[1]
        del value
    finally:
        tracemalloc.stop()
    assert peak > 16 * MEMORY_BOUND


# --- runs of one-byte values (the walk steps over them in one match) -------------------------------------


def test_a_run_of_one_byte_values_ends_with_its_container() -> None:
    # [1, 2, 3, 4, 5] then the map goes on: the run must not swallow the next key (a fixint too) as if it
    # were a sixth element, nor stop short (then the map would be left unfinished: "truncated").
    assert HUB.decode(ping_with(b"\x95\x01\x02\x03\x04\x05")) == frames.Ping(ts=1)
    frame = m("t", "ping", "x", Raw(b"\x95\x01\xc0\xc2\xc3\xff"), "ts", 1)
    assert HUB.decode(frame) == frames.Ping(ts=1)
    codec.check_structure(b"\x82\x01\x02\x03\x94\x01\x02\x03\x04", codec.SERVER_LIMITS)  # {1: 2, 3: [1..4]}
    # {"x": [1, 2, 3, 4, 5], 7: 8, "t": "ping", "ts": 1}: one-byte values on both sides of the array's end.
    codec.check_structure(
        b"\x84\xa1x\x95\x01\x02\x03\x04\x05\x07\x08\xa1t\xa4ping\xa2ts\x01", codec.SERVER_LIMITS
    )


def test_a_container_as_a_key_after_a_run_of_one_byte_keys_and_values_is_still_refused() -> None:
    # {1: 2, 3: 4, [0]: 5}: the run covers keys and values alike, and the array lands in a key's place.
    err = refuse(HUB, b"\x84\xa1t\xa4ping\x01\x02\x03\x04\x91\x00\x05")
    assert err.code is ErrorCode.MALFORMED
    assert "map key" in err.message


def test_a_run_of_one_byte_values_stops_at_a_reserved_byte_and_at_a_wider_value() -> None:
    assert refuse(HUB, ping_with(b"\x95\x01\x02\xc1\x04\x05")).code is ErrorCode.MALFORMED
    assert HUB.decode(ping_with(b"\x95\x01\x02\xcc\xff\x04\x05")) == frames.Ping(ts=1)
    long_string = ping_with(b"\x95\x01\x02\xd9\x09" + b"a" * 9 + b"\x04\x05")
    with pytest.raises(ProtocolError, match="string of 9 bytes") as info:
        codec.check_structure(long_string, codec.Limits(max_str=4))
    assert info.value.code is ErrorCode.TOO_LONG
    # An array that promises more one-byte values than there are bytes is truncated, not read past its end.
    assert refuse(HUB, ping_with(b"\x9f\x01\x02\x03")).code is ErrorCode.MALFORMED


def test_text_that_is_not_utf8_under_an_unknown_key_is_refused_after_a_large_valid_frame() -> None:
    pad = b"\xdc\x03\xe8" + bytes(1000)
    frame = m("t", "ping", "ts", 1, "pad", Raw(pad), "x", Raw(b"\xa2\xff\xfe"))
    err = refuse(HUB, frame)
    assert err.code is ErrorCode.MALFORMED
    assert "UTF-8" in err.message
