"""Error codes, close codes and the exception tree shared by hub and clients.

Every failure a peer can observe has exactly one *code*: a short, stable, lowercase string sent on the wire
(in an ``err`` frame or as the rejection reason of an ``ack``), or a websocket *close code*. Codes are part of
the protocol: they are never renamed or reused (PROTOCOL.md §Errors lists them with their meaning).

The exception tree follows the decisions a caller makes, not the causes::

    SyncError                      root of everything syncd raises on purpose
    ├── ProtocolError              the peer broke the protocol: close or report, never retry as is
    ├── ConnectionClosed           the connection ended; ``retryable`` says whether to reconnect
    ├── OpRejected                 the hub refused an op; ``code`` says why (a result, not a failure)
    └── BackendUnavailable         a dependency (Redis, SQLite) is down: retry later

The specific cause is the ``code`` attribute, so adding a cause never adds a class.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Codes carried by ``err`` frames and by rejected ``ack`` frames. Each member carries its meaning."""

    describe: str

    def __new__(cls, value: str, describe: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.describe = describe
        return member

    # -- frame level: the bytes or the frame structure are wrong ------------------------------------
    FRAME_TOO_LARGE = "frame_too_large", "The encoded frame exceeds the negotiated maximum frame size."
    MALFORMED = (
        "malformed",
        "The bytes are not one complete MessagePack value, or hold a reserved byte, text that is not "
        "UTF-8 or a container as a map key.",
    )
    TOO_DEEP = "too_deep", "Containers are nested deeper than the limit."
    TOO_LONG = "too_long", "A string, binary, array or map is longer than its limit."
    BAD_FRAME = (
        "bad_frame",
        "The value decoded but is not a valid frame: missing or ill-typed field, value out of range.",
    )
    UNKNOWN_FRAME = "unknown_frame", "The frame tag ``t`` is not one this protocol version defines."
    OUT_OF_ORDER = (
        "out_of_order",
        "The frame is valid but not allowed in the connection's current state (e.g. an op before ``hello``).",
    )
    UNSUPPORTED_VERSION = "unsupported_version", "No protocol version is supported by both peers."
    # -- request level: the frame is fine, the request is refused -------------------------------------
    UNKNOWN_OP = "unknown_op", "The op ``kind`` is not one the hub knows."
    BAD_ARGS = "bad_args", "The op's arguments are missing, of the wrong type or out of range."
    SEQ_GAP = "seq_gap", "The op's ``seq`` skips numbers: the hub has not applied ``seq - 1`` of that client."
    BATCH_TOO_LARGE = "batch_too_large", "An op batch holds more ops than the limit."
    UNKNOWN_TOPIC = "unknown_topic", "The topic name does not parse as one of the known topic kinds."
    UNSUPPORTED_TOPIC = (
        "unsupported_topic",
        "The topic kind is part of the protocol, but this hub does not serve it yet.",
    )
    NOT_PERMITTED = "not_permitted", "The token's scope does not cover this topic, member, store or op."
    TOO_MANY_SUBSCRIPTIONS = (
        "too_many_subscriptions",
        "The connection holds the maximum number of subscriptions.",
    )
    RATE_LIMITED = (
        "rate_limited",
        "The client sends ops faster than allowed; ``retry_after_ms`` says when to try again.",
    )
    # -- domain rejections: the op was understood and refused by a business rule ----------------------
    INSUFFICIENT_STOCK = "insufficient_stock", "Not enough available stock in the bucket the op draws from."
    QUOTA_EXCEEDED = "quota_exceeded", "The channel's quota of the shared pool is used up."
    PURCHASE_LIMIT_EXCEEDED = (
        "purchase_limit_exceeded",
        "The member already holds or bought as many units of the SKU as their purchase limit allows.",
    )
    ALLOTMENT_EXCEEDED = "allotment_exceeded", "The store's allotment holds fewer units than the sale."
    RESERVATION_EXPIRED = "reservation_expired", "The reservation expired before its commit; it was returned."
    UNKNOWN_RESERVATION = (
        "unknown_reservation",
        "No active reservation has this id (committed, released or never made).",
    )
    ALREADY_REDEEMED = "already_redeemed", "The coupon or hold was already used."
    LIMIT_EXCEEDED = "limit_exceeded", "A per-entity bound (lines per cart, …) would be exceeded."
    TOO_LARGE = (
        "too_large",
        "The op would make an entity (a cart line, a cart) larger in encoded bytes than its bound.",
    )
    INSUFFICIENT_POINTS = (
        "insufficient_points",
        "The member's balance (or the terminal's hold) does not cover the redemption.",
    )
    # -- hub side -----------------------------------------------------------------------------------
    UNAVAILABLE = "unavailable", "A backend the hub needs is unreachable; retry the same op (same seq) later."
    INTERNAL = "internal", "An unexpected hub fault; the op's outcome is unknown, retry it with the same seq."


class CloseCode(enum.IntEnum):
    """Websocket close codes. 4000–4499: reconnect (with backoff); 4500–4999: do not reconnect as is.

    Standard codes used: 1000 normal, 1001 going away, 1002 protocol error, 1007 undecodable payload,
    1009 frame too large, 1011 internal error.
    """

    describe: str

    def __new__(cls, value: int, describe: str) -> CloseCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.describe = describe
        return member

    NORMAL = 1000, "The peer ended the session on purpose."
    GOING_AWAY = 1001, "The hub is shutting down; reconnect (to any hub) with backoff."
    PROTOCOL_ERROR = (
        1002,
        "The peer sent a frame that breaks the protocol (ill-typed, out of order during the handshake).",
    )
    INVALID_PAYLOAD = 1007, "The peer sent bytes that are not a decodable frame."
    MESSAGE_TOO_BIG = 1009, "The peer sent a frame larger than the negotiated maximum."
    INTERNAL_ERROR = 1011, "The hub met an unexpected condition; reconnect with backoff."
    # 4000–4499: transient, reconnect with jittered backoff.
    TRY_AGAIN_LATER = 4000, "The hub is overloaded or restarting; reconnect after the delay it suggests."
    SLOW_CONSUMER = (
        4001,
        "The connection's outgoing queue overflowed; reconnect and resume from the cursors held.",
    )
    HEARTBEAT_TIMEOUT = 4002, "No frame arrived within the heartbeat timeout."
    BACKEND_UNAVAILABLE = 4003, "The hub lost its Redis; reconnect with backoff."
    HANDSHAKE_TIMEOUT = 4004, "No ``hello`` arrived within the handshake timeout."
    # 4500–4999: permanent for this client as configured; a human or a new token must intervene.
    UNAUTHORIZED = 4500, "The token is missing, malformed or its signature is invalid."
    TOKEN_EXPIRED = 4501, "The token has expired; reconnect only with a fresh token."
    FORBIDDEN_ORIGIN = 4502, "The handshake's Origin header is not on the hub's allowlist."
    UNSUPPORTED_VERSION = 4503, "No protocol version is supported by both peers; upgrade the client."
    REVOKED = 4504, "The token or client was revoked by an operator."

    @property
    def reconnect(self) -> bool:
        """Whether a client should reconnect (with backoff) after this close."""
        return self in _RECONNECT or 4000 <= self.value < 4500


_RECONNECT = frozenset({CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR})
_BY_VALUE: dict[int, CloseCode] = {c.value: c for c in CloseCode}


def close_code_reconnects(code: int) -> bool:
    """Reconnect policy for any close code, including ones this version does not name."""
    known = _BY_VALUE.get(code)
    if known is not None:
        return known.reconnect
    # Unknown codes follow the ranges; unknown standard codes (1xxx) are treated as transient.
    return not 4500 <= code < 5000


class SyncError(Exception):
    """Root of every error syncd raises on purpose."""


class ProtocolError(SyncError):
    """The peer broke the protocol. ``close_code`` is how a server ends the connection over it."""

    def __init__(self, code: ErrorCode, message: str, *, close_code: CloseCode | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.close_code = close_code if close_code is not None else _CLOSE_FOR.get(code)


_CLOSE_FOR = {
    ErrorCode.FRAME_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.MALFORMED: CloseCode.INVALID_PAYLOAD,
    ErrorCode.TOO_DEEP: CloseCode.PROTOCOL_ERROR,
    ErrorCode.TOO_LONG: CloseCode.PROTOCOL_ERROR,
    ErrorCode.BAD_FRAME: CloseCode.PROTOCOL_ERROR,
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED_VERSION,
}


class ConnectionClosed(SyncError):
    """The connection ended. ``retryable`` tells whether reconnecting can help."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.retryable = close_code_reconnects(code)


class OpRejected(SyncError):
    """The hub refused an op with a typed reason. The op is settled: it will not be retried."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class BackendUnavailable(SyncError):
    """A backend (Redis, SQLite) cannot be reached; the operation may be retried unchanged."""
