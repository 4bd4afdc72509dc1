"""Error codes, close codes and the exception tree: stable values, one meaning each, the reconnect policy."""

from __future__ import annotations

import builtins
import re

import pytest

from protocol.errors import (
    BackendUnavailable,
    CloseCode,
    ConnectionClosed,
    ErrorCode,
    OpRejected,
    ProtocolError,
    SyncError,
    close_code_reconnects,
)


def test_error_codes_are_short_lowercase_and_each_has_a_sentence() -> None:
    for code in ErrorCode:
        assert re.fullmatch(r"[a-z][a-z_]{0,63}", code.value), code
        assert code.value == code.name.lower()
        assert code.describe.endswith("."), code
    assert len({c.value for c in ErrorCode}) == len(ErrorCode)


def test_close_codes_are_standard_or_in_the_private_range_and_each_has_a_sentence() -> None:
    for code in CloseCode:
        assert code.value in {1000, 1001, 1002, 1007, 1009, 1011} or 4000 <= code.value < 5000, code
        assert code.describe.endswith("."), code


@pytest.mark.parametrize("code", list(CloseCode), ids=[c.name for c in CloseCode])
def test_named_close_codes_reconnect_exactly_when_transient(code: CloseCode) -> None:
    expected = code in (CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR) or 4000 <= code.value < 4500
    assert code.reconnect is expected
    assert close_code_reconnects(int(code)) is expected


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (1006, True),  # abnormal closure (the network dropped): reconnect
        (1012, True),  # unknown standard code: treated as transient
        (3000, True),
        (4099, True),  # unnamed code in the reconnect range
        (4499, True),
        (4500, False),  # named (UNAUTHORIZED), boundary of the permanent range
        (4777, False),  # unnamed code in the permanent range
        (4999, False),
        (5000, True),
    ],
)
def test_unknown_close_codes_follow_the_ranges(code: int, reconnect: bool) -> None:
    assert close_code_reconnects(code) is reconnect


def test_protocol_error_takes_its_close_code_from_its_error_code_unless_given() -> None:
    err = ProtocolError(ErrorCode.MALFORMED, "truncated frame")
    assert (err.code, err.message, err.close_code) == (ErrorCode.MALFORMED, "truncated frame", 1007)
    assert str(err) == "malformed: truncated frame"
    assert ProtocolError(ErrorCode.FRAME_TOO_LARGE, "").close_code is CloseCode.MESSAGE_TOO_BIG
    assert ProtocolError(ErrorCode.UNSUPPORTED_VERSION, "").close_code is CloseCode.UNSUPPORTED_VERSION
    assert ProtocolError(ErrorCode.UNKNOWN_FRAME, "").close_code is None  # answered, not closed
    explicit = ProtocolError(ErrorCode.OUT_OF_ORDER, "op before hello", close_code=CloseCode.PROTOCOL_ERROR)
    assert explicit.close_code is CloseCode.PROTOCOL_ERROR


def test_connection_closed_says_whether_to_reconnect() -> None:
    dropped = ConnectionClosed(1006)
    assert (dropped.code, dropped.reason, dropped.retryable) == (1006, "", True)
    assert str(dropped) == "connection closed (1006)"
    expired = ConnectionClosed(CloseCode.TOKEN_EXPIRED, "token expired")
    assert not expired.retryable
    assert str(expired) == "connection closed (4501) token expired"


def test_op_rejected_is_a_result_with_a_code() -> None:
    bare = OpRejected(ErrorCode.INSUFFICIENT_STOCK)
    assert (bare.code, bare.message, str(bare)) == ("insufficient_stock", "", "insufficient_stock")
    told = OpRejected("some_future_code", "only 2 left")
    assert (told.code, str(told)) == ("some_future_code", "some_future_code: only 2 left")


def test_every_error_is_a_sync_error_and_none_shadows_a_builtin() -> None:
    for cls in (ProtocolError, ConnectionClosed, OpRejected, BackendUnavailable):
        assert issubclass(cls, SyncError)
        assert not hasattr(builtins, cls.__name__)
    assert issubclass(SyncError, Exception)
    assert not issubclass(ConnectionClosed, OSError)
