"""The msgpack codec: frames to bytes and back, with hard limits enforced *while* decoding.

Decoding happens in two passes over one websocket message:

1. :func:`check_structure` walks the MessagePack bytes without building anything. It rejects a frame that is
   too large, nested too deep, declares a string/collection longer than its limit or than the bytes that are
   left, uses a reserved byte, an extension type or a container as a map key, has trailing bytes, or is not a
   map. A hostile frame is therefore refused after reading its headers, in memory that does not depend on what
   it claims (docs/traps.md §12). These checks cover every byte, under keys the receiver does not know too,
   and the first violation in byte order decides the code (PROTOCOL.md §4.1).
2. msgspec decodes the now-bounded bytes into the typed frame union, checking the type of every field and
   the UTF-8 of every string it reads; the strings it skips (unknown keys) are checked by a second walk
   when there are any, so that text that is not UTF-8 is refused wherever it is.

A device's common message — an ``op``/``ops`` frame of scalar arguments, no longer than the length limits —
skips the walk when msgspec decodes it and its encoding is exactly the message: the walk could refuse
nothing such a message holds (:meth:`FrameDecoder._quick`); anything else, and any message that fails,
takes the two passes.

Every failure leaves as one :class:`~protocol.errors.ProtocolError` carrying an
:class:`~protocol.errors.ErrorCode` (and the close code a server uses for it); nothing from the codec library
escapes.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from protocol import frames
from protocol.errors import ErrorCode, ProtocolError


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one decoded frame. Each is checked before the bytes it governs are read."""

    max_frame: int = 64 * 1024
    """Bytes in one frame (one websocket message)."""
    max_depth: int = 8
    """Nesting of maps and arrays; the frame's own map is depth 1."""
    max_len: int = 1024
    """Entries in one map or elements in one array."""
    max_str: int = 8192
    """Bytes in one string or binary value."""
    max_items: int = 16384
    """Map entries plus array elements in the whole frame: bounds the memory a small frame can inflate to."""


SERVER_LIMITS: Final = Limits()
"""What a hub accepts from a client."""
CLIENT_LIMITS: Final = Limits(max_frame=1024 * 1024, max_items=262144)
"""What a client accepts from a hub (snapshots may be large)."""

_encoder = msgspec.msgpack.Encoder()


