"""The msgpack codec: frames to bytes and back, with hard limits enforced *while* decoding.

Decoding happens in two passes over one websocket message:

1. :func:`check_structure` walks the MessagePack bytes without building anything. It rejects a frame that is
   too large, nested too deep, declares a string/collection longer than its limit or than the bytes that
   are left, uses a reserved byte or an extension type, or has trailing bytes. A hostile frame is therefore
   refused after reading its headers, in memory that does not depend on what it claims (PITFALLS 12).
2. msgspec decodes the now-bounded bytes into the typed frame union, checking the type of every field.

Every failure leaves as one :class:`~protocol.errors.ProtocolError` carrying an
:class:`~protocol.errors.ErrorCode` (and the close code a server uses for it); nothing from the codec library
escapes.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
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


class _NeverSent(frames.Frame, tag="\x00", frozen=True):
    """A tag no peer sends; keeps every decoder a tagged union (see :class:`FrameDecoder`)."""


class FrameDecoder:
    """Decodes the frames one side accepts (``frames.CLIENT_FRAMES`` on a hub), within ``limits``."""

    __slots__ = ("_decoder", "_tags", "limits")

    def __init__(self, accept: Iterable[type[frames.Frame]], limits: Limits = SERVER_LIMITS) -> None:
        kinds = tuple(accept)
        self.limits = limits
        self._tags = frozenset(k.__struct_config__.tag for k in kinds)
        # Always a union, even of one kind: msgspec treats the tag of a lone struct type as optional.
        union: Any = functools.reduce(operator.or_, kinds, _NeverSent)
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(union)

    def decode(self, data: bytes) -> frames.Frame:
        """One frame from one message, or :class:`ProtocolError`."""
        check_structure(data, self.limits)
        try:
            frame: frames.Frame = self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise self._invalid(data, str(exc)) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # a string that is not UTF-8
            raise ProtocolError(ErrorCode.MALFORMED, f"undecodable frame: {exc}") from None
        return frame

    def _invalid(self, data: bytes, detail: str) -> ProtocolError:
        """Tell an unknown tag (answered with an error frame) from an ill-typed frame (closes)."""
        try:
            value = msgspec.msgpack.decode(data)  # bounded by check_structure, so safe to build
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return ProtocolError(ErrorCode.MALFORMED, f"undecodable frame: {exc}")
        tag = value.get("t")  # check_structure guarantees a map
        if isinstance(tag, str) and tag not in self._tags:
            return ProtocolError(ErrorCode.UNKNOWN_FRAME, f"unknown frame tag {tag[:32]!r}")
        return ProtocolError(ErrorCode.BAD_FRAME, detail)


# --- structural pre-check ------------------------------------------------------------------------------

# Fixed-size scalars: type byte → bytes of payload that follow it.
_SCALAR: Final = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_SCALAR.update({0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8})
# Variable-size: type byte → width of the big-endian length that follows it.
_STR: Final = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}
_ARRAY: Final = {0xDC: 2, 0xDD: 4}
_MAP: Final = {0xDE: 2, 0xDF: 4}
_EXT: Final = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def check_structure(data: bytes, limits: Limits) -> None:
    """Validate that ``data`` is exactly one MessagePack map within ``limits``, without decoding it.

    Work is linear in the bytes actually present, and memory is O(depth): declared lengths are compared with
    the limits and with the bytes that remain before anything is skipped.
    """
    size = len(data)
    if size > limits.max_frame:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"{size} bytes > {limits.max_frame}")
    if size == 0:
        raise ProtocolError(ErrorCode.MALFORMED, "empty frame")
    first = data[0]
    if not (0x80 <= first <= 0x8F or first in _MAP):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a frame is a map")
    max_depth, max_len, max_str = limits.max_depth, limits.max_len, limits.max_str
    items_left = limits.max_items
    pending = [1]  # values still to read at each open depth; the root holds one value
    pos = 0
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= size:
            raise ProtocolError(ErrorCode.MALFORMED, "truncated frame")
        b = data[pos]
        pos += 1
        if b <= 0x7F or b >= 0xE0:  # positive / negative fixint
            continue
        if b <= 0x8F:  # fixmap
            count, per = b & 0x0F, 2
        elif b <= 0x9F:  # fixarray
            count, per = b & 0x0F, 1
        elif b <= 0xBF:  # fixstr
            pos = _skip(data, pos, b & 0x1F, max_str)
            continue
        elif b in _SCALAR:
            pos += _SCALAR[b]
            continue
        elif b in _STR:
            width = _STR[b]
            pos = _skip(data, pos + width, _length(data, pos, width), max_str)
            continue
        elif b in _ARRAY:
            width = _ARRAY[b]
            count, per = _length(data, pos, width), 1
            pos += width
        elif b in _MAP:
            width = _MAP[b]
            count, per = _length(data, pos, width), 2
            pos += width
        elif b in _EXT:
            raise ProtocolError(ErrorCode.BAD_FRAME, "extension types are not used by this protocol")
        else:  # 0xC1, the one byte MessagePack never uses
            raise ProtocolError(ErrorCode.MALFORMED, f"reserved byte 0x{b:02x}")
        # a container of `count` entries, each `per` values
        if count > max_len:
            raise ProtocolError(ErrorCode.TOO_LONG, f"container of {count} entries > {max_len}")
        if len(pending) > max_depth:  # opening a container at depth len(pending)
            raise ProtocolError(ErrorCode.TOO_DEEP, f"nesting deeper than {max_depth}")
        values = count * per
        if values > size - pos:  # every value takes at least one byte
            raise ProtocolError(ErrorCode.MALFORMED, "truncated frame")
        items_left -= count
        if items_left < 0:
            raise ProtocolError(ErrorCode.TOO_LONG, f"more than {limits.max_items} entries in one frame")
        pending.append(values)
    if pos > size:
        raise ProtocolError(ErrorCode.MALFORMED, "truncated frame")
    if pos != size:
        raise ProtocolError(ErrorCode.MALFORMED, f"{size - pos} trailing bytes")


def _length(data: bytes, pos: int, width: int) -> int:
    if pos + width > len(data):
        raise ProtocolError(ErrorCode.MALFORMED, "truncated frame")
    return int.from_bytes(data[pos : pos + width], "big")


def _skip(data: bytes, pos: int, length: int, max_str: int) -> int:
    if length > max_str:
        raise ProtocolError(ErrorCode.TOO_LONG, f"string of {length} bytes > {max_str}")
    end = pos + length
    if end > len(data):
        raise ProtocolError(ErrorCode.MALFORMED, "truncated frame")
    return end
