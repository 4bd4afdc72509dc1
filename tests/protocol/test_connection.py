"""The sans-I/O connection state machines, driven through a ConnectionPair with a fake clock (no sockets)."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import codec, frames
from protocol.connection import (
    HEARTBEAT_MISSES,
    MAX_REASON_BYTES,
    ClientProtocol,
    CloseRequested,
    FrameReceived,
    HelloReceived,
    InvalidState,
    Opened,
    Refused,
    ServerEvent,
    ServerProtocol,
    State,
    StatsReceived,
)
from protocol.errors import CloseCode, ConnectionClosed, ErrorCode
from tests.protocol.helpers import HUB_EPOCH_MS, ConnectionPair, decoded

HEARTBEAT = 15_000
UNKNOWN_TAG = b"\x81\xa1t\xa3zzz"  # {"t": "zzz"}
RESERVED_BYTE = b"\x81\xa1t\xc1"  # {"t": <0xc1, never used by MessagePack>}
# {"t": "op", "seq": "x", "kind": "a", "args": {}}: decodes, but seq is not an int
ILL_TYPED_OP = b"\x84\xa1t\xa2op\xa3seq\xa1x\xa4kind\xa1a\xa4args\x80"


def op(seq: int) -> frames.Op:
    return frames.Op(seq=seq, kind="cart.add", args={"sku": "A1", "qty": 1})


def batch(*seqs: int) -> frames.OpBatch:
    return frames.OpBatch(ops=[op(s) for s in seqs])


def err(code: ErrorCode, ref: int | None = None) -> tuple[str, int | None]:
    return (code, ref)


def errors_of(sent: list[frames.Frame]) -> list[tuple[str, int | None]]:
    return [(f.code, f.ref) for f in sent if isinstance(f, frames.Error)]


def refused(events: list[ServerEvent]) -> list[tuple[str, int | None, str]]:
    """The refusals the server left for its driver to send in line (codes, refs and what the refs are)."""
    return [(e.error.code, e.error.ref, e.error.about) for e in events if isinstance(e, Refused)]


def hello_bytes(versions: list[int] | None = None, ts: int = 0) -> bytes:
    return codec.encode(frames.Hello(versions=versions or [1], token="t", client_id="c1", ts=ts))


def opened_pair(**kwargs: object) -> ConnectionPair:
    pair = ConnectionPair(**kwargs)  # type: ignore[arg-type]
    pair.handshake(last_seq=5)
    return pair


# --- handshake ----------------------------------------------------------------------------------------------


def test_handshake_opens_both_sides_and_reports_the_welcome() -> None:
    pair = ConnectionPair(client={"agent": "pos/1.0"})
    assert (pair.client.state, pair.server.state) == (State.IDLE, State.AWAITING_HELLO)
    assert pair.client.next_deadline() is None

    pair.client.connect(pair.client_now)
    pair.pump()
    [event] = pair.server.events_received()
    assert isinstance(event, HelloReceived)
    assert event.hello.client_id == "pos-7.store-12"
    assert event.hello.token == "token"
    assert event.hello.agent == "pos/1.0"
    assert event.hello.ts == HUB_EPOCH_MS
    assert pair.server.hello == event.hello
    assert (pair.server.state, pair.client.state) == (State.AUTHENTICATING, State.AWAITING_WELCOME)
    assert pair.server.version == 1
    assert (pair.client.version, pair.client.last_seq, pair.client.welcome) == (None, None, None)

    pair.now += 7
    pair.server.accept(session="sess-9", last_seq=41, now_ms=pair.now)
    pair.pump()
    [opened] = pair.client.events_received()
    assert isinstance(opened, Opened)
    welcome = opened.welcome
    assert welcome == frames.Welcome(
        version=1,
        session="sess-9",
        hub_time=HUB_EPOCH_MS + 7,
        echo_ts=HUB_EPOCH_MS,
        last_seq=41,
        heartbeat_ms=HEARTBEAT,
        max_frame=codec.SERVER_LIMITS.max_frame,
        max_batch=256,
    )
    assert pair.server.state is State.OPEN
    assert pair.server.last_seq == 41
    assert pair.client.state is State.OPEN
    assert pair.client.welcome == welcome
    assert (pair.client.version, pair.client.last_seq) == (1, 41)
    assert (pair.client.max_batch, pair.client.max_frame) == (256, codec.SERVER_LIMITS.max_frame)
    assert pair.server.events_received() == []


def test_the_highest_common_version_is_chosen() -> None:
    pair = ConnectionPair(server={"versions": (1, 2, 3)}, client={"versions": (2, 3, 4)})
    opened = pair.handshake()
    assert opened.welcome.version == 3
    assert pair.server.version == pair.client.version == 3


def test_no_common_version_answers_with_an_error_then_closes() -> None:
    pair = ConnectionPair(server={"versions": (1,)}, client={"versions": (7, 8)})
    pair.client.connect(pair.client_now)
    pair.pump()
    assert pair.server.events_received() == [
        CloseRequested(CloseCode.UNSUPPORTED_VERSION, "no common protocol version")
    ]
    assert pair.server.state is State.CLOSED
    assert pair.server.close_code == CloseCode.UNSUPPORTED_VERSION
    assert pair.server.version is None
    # The error frame went out before the close, so the client can tell the user to upgrade.
    [event] = pair.client.events_received()
    assert isinstance(event, FrameReceived)
    assert isinstance(event.frame, frames.Error)
    assert event.frame.code == ErrorCode.UNSUPPORTED_VERSION
    assert "[7, 8]" in event.frame.message
    assert pair.client.state is State.AWAITING_WELCOME


def test_refuse_closes_with_the_drivers_code() -> None:
    pair = ConnectionPair()
    pair.client.connect(pair.client_now)
    pair.pump()
    pair.server.events_received()
    pair.server.refuse(CloseCode.UNAUTHORIZED, "bad signature")
    assert pair.server.events_received() == [CloseRequested(CloseCode.UNAUTHORIZED, "bad signature")]
    assert pair.server.state is State.CLOSED
    assert pair.server.data_to_send() == []


def test_accept_refuse_and_connect_out_of_turn_are_driver_bugs() -> None:
    pair = ConnectionPair()
    with pytest.raises(InvalidState, match="cannot accept while awaiting_hello"):
        pair.server.accept(session="s", last_seq=0, now_ms=pair.now)
    with pytest.raises(InvalidState):
        pair.server.refuse(CloseCode.UNAUTHORIZED)
    pair.handshake()
    with pytest.raises(InvalidState):
        pair.server.accept(session="s", last_seq=0, now_ms=pair.now)
    with pytest.raises(InvalidState, match="cannot refuse while open"):
        pair.server.refuse(CloseCode.UNAUTHORIZED)
    with pytest.raises(InvalidState, match="cannot connect while open"):
        pair.client.connect(pair.client_now)
    assert isinstance(InvalidState("x"), AssertionError)


# --- frames out of order ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "ref", "about"),
    [
        (op(3), 3, "op"),
        (batch(4, 5), 4, "op"),
        (frames.Subscribe(id=17, topic="cart:m42"), 17, "sub"),
        (frames.Unsubscribe(topic="cart:m42"), None, ""),
        (frames.Ping(ts=1), None, ""),
    ],
)
def test_a_frame_before_hello_is_answered_out_of_order_and_the_handshake_goes_on(
    frame: frames.Frame, ref: int | None, about: str
) -> None:
    pair = ConnectionPair()
    deadline = pair.server.next_deadline()
    pair.now += 1_000
    events, sent = pair.to_server(codec.encode(frame))
    assert events == []
    assert errors_of(sent) == [err(ErrorCode.OUT_OF_ORDER, ref)]
    assert [f.about for f in sent if isinstance(f, frames.Error)] == [about]  # what ref is, unambiguously
    assert (pair.server.state, pair.server.next_deadline()) == (
        State.AWAITING_HELLO,
        deadline,
    )  # the handshake timer keeps running
    pair.handshake()
    assert pair.server.state is State.OPEN


def test_an_error_frame_before_hello_is_not_answered_with_an_error() -> None:
    pair = ConnectionPair()
    events, sent = pair.to_server(codec.encode(frames.Error(code="internal")))
    assert (events, sent) == ([], [])
    assert pair.server.state is State.AWAITING_HELLO


def test_frames_while_authenticating_are_out_of_order() -> None:
    pair = ConnectionPair()
    pair.client.connect(pair.client_now)
    pair.pump()
    pair.server.events_received()
    events, sent = pair.to_server(codec.encode(frames.Subscribe(id=2, topic="catalog")))
    assert events == []
    assert errors_of(sent) == [err(ErrorCode.OUT_OF_ORDER, 2)]
    events, sent = pair.to_server(hello_bytes())
    assert errors_of(sent) == [err(ErrorCode.OUT_OF_ORDER)]
    assert pair.server.state is State.AUTHENTICATING
    assert pair.server.next_deadline() is None  # the driver is authenticating
    pair.server.handle_timer(pair.now + 10**9)
    assert pair.server.state is State.AUTHENTICATING


def test_a_second_hello_after_open_is_out_of_order() -> None:
    pair = opened_pair()
    events, sent = pair.to_server(hello_bytes())
    assert (refused(events), sent) == ([(ErrorCode.OUT_OF_ORDER, None, "")], [])
    assert pair.server.state is State.OPEN


# --- decoding failures --------------------------------------------------------------------------------------


def test_an_unknown_tag_is_answered_with_an_error_and_the_connection_stays() -> None:
    pair = ConnectionPair()
    events, sent = pair.to_server(UNKNOWN_TAG)
    assert events == []
    assert (errors_of(sent), pair.server.state) == ([err(ErrorCode.UNKNOWN_FRAME)], State.AWAITING_HELLO)
    pair.handshake()
    events, sent = pair.to_server(UNKNOWN_TAG)
    assert (refused(events), sent) == ([(ErrorCode.UNKNOWN_FRAME, None, "")], [])
    assert pair.server.state is State.OPEN


def _too_deep() -> bytes:
    args: dict[str, object] = {}
    for _ in range(codec.SERVER_LIMITS.max_depth):
        args = {"x": args}
    return codec.encode(frames.Op(seq=6, kind="k", args=args))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (codec.encode(frames.Op(seq=6, kind="k", args={"x": "a" * 70_000})), CloseCode.MESSAGE_TOO_BIG),
        (RESERVED_BYTE, CloseCode.INVALID_PAYLOAD),
        (b"\x82\xa1t", CloseCode.INVALID_PAYLOAD),
        (ILL_TYPED_OP, CloseCode.PROTOCOL_ERROR),
        (_too_deep(), CloseCode.PROTOCOL_ERROR),
        (b"\x93\x01\x02\x03", CloseCode.PROTOCOL_ERROR),  # not a map
    ],
    ids=["oversized", "reserved-byte", "truncated", "ill-typed", "too-deep", "not-a-map"],
)
def test_bytes_the_server_cannot_trust_close_with_the_codec_close_code(data: bytes, code: CloseCode) -> None:
    pair = opened_pair()
    events, sent = pair.to_server(data)
    [close] = events
    assert isinstance(close, CloseRequested)
    assert close.code == code
    assert close.reason
    assert sent == []
    assert pair.server.state is State.CLOSED
    assert pair.server.close_code == code
    assert pair.server.close_reason == close.reason
    # Closed: everything that follows is ignored.
    assert pair.to_server(codec.encode(op(6))) == ([], [])
    assert pair.server.next_deadline() is None


def test_a_client_closes_on_bytes_it_cannot_decode() -> None:
    pair = opened_pair(client={"limits": codec.Limits(max_frame=200)})
    big = frames.Ack(seq=6, ok=True, result={"x": "a" * 300})
    [close] = pair.to_client(codec.encode(big))[0]
    assert isinstance(close, CloseRequested)
    assert close.code == CloseCode.MESSAGE_TOO_BIG
    assert close.reason.endswith("bytes > 200")
    assert pair.client.close_code == CloseCode.MESSAGE_TOO_BIG

    pair = opened_pair()
    [close] = pair.to_client(RESERVED_BYTE)[0]
    assert isinstance(close, CloseRequested)
    assert close.code == CloseCode.INVALID_PAYLOAD


def test_a_client_closes_on_an_unknown_tag() -> None:
    pair = opened_pair()
    [close] = pair.to_client(UNKNOWN_TAG)[0]
    assert isinstance(close, CloseRequested)
    assert close.code == CloseCode.PROTOCOL_ERROR
    assert "zzz" in close.reason
    assert pair.client.state is State.CLOSED


# --- the client's handshake ---------------------------------------------------------------------------------


def test_a_client_closes_on_a_frame_before_the_welcome_but_delivers_errors() -> None:
    pair = ConnectionPair()
    pair.client.connect(pair.client_now)
    pair.pump()
    error = frames.Error(code="rate_limited", retry_after_ms=500)
    assert pair.to_client(codec.encode(error)) == ([FrameReceived(error)], [])
    events, _ = pair.to_client(codec.encode(frames.Ack(seq=1, ok=True)))
    assert events == [CloseRequested(CloseCode.PROTOCOL_ERROR, "ack while awaiting_welcome")]


def test_a_client_that_did_not_connect_refuses_a_welcome() -> None:
    pair = ConnectionPair()
    welcome = frames.Welcome(
        version=1, session="s", hub_time=1, echo_ts=1, last_seq=0, heartbeat_ms=1, max_frame=1, max_batch=1
    )
    events, _ = pair.to_client(codec.encode(welcome))
    assert events == [CloseRequested(CloseCode.PROTOCOL_ERROR, "welcome while idle")]


@pytest.mark.parametrize("change", [{"version": 9}, {"heartbeat_ms": 0}, {"max_batch": 0}])
def test_a_client_closes_on_an_unusable_welcome(change: dict[str, int]) -> None:
    pair = ConnectionPair()
    pair.client.connect(pair.client_now)
    fields = {
        "version": 1,
        "session": "s",
        "hub_time": pair.now,
        "echo_ts": pair.client_now,
        "last_seq": 0,
        "heartbeat_ms": HEARTBEAT,
        "max_frame": 65536,
        "max_batch": 16,
    }
    welcome = frames.Welcome(**(fields | change))  # type: ignore[arg-type]
    events, _ = pair.to_client(codec.encode(welcome))
    assert events == [CloseRequested(CloseCode.PROTOCOL_ERROR, "unusable welcome")]


def test_a_second_welcome_closes_the_client() -> None:
    pair = opened_pair()
    welcome = pair.client.welcome
    assert welcome is not None
    events, _ = pair.to_client(codec.encode(welcome))
    assert events == [CloseRequested(CloseCode.PROTOCOL_ERROR, "welcome while open")]


# --- frames while open --------------------------------------------------------------------------------------


def test_subscriptions_and_client_errors_are_delivered_to_the_driver() -> None:
    pair = opened_pair()
    sub = frames.Subscribe(id=1, topic="cart:m42", cursor=frames.Cursor("e1", 10))
    assert pair.client_send(sub) == [FrameReceived(sub)]
    unsub = frames.Unsubscribe(topic="cart:m42")
    assert pair.client_send(unsub) == [FrameReceived(unsub)]
    error = frames.Error(code="internal", message="snapshot could not be applied", ref=1)
    assert pair.client_send(error) == [FrameReceived(error)]
    assert pair.server_sent == [pair.client.welcome]  # nothing answered


def test_hub_frames_are_delivered_to_the_client_driver() -> None:
    pair = opened_pair()
    cursor = frames.Cursor("e1", 11)
    for frame in (
        frames.Snapshot(id=1, topic="cart:m42", cursor=cursor, state={"lines": {}}),
        frames.Event(topic="cart:m42", cursor=cursor, kind="cart.add", data={"sku": "A1"}, at=pair.now),
        frames.Ack(seq=6, ok=False, code="insufficient_stock"),
        frames.Error(code="not_permitted", ref=1),
    ):
        assert pair.server_send(frame) == [FrameReceived(frame)]


def test_a_hub_ping_is_answered_by_the_client() -> None:
    pair = opened_pair(skew_ms=-250)
    assert pair.server_send(frames.Ping(ts=pair.now)) == []
    assert pair.client_sent[-1] == frames.Pong(echo_ts=pair.now, ts=pair.client_now)
    assert pair.server.events_received() == []  # a pong only proves liveness
    assert pair.server.data_to_send() == []


# --- op sequencing ------------------------------------------------------------------------------------------


def test_single_ops_must_not_skip_a_seq_but_replays_are_delivered() -> None:
    pair = opened_pair()  # the hub has applied up to seq 5
    assert pair.client_send(op(6)) == [FrameReceived(op(6))]
    assert pair.server.last_seq == 6
    [gap] = pair.client_send(op(8))
    assert isinstance(gap, Refused)
    assert gap.error == frames.Error(
        code=ErrorCode.SEQ_GAP, message="seq 8 after 6: expected 7", ref=8, about=frames.ABOUT_OP
    )
    assert pair.server.last_seq == 6
    assert pair.client_send(op(3)) == [FrameReceived(op(3))]  # the store answers it with the original ack
    assert pair.server.last_seq == 6
    assert pair.client_send(op(7)) == [FrameReceived(op(7))]
    assert errors_of(pair.server_sent) == []  # refusals of an open session are the driver's to send


def test_a_batch_delivers_the_ops_before_a_gap_and_then_the_refusal_in_line() -> None:
    pair = opened_pair()
    first = pair.client_send(batch(6, 7, 9, 10))
    assert first[0] == FrameReceived(batch(6, 7))  # the refusal comes after: its reply follows their acks
    assert refused(first[1:]) == [(ErrorCode.SEQ_GAP, 9, "op")]
    second = pair.client_send(batch(8, 10))
    assert (second[0], refused(second[1:])) == (FrameReceived(op(8)), [(ErrorCode.SEQ_GAP, 10, "op")])
    assert refused(pair.client_send(batch(11))) == [(ErrorCode.SEQ_GAP, 11, "op")]
    assert pair.server.last_seq == 8


def test_a_whole_batch_is_delivered_as_sent_replays_included() -> None:
    pair = opened_pair()
    sent = batch(4, 5, 6, 7)
    assert pair.client_send(sent) == [FrameReceived(sent)]
    assert pair.server.last_seq == 7
    assert errors_of(pair.server_sent) == []


def test_a_batch_over_max_batch_is_refused_whole() -> None:
    pair = opened_pair(server={"max_batch": 3})
    events, sent = pair.to_server(codec.encode(batch(6, 7, 8, 9)))
    assert (refused(events), sent) == ([(ErrorCode.BATCH_TOO_LARGE, 6, "op")], [])
    assert pair.server.last_seq == 5
    assert pair.client_send(batch(6, 7, 8)) == [FrameReceived(batch(6, 7, 8))]


# --- sending ------------------------------------------------------------------------------------------------


def test_send_before_open_is_a_driver_bug() -> None:
    pair = ConnectionPair()
    with pytest.raises(InvalidState, match="wait for the handshake"):
        pair.server.send(frames.Ack(seq=1, ok=True))
    with pytest.raises(InvalidState, match="cannot send 'op' while idle"):
        pair.client.send(op(1), pair.client_now)
    pair.client.connect(pair.client_now)
    with pytest.raises(InvalidState):
        pair.client.send(op(1), pair.client_now)


def test_send_after_close_raises_connection_closed() -> None:
    pair = opened_pair()
    pair.server.close(CloseCode.GOING_AWAY, "restart")
    pair.client.close(CloseCode.NORMAL, "bye")
    with pytest.raises(ConnectionClosed) as server_exc:
        pair.server.send(frames.Ack(seq=6, ok=True))
    assert (server_exc.value.code, server_exc.value.retryable) == (CloseCode.GOING_AWAY, True)
    with pytest.raises(ConnectionClosed):
        pair.server.send_error(ErrorCode.INTERNAL)
    with pytest.raises(ConnectionClosed) as client_exc:
        pair.client.send(op(6), pair.client_now)
    assert client_exc.value.reason == "bye"


def test_send_takes_only_the_frames_that_side_may_send() -> None:
    pair = opened_pair()
    with pytest.raises(TypeError, match="does not send 'welcome'"):
        pair.server.send(pair.client.welcome)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pair.server.send(op(6))
    with pytest.raises(TypeError, match="does not send 'hello'"):
        pair.client.send(frames.Hello(versions=[1], token="", client_id="c"), pair.client_now)
    with pytest.raises(TypeError):
        pair.client.send(frames.Ack(seq=1, ok=True), pair.client_now)


def test_the_client_refuses_to_send_what_the_hub_would_close_on() -> None:
    pair = opened_pair(server={"max_batch": 2})
    with pytest.raises(ValueError, match="max_batch 2"):
        pair.client.send(batch(6, 7, 8), pair.client_now)
    with pytest.raises(ValueError, match="max_frame 65536"):
        pair.client.send(frames.Op(seq=6, kind="k", args={"x": "a" * 70_000}), pair.client_now)
    assert pair.client.data_to_send() == []
    assert pair.client.state is State.OPEN


def test_send_error_carries_its_fields_and_bounds_the_message() -> None:
    pair = opened_pair()
    pair.server.send_error(ErrorCode.RATE_LIMITED, "x" * 5000, ref=7, retry_after_ms=250)
    [error] = decoded(pair.server.data_to_send())
    assert error == frames.Error(code="rate_limited", message="x" * 1024, ref=7, retry_after_ms=250)


# --- closing ------------------------------------------------------------------------------------------------


def test_close_is_requested_once_and_then_input_is_ignored() -> None:
    pair = opened_pair()
    pair.server.close(CloseCode.GOING_AWAY, "shutdown")
    pair.server.close(CloseCode.NORMAL, "again")
    assert pair.server.events_received() == [CloseRequested(CloseCode.GOING_AWAY, "shutdown")]
    assert pair.server.close_code == CloseCode.GOING_AWAY
    pair.client.close()
    pair.client.close()
    assert pair.client.events_received() == [CloseRequested(CloseCode.NORMAL, "")]
    assert pair.to_client(codec.encode(frames.Ping(ts=1))) == ([], [])
    assert pair.client.next_deadline() is None
    pair.client.handle_timer(pair.client_now + 10**9)
    assert pair.client.events_received() == []


def test_a_client_may_give_up_before_connecting() -> None:
    client = ClientProtocol("c1", "t", 0)
    client.close(CloseCode.NORMAL, "never mind")
    assert client.state is State.CLOSED
    assert client.events_received() == [CloseRequested(CloseCode.NORMAL, "never mind")]


def test_a_close_reason_is_cut_to_what_a_websocket_close_frame_holds() -> None:
    pair = opened_pair()
    pair.server.close(CloseCode.GOING_AWAY, "é" * 100)  # 200 bytes of UTF-8
    [close] = pair.server.events_received()
    assert isinstance(close, CloseRequested)
    raw = close.reason.encode()
    assert len(raw) <= MAX_REASON_BYTES
    assert close.reason == "é" * 61  # 122 bytes: the character cut in half is dropped


# --- heartbeats and timeouts --------------------------------------------------------------------------------


def pings(sent: list[frames.Frame]) -> list[frames.Ping]:
    return [f for f in sent if isinstance(f, frames.Ping)]


def test_an_idle_client_pings_every_heartbeat_and_both_sides_stay_open() -> None:
    pair = opened_pair()
    start = pair.now
    assert pair.client.next_deadline() == pair.client_now + HEARTBEAT
    assert pair.server.next_deadline() == pair.now + HEARTBEAT_MISSES * HEARTBEAT
    pair.run_for(10 * HEARTBEAT)
    assert [p.ts - start for p in pings(pair.client_sent)] == [HEARTBEAT * i for i in range(1, 11)]
    assert all(p.stats is None for p in pings(pair.client_sent))
    assert sum(isinstance(f, frames.Pong) for f in pair.server_sent) == 10
    assert pair.server.events_received() == []  # no stats, no events
    assert pair.client.events_received() == []
    assert (pair.client.state, pair.server.state) == (State.OPEN, State.OPEN)


def test_timers_that_fire_early_do_nothing() -> None:
    pair = ConnectionPair()
    pair.server.handle_timer(pair.now + 1)
    pair.client.handle_timer(pair.client_now + 1)  # idle: no timer at all
    pair.client.connect(pair.client_now)
    pair.client.handle_timer(pair.client_now + 1)
    assert pair.server.state is State.AWAITING_HELLO
    assert pair.client.state is State.AWAITING_WELCOME

    pair = opened_pair()
    pair.server.handle_timer(pair.now + HEARTBEAT)
    pair.client.handle_timer(pair.client_now + HEARTBEAT - 1)
    assert pair.client.data_to_send() == []
    assert pair.server.events_received() == []
    assert (pair.client.state, pair.server.state) == (State.OPEN, State.OPEN)


def test_a_busy_client_does_not_ping() -> None:
    pair = opened_pair()
    for seq in range(6, 26):
        pair.run_for(HEARTBEAT // 2)
        pair.client_send(op(seq))
        pair.server.send(frames.Ack(seq=seq, ok=True))
        pair.pump()
    assert pings(pair.client_sent) == []
    assert (pair.client.state, pair.server.state) == (State.OPEN, State.OPEN)


def test_a_client_that_only_sends_still_pings_so_it_hears_the_hub() -> None:
    pair = opened_pair()
    for i in range(20):
        pair.run_for(HEARTBEAT // 2)
        pair.client_send(frames.Unsubscribe(topic=f"stock:sku{i}"))  # the hub answers nothing
    assert len(pings(pair.client_sent)) == 10  # one per beat in which the hub said nothing
    assert (pair.client.state, pair.server.state) == (State.OPEN, State.OPEN)


def test_a_client_gives_up_on_a_silent_hub_after_three_beats() -> None:
    pair = opened_pair()
    opened_at = pair.client_now
    pair.drop_to_client = True
    pair.run_for(HEARTBEAT_MISSES * HEARTBEAT)
    [close] = pair.client.events_received()
    assert close == CloseRequested(CloseCode.HEARTBEAT_TIMEOUT, "nothing received for 45000 ms")
    # One ping per beat while waiting, not a ping storm.
    assert [p.ts - opened_at for p in pings(pair.client_sent)] == [HEARTBEAT, 2 * HEARTBEAT]
    assert pair.client.state is State.CLOSED
    assert pair.server.state is State.OPEN  # it still hears the client's pings


def test_a_server_gives_up_on_a_silent_client_after_three_beats() -> None:
    pair = opened_pair()
    accepted_at = pair.now
    pair.drop_to_server = True
    pair.run_for(HEARTBEAT_MISSES * HEARTBEAT - 1)
    assert pair.server.state is State.OPEN
    pair.run_for(1)
    assert pair.server.events_received() == [
        CloseRequested(CloseCode.HEARTBEAT_TIMEOUT, "nothing received for 45000 ms")
    ]
    assert pair.now == accepted_at + HEARTBEAT_MISSES * HEARTBEAT


def test_the_server_heartbeat_starts_at_accept_not_at_hello() -> None:
    pair = ConnectionPair()
    pair.client.connect(pair.client_now)
    pair.pump()
    pair.now += 20_000  # a slow authentication
    pair.server.accept(session="s", last_seq=0, now_ms=pair.now)
    assert pair.server.next_deadline() == pair.now + HEARTBEAT_MISSES * HEARTBEAT


def test_a_server_closes_when_no_hello_arrives_in_time() -> None:
    pair = ConnectionPair(server={"handshake_timeout_ms": 5_000})
    pair.run_for(4_999)
    assert pair.server.state is State.AWAITING_HELLO
    pair.run_for(1)
    assert pair.server.events_received() == [CloseRequested(CloseCode.HANDSHAKE_TIMEOUT, "no hello in time")]


def test_a_client_closes_when_no_welcome_arrives_in_time() -> None:
    pair = ConnectionPair(client={"handshake_timeout_ms": 3_000})
    pair.client.connect(pair.client_now)
    pair.pump()
    assert pair.client.next_deadline() == pair.client_now + 3_000
    pair.run_for(3_000)
    assert pair.client.events_received() == [
        CloseRequested(CloseCode.HANDSHAKE_TIMEOUT, "no welcome in time")
    ]


# --- clock offset -------------------------------------------------------------------------------------------


def test_the_clock_offset_is_estimated_at_handshake_with_a_skewed_client_clock() -> None:
    pair = ConnectionPair(skew_ms=-93_000, latency_ms=20)  # the till's clock is 93 s behind the hub
    opened = pair.handshake()
    assert (opened.clock_offset_ms, opened.rtt_ms) == (93_000, 40)
    assert (pair.client.clock_offset_ms, pair.client.rtt_ms) == (93_000, 40)


def test_the_lowest_round_trip_sample_wins() -> None:
    pair = ConnectionPair(skew_ms=5_000, latency_ms=20)
    pair.handshake()
    assert (pair.client.clock_offset_ms, pair.client.rtt_ms) == (-5_000, 40)
    pair.latency_ms = 5
    pair.run_for(HEARTBEAT)  # one ping, answered faster
    assert len(pings(pair.client_sent)) == 1
    assert (pair.client.clock_offset_ms, pair.client.rtt_ms) == (-5_000, 10)
    pair.latency_ms = 500
    pair.run_for(HEARTBEAT)  # a slower sample does not replace it
    assert len(pings(pair.client_sent)) == 2
    assert (pair.client.clock_offset_ms, pair.client.rtt_ms) == (-5_000, 10)


def test_an_asymmetric_sample_is_off_by_at_most_half_its_round_trip() -> None:
    pair = ConnectionPair(skew_ms=0)
    pair.client.connect(pair.client_now)
    pair.pump()
    pair.now += 30  # the hello took 30 ms, the welcome 0
    pair.server.accept(session="s", last_seq=0, now_ms=pair.now)
    pair.pump()
    [opened] = pair.client.events_received()
    assert isinstance(opened, Opened)
    assert opened.rtt_ms == 30
    assert abs(opened.clock_offset_ms) <= opened.rtt_ms // 2


def test_a_pong_that_answers_no_ping_of_ours_is_not_a_clock_sample() -> None:
    pair = ConnectionPair(latency_ms=10)
    pair.handshake()
    before = (pair.client.clock_offset_ms, pair.client.rtt_ms)
    pair.server_send(frames.Pong(echo_ts=pair.client_now, ts=pair.now + 999_999))
    assert (pair.client.clock_offset_ms, pair.client.rtt_ms) == before
    assert pair.client.state is State.OPEN


def test_only_the_answer_to_the_latest_ping_is_a_clock_sample() -> None:
    pair = ConnectionPair(server={"heartbeat_ms": 1_000})
    pair.client.connect(pair.client_now)
    pair.pump()
    pair.now += 10_000  # a slow authentication: the welcome is a poor sample
    pair.server.accept(session="s", last_seq=0, now_ms=pair.now)
    pair.pump()
    assert pair.client.rtt_ms == 10_000
    pair.drop_to_client = True
    pair.run_for(2_000)  # two pings whose pongs are lost
    first, second = pings(pair.client_sent)
    pair.now += 10
    pair.to_client(codec.encode(frames.Pong(echo_ts=first.ts, ts=first.ts)))  # superseded: ignored
    assert pair.client.rtt_ms == 10_000
    pair.to_client(codec.encode(frames.Pong(echo_ts=second.ts, ts=second.ts + 5)))
    assert (pair.client.rtt_ms, pair.client.clock_offset_ms) == (10, 0)
    pair.to_client(codec.encode(frames.Pong(echo_ts=second.ts, ts=second.ts + 5_000)))  # repeated: ignored
    assert (pair.client.rtt_ms, pair.client.clock_offset_ms) == (10, 0)
    assert pair.client.state is State.OPEN


# --- stats --------------------------------------------------------------------------------------------------


def test_ping_stats_reach_the_server_driver() -> None:
    pair = opened_pair()
    pair.client.set_stats({"outbox": 3, "oldest_op_ms": 1_250.5})
    pair.run_for(HEARTBEAT)
    [ping] = pings(pair.client_sent)
    assert ping.stats == {"outbox": 3.0, "oldest_op_ms": 1_250.5}
    assert pair.server.events_received() == [StatsReceived({"outbox": 3.0, "oldest_op_ms": 1_250.5}, ping.ts)]
    assert pair.server_sent[-1] == frames.Pong(echo_ts=ping.ts, ts=pair.now)


def test_a_ping_sent_on_demand_carries_the_stats_and_moves_the_next_heartbeat_ping() -> None:
    pair = opened_pair()
    with pytest.raises(InvalidState):
        ClientProtocol("c1", "t", 0).ping(0)
    pair.client.set_stats({"outbox": 7})
    pair.run_for(HEARTBEAT // 2)
    pair.client.ping(pair.client_now)
    pair.pump()
    [report] = pings(pair.client_sent)
    assert report.stats == {"outbox": 7.0}
    assert pair.server.events_received() == [StatsReceived({"outbox": 7.0}, report.ts)]
    assert pair.client.next_deadline() == report.ts + HEARTBEAT
    pair.run_for(HEARTBEAT)
    assert [p.ts - report.ts for p in pings(pair.client_sent)] == [0, HEARTBEAT]


def test_stats_are_bounded_as_the_ping_frame_requires() -> None:
    client = ClientProtocol("c1", "t", 0)
    with pytest.raises(ValueError, match="at most 64"):
        client.set_stats({f"k{i}": i for i in range(65)})
    with pytest.raises(ValueError, match="keys of at most 64"):
        client.set_stats({"k" * 65: 1.0})


# --- construction -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"versions": ()}, {"heartbeat_ms": 0}, {"handshake_timeout_ms": 0}, {"max_batch": 0}]
)
def test_a_server_rejects_unusable_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="positive"):
        ServerProtocol(0, **kwargs)  # type: ignore[arg-type]


def test_a_client_rejects_unusable_settings_and_an_invalid_hello() -> None:
    with pytest.raises(ValueError, match="positive"):
        ClientProtocol("c1", "t", 0, versions=())
    with pytest.raises(ValueError, match="invalid hello"):
        ClientProtocol("pos 7", "t", 0)  # a space is not allowed in a client_id
    with pytest.raises(ValueError, match="invalid hello"):
        ClientProtocol("c1", "t", 0, agent="x" * 200)


def test_events_are_frozen_value_objects() -> None:
    event = CloseRequested(1000, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.code = 1001  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