def encode(frame: frames.Frame) -> bytes:
    """Encode one frame. Fields equal to their default are omitted (they decode back to the default)."""
    return _encoder.encode(frame)


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` (plain data: maps, lists, strings, integers, …) in MessagePack, shortest forms:
    the measure of the protocol's size bounds, e.g. a cart line's."""
    return len(_encoder.encode(value))


class _NeverSent(frames.Frame, tag="\x00", frozen=True):
    """A tag no peer sends; keeps every decoder a tagged union (see :class:`FrameDecoder`)."""


def shared_decoder(accept: tuple[type[frames.Frame], ...], limits: Limits) -> FrameDecoder:
    """One decoder per (frame set, limits), shared by every connection: a decoder holds no per-message
    state, and building msgspec's union decoder for each of thousands of connections costs memory."""
    return _shared_decoder(accept, limits)


class FrameDecoder:
    """Decodes the frames one side accepts (``frames.CLIENT_FRAMES`` on a hub), within ``limits``."""

    __slots__ = ("_decoder", "_quick_max", "_tags", "limits")

    def __init__(self, accept: Iterable[type[frames.Frame]], limits: Limits = SERVER_LIMITS) -> None:
        kinds = tuple(accept)
        self.limits = limits
        # A frame this short cannot hold a string, a container or a frame's worth of entries over the limits
        # (each needs at least one byte per byte or entry counted): see _quick.
        quick = min(limits.max_frame, limits.max_len, limits.max_str, limits.max_items)
        self._quick_max = quick if limits.max_depth >= _QUICK_DEPTH else 0
        self._tags = frozenset(k.__struct_config__.tag for k in kinds)
        # Always a union, even of one kind: msgspec treats the tag of a lone struct type as optional.
        union: Any = functools.reduce(operator.or_, kinds, _NeverSent)
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(union)

    def decode(self, data: bytes) -> frames.Frame:
        """One frame from one message, or :class:`ProtocolError`."""
        if len(data) <= self._quick_max:
            quick = self._quick(data)
            if quick is not None:
                return quick
        check_structure(data, self.limits)
        # What passed check_structure is one well-formed map msgspec can build (no reserved byte, no
        # extension, no container as a key). msgspec checks the UTF-8 of every string it reads, but skips
        # the values of unknown keys: the rule is "UTF-8 everywhere, before any field error" (§4.1), so the
        # text walk runs when a field is refused, and when the frame is not exactly what encoding it gives
        # (unknown keys, or a non-canonical encoding): never on the common path.
        try:
            frame: frames.Frame = self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            _check_text(data, self.limits)
            raise self._invalid(data, str(exc)) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # not UTF-8, in a string msgspec read
            raise ProtocolError(ErrorCode.MALFORMED, f"undecodable frame: {exc}") from None
        if _encoder.encode(frame) != data:
            _check_text(data, self.limits)
        return frame

    def _quick(self, data: bytes) -> frames.Frame | None:
        """The op frame of a device's common message, decoded without the structural walk, when that walk
        could not refuse it; ``None`` for anything else (then :meth:`decode` walks and decodes as always).

        The walk refuses nothing msgspec decodes into an ``op``/``ops`` frame whose encoding is exactly
        ``data`` (so every string was read, hence UTF-8, and nothing is reserved, truncated or trailing)
        and whose ``args`` hold only scalars (so no extension value, no container as a key, nesting at most
        :data:`_QUICK_DEPTH`), in a message no longer than the length, string and entry limits (a frame of
        ``n`` bytes holds at most ``n`` of each). Any other message, hostile ones included, takes the walk,
        which names the first violation in byte order as before; this decode costs them at most one more
        msgspec pass over a short message.
        """
        try:
            frame = self._decoder.decode(data)
        except Exception:  # the walk and the full decode name the fault
            return None
        if type(frame) is frames.Op:
            if not _scalars(frame.args):
                return None
        elif type(frame) is frames.OpBatch:
            if not all(_scalars(op.args) for op in frame.ops):
                return None
        else:
            return None
        return frame if _encoder.encode(frame) == data else None

    def _invalid(self, data: bytes, detail: str) -> ProtocolError:
        """Tell an unknown tag (answered with an error frame) from an ill-typed frame (closes)."""
        value = msgspec.msgpack.decode(data)  # bounded by check_structure, so safe to build
        tag = value.get("t")  # check_structure guarantees a map
        if isinstance(tag, str) and tag not in self._tags:
            return ProtocolError(ErrorCode.UNKNOWN_FRAME, f"unknown frame tag {tag[:32]!r}")
        return ProtocolError(ErrorCode.BAD_FRAME, detail)


_QUICK_DEPTH: Final = 4
"""Nesting of an ``ops`` frame whose ops' args hold scalars: frame, ops array, op, args."""
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _scalars(args: dict[str, Any]) -> bool:
    return all(type(value) in _SCALARS for value in args.values())


# --- structural pre-check ------------------------------------------------------------------------------

# What each first byte announces: (_KIND, argument). Built once; the walk below is one table lookup per value.
_SKIP, _STR, _STR_W, _BIN_W, _MAP, _MAP_W, _ARRAY, _ARRAY_W, _EXT, _RESERVED = range(10)


_FIXED: Final = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}


def _first_byte_table() -> tuple[tuple[int, int], ...]:
    table: list[tuple[int, int]] = []
    for b in range(256):
        if b <= 0x7F or b >= 0xE0:
            entry = (_SKIP, 0)  # positive / negative fixint
        elif b <= 0x8F:
            entry = (_MAP, b & 0x0F)
        elif b <= 0x9F:
            entry = (_ARRAY, b & 0x0F)
        elif b <= 0xBF:
            entry = (_STR, b & 0x1F)
        elif b in (0xC0, 0xC2, 0xC3):
            entry = (_SKIP, 0)  # nil, false, true
        elif b in _FIXED:
            entry = (_SKIP, _FIXED[b])  # float32/64, uint8-64, int8-64
        elif b in (0xD9, 0xDA, 0xDB):
            entry = (_STR_W, 1 << (b - 0xD9))  # str8/16/32: a length of 1, 2 or 4 bytes
        elif b in (0xC4, 0xC5, 0xC6):
            entry = (_BIN_W, 1 << (b - 0xC4))  # bin8/16/32: the same, and no UTF-8 to check
        elif b in (0xDC, 0xDD):
            entry = (_ARRAY_W, 2 if b == 0xDC else 4)
        elif b in (0xDE, 0xDF):
            entry = (_MAP_W, 2 if b == 0xDE else 4)
        elif b == 0xC1:
            entry = (_RESERVED, 0)  # the one byte MessagePack never uses
        else:
            entry = (_EXT, 0)  # 0xC7-0xC9, 0xD4-0xD8
        table.append(entry)
    return tuple(table)


_TABLE: Final = _first_byte_table()
_ONE_BYTE_VALUES: Final = re.compile(rb"[\x00-\x7f\xc0\xc2\xc3\xe0-\xff]*")
"""A run of values of one byte each (fixints, nil, false, true): nothing in them can break a limit, so the
walk steps over a run in one match instead of one turn of its loop per value — an array of 1,000 small
integers, the densest frame there is in values per byte, costs one call, not a thousand."""
_ONE_BYTE: Final = tuple(_ONE_BYTE_VALUES.fullmatch(bytes((b,))) is not None for b in range(256))
"""Whether a first byte is a whole value (the class of :data:`_ONE_BYTE_VALUES`), as a table lookup."""


def check_structure(data: bytes, limits: Limits, *, text: bool = False) -> None:
    """Validate that ``data`` is exactly one MessagePack map within ``limits``, without decoding it.

    Work is linear in the values present (one table lookup each; strings are skipped by their length), and
    memory is O(depth): a container's declared length is compared with the limits and with the bytes that
    remain before anything else is read. A length that runs past the end is found when the next read
    falls outside ``data``.

    The walk stops at the first violation in byte order, so every receiver names the same code for the
    same bytes (PROTOCOL.md §4.1): a lone ``0xc1`` is ``malformed`` (a reserved byte), not "not a map". At
    one container header the checks run in this order: a container used as a map key, ``max_len``,
    ``max_depth``, the bytes left, ``max_items``. Only a value that is complete and well formed can be
    refused for not being a map.

    ``text``: check that every string is UTF-8 too. :class:`FrameDecoder` asks for it only after a plain
    walk passed, and only when msgspec did not read every string itself (see there), so the UTF-8 check
    comes after every other structural one and costs nothing on the common path.
    """
    size = len(data)
    if size > limits.max_frame:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"{size} bytes > {limits.max_frame}")
    if size == 0:
        raise ProtocolError(ErrorCode.MALFORMED, "empty frame")
    max_depth, max_len, max_str = limits.max_depth, limits.max_len, limits.max_str
    items_left = limits.max_items
    table = _TABLE
    # Per open depth: values still to read × 2, plus 1 for a map. The root holds one value. In a map, a key
    # leaves an odd number of values to read, so ``entry & 3 == 3`` right after taking a value means "a key".
    pending = [2]
    pos = 0
    try:
        while pending:
            if pending[-1] < 2:
                pending.pop()
                continue
            pending[-1] -= 2
            kind, arg = table[data[pos]]
            pos += 1
            if kind == _SKIP:
                pos += arg
                if not arg and pending[-1] >= 4 and _ONE_BYTE[data[pos]]:
                    # A run of one-byte values, more than one left in this container: step over the run in
                    # one match (each value taken is 2 in `pending`; the map bit stays, so keys and values
                    # keep alternating).
                    end = _ONE_BYTE_VALUES.match(data, pos, pos + (pending[-1] >> 1)).end()  # type: ignore[union-attr]
                    pending[-1] -= (end - pos) * 2
                    pos = end
                continue
            if kind in (_STR, _STR_W, _BIN_W):
                if kind != _STR:
                    arg, pos = int.from_bytes(data[pos : pos + arg], "big"), pos + arg
                if arg > max_str:
                    raise ProtocolError(ErrorCode.TOO_LONG, f"string of {arg} bytes > {max_str}")
                if text and kind != _BIN_W:
                    _check_utf8(data, pos, arg)
                pos += arg
                continue
            if kind in (_MAP, _ARRAY):
                count = arg
            elif kind in (_MAP_W, _ARRAY_W):
                count, pos = int.from_bytes(data[pos : pos + arg], "big"), pos + arg
                if pos > size:
                    break  # the length itself was cut off
            elif kind == _EXT:
                raise ProtocolError(ErrorCode.BAD_FRAME, "extension types are not used by this protocol")
            else:
                raise ProtocolError(ErrorCode.MALFORMED, f"reserved byte 0x{data[pos - 1]:02x}")
            if pending[-1] & 3 == 3:
                raise ProtocolError(ErrorCode.MALFORMED, "a map or an array as a map key")
            if count > max_len:
                raise ProtocolError(ErrorCode.TOO_LONG, f"container of {count} entries > {max_len}")
            if len(pending) > max_depth:  # this container opens at depth len(pending)
                raise ProtocolError(ErrorCode.TOO_DEEP, f"nesting deeper than {max_depth}")
            is_map = kind in (_MAP, _MAP_W)
            values = count * 2 if is_map else count
            if values > size - pos:  # every value takes at least one byte
                break
            items_left -= count
            if items_left < 0:
                raise ProtocolError(ErrorCode.TOO_LONG, f"more than {limits.max_items} entries in one frame")
            pending.append(values * 2 + is_map)
    except IndexError:  # a read past the end: a length promised more bytes than there are
        raise ProtocolError(ErrorCode.MALFORMED, "truncated frame") from None
    if pending or pos > size:
        raise ProtocolError(ErrorCode.MALFORMED, "truncated frame")
    if pos != size:
        raise ProtocolError(ErrorCode.MALFORMED, f"{size - pos} trailing bytes")
    if table[data[0]][0] not in (_MAP, _MAP_W):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a frame is a map")


def _check_text(data: bytes, limits: Limits) -> None:
    """Refuse a frame (that passed :func:`check_structure`) with a string that is not UTF-8, naming the
    first one in byte order. msgspec's generic decode reads every string, in C, so a frame whose text is all
    UTF-8 — every frame but a hostile one — is let through at that cost, not a second walk in Python; the
    walk runs only to name the string that is not. The frame is bounded already, so building it is safe."""
    try:
        msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        check_structure(data, limits, text=True)


def _check_utf8(data: bytes, pos: int, length: int) -> None:
    try:
        data[pos : pos + length].decode()
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.MALFORMED, f"a string at byte {pos} is not UTF-8") from None


@functools.lru_cache(maxsize=32)
def _shared_decoder(accept: tuple[type[frames.Frame], ...], limits: Limits) -> FrameDecoder:
    return FrameDecoder(accept, limits)
