"""syncd's wire protocol, sans-I/O: frames, codec, version vectors, clocks, cart rules, error codes.

Shared by the hub (``syncd``) and the client SDK (``clients``). It imports only the standard library and its
codec (msgspec), never a socket, an event loop or a database: bytes in, events out. PROTOCOL.md is the spec.
"""

from protocol.codec import CLIENT_LIMITS, SERVER_LIMITS, FrameDecoder, Limits, encode
from protocol.errors import (
    BackendUnavailable,
    CloseCode,
    ConnectionClosed,
    ErrorCode,
    OpRejected,
    ProtocolError,
    SyncError,
)
from protocol.frames import PROTOCOL_VERSIONS

__all__ = [
    "CLIENT_LIMITS",
    "PROTOCOL_VERSIONS",
    "SERVER_LIMITS",
    "BackendUnavailable",
    "CloseCode",
    "ConnectionClosed",
    "ErrorCode",
    "FrameDecoder",
    "Limits",
    "OpRejected",
    "ProtocolError",
    "SyncError",
    "encode",
]
