"""The websocket endpoint and the hub behind it, without sockets (tests/syncd/hubkit.py): the handshake and
its refusals, ops acked once, subscriptions answered gap-free, deadlines, and how a connection ends."""

from __future__ import annotations

import msgspec

from protocol import codec, frames
from protocol.errors import CloseCode, ErrorCode
from syncd.hub import APPLY_CHUNK, Hub
from syncd.settings import Settings
from tests.syncd.conftest import MakeDevice
from tests.syncd.hubkit import Device, ManualTicker, op


def ticker(hub: Hub) -> ManualTicker:
    assert isinstance(hub.ticker, ManualTicker)
    return hub.ticker


async def subscribed(
    dev: Device, topic: str = "cart:m1", cursor: frames.Cursor | None = None
) -> frames.Snapshot:
    dev.send(frames.Subscribe(id=1, topic=topic, cursor=cursor))
    return await dev.next(frames.Snapshot)


def at(snap: frames.Snapshot) -> frames.Cursor:
    assert snap.cursor is not None  # a whole snapshot, or the last page of one
    return snap.cursor


# -- handshake ----------------------------------------------------------------------------------------


async def test_a_valid_hello_is_welcomed_with_the_clients_last_applied_seq(device: MakeDevice) -> None:
    dev = device()
    welcome = await dev.open()
    assert welcome.last_seq == 0
    dev.send(op(1))
    await dev.next(frames.Ack)
    again = device()
    assert (await again.open()).last_seq == 1


async def test_a_refused_token_closes_with_its_code_before_any_session(device: MakeDevice, hub: Hub) -> None:
    dev = device(token="not-a-jwt")
    dev.hello()
    assert await dev.wire.closed() == CloseCode.UNAUTHORIZED
    await dev.wire.ended()
    assert hub.sessions == set()


async def test_an_expired_token_closes_with_token_expired(device: MakeDevice) -> None:
    dev = device(ttl_s=-60)
    dev.hello()
    assert await dev.wire.closed() == CloseCode.TOKEN_EXPIRED


async def test_a_browser_origin_not_allowed_is_refused(device: MakeDevice) -> None:
    dev = device(headers={"Origin": "https://evil.example"})
    assert await dev.wire.closed() == CloseCode.FORBIDDEN_ORIGIN


async def test_a_text_message_is_a_protocol_error(device: MakeDevice) -> None:
    dev = device()
    await dev.open()
    dev.wire.put("hello?")
    assert await dev.wire.closed() == CloseCode.PROTOCOL_ERROR


async def test_garbage_before_the_hello_closes_the_connection(device: MakeDevice) -> None:
    dev = device()
    dev.wire.put(b"\xc1\xc1\xc1")
    assert await dev.wire.closed() in (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD)


async def test_no_hello_within_the_handshake_timeout_closes_the_connection(
    device: MakeDevice, hub: Hub
) -> None:
    dev = device()
    await dev.wire.until(lambda: ticker(hub).members)
    ticker(hub).advance(60_000)
    assert await dev.wire.closed() != CloseCode.NORMAL


async def test_a_silent_client_is_closed_after_its_heartbeat(device: MakeDevice, hub: Hub) -> None:
    dev = device()
    await dev.open()
    ticker(hub).advance(10 * hub.settings.heartbeat_ms)
    assert await dev.wire.closed() == CloseCode.HEARTBEAT_TIMEOUT
    await dev.wire.ended()
    assert hub.sessions == set()


async def test_a_session_whose_token_expires_is_closed_with_token_expired(
    device: MakeDevice, hub: Hub
) -> None:
    dev = device(ttl_s=1)
    await dev.open()
    ticker(hub).advance(1_000 + int(hub.verifier.leeway_s * 1000) + 500)  # well within the heartbeat
    assert await dev.wire.closed() == CloseCode.TOKEN_EXPIRED


async def test_the_hub_shutting_down_closes_its_sessions_with_going_away(
    device: MakeDevice, hub: Hub
) -> None:
    dev = device()
    await dev.open()
    await hub.close()
    assert await dev.wire.closed() == CloseCode.GOING_AWAY


async def test_a_client_that_disconnects_leaves_no_session_nor_subscription(
    device: MakeDevice, hub: Hub
) -> None:
    dev = device()
    await dev.open()
    await subscribed(dev)
    assert hub.fanout.topics == 1
    await dev.close()
    assert hub.sessions == set()
    assert hub.fanout.topics == 0


# -- ops --------------------------------------------------------------------------------------------------


async def test_each_op_is_acked_in_order_and_a_resent_op_is_acked_as_a_duplicate(device: MakeDevice) -> None:
    dev = device()
    await dev.open()
    dev.send(frames.OpBatch(ops=[op(1), op(2, sku="SKU-2")]))
    first, second = await dev.next(frames.Ack), await dev.next(frames.Ack)
    assert (first.seq, second.seq) == (1, 2)
    assert not first.dup
    resumed = device()  # the same client after a reconnect, resending what it was not sure of
    await resumed.open()
    resumed.send(op(2, sku="SKU-2"))
    assert (await resumed.next(frames.Ack)).dup


async def test_an_op_for_a_member_outside_the_token_is_rejected_not_applied(device: MakeDevice) -> None:
    dev = device()
    await dev.open()
    dev.send(op(1, member="m2"))
    ack = await dev.next(frames.Ack)
    assert not ack.ok and ack.code == ErrorCode.NOT_PERMITTED


async def test_ops_beyond_the_rate_are_refused_with_a_retry_hint(
    device: MakeDevice, hub: Hub, hub_settings: Settings
) -> None:
    hub.settings = Settings(
        data_dir=hub_settings.data_dir, token_secret=hub_settings.token_secret, op_rate=1, op_burst=2
    )
    dev = device()
    await dev.open()
    dev.send(frames.OpBatch(ops=[op(1), op(2), op(3)]))
    acks = [await dev.next(frames.Ack), await dev.next(frames.Ack)]
    error = await dev.next(frames.Error)
    assert [a.seq for a in acks] == [1, 2]
    assert error.code == ErrorCode.RATE_LIMITED
    assert error.ref == 3 and error.about == frames.ABOUT_OP
    assert error.retry_after_ms is not None and error.retry_after_ms > 0


# -- subscriptions --------------------------------------------------------------------------------------


async def test_a_subscription_gets_a_snapshot_then_every_later_event_once(device: MakeDevice) -> None:
    writer, reader = device("app-w"), device("app-r")
    await writer.open()
    await reader.open()
    writer.send(op(1))
    await writer.next(frames.Ack)
    snap = await subscribed(reader)
    assert at(snap).offset == 1 and snap.state
    writer.send(frames.OpBatch(ops=[op(2, sku="SKU-2"), op(3, sku="SKU-3")]))
    await reader.wait(lambda: len([f for f in reader.frames if isinstance(f, frames.Event)]) == 2)
    assert [e.cursor.offset for e in reader.taken(frames.Event)] == [2, 3]


async def test_a_subscription_with_a_cursor_gets_the_events_after_it(device: MakeDevice) -> None:
    writer, reader = device("app-w"), device("app-r")
    await writer.open()
    await reader.open()
    writer.send(frames.OpBatch(ops=[op(1), op(2, sku="SKU-2"), op(3, sku="SKU-3")]))
    for _ in range(3):
        await writer.next(frames.Ack)
    first = await subscribed(reader)
    reader2 = device("app-r2")
    await reader2.open()
    snap = await subscribed(reader2, cursor=frames.Cursor(at(first).epoch, 1))
    assert snap.state is None and at(snap).offset == 1
    await reader2.wait(lambda: len([f for f in reader2.frames if isinstance(f, frames.Event)]) == 2)
    assert [e.cursor.offset for e in reader2.taken(frames.Event)] == [2, 3]


async def test_a_cursor_of_another_epoch_gets_a_reset_snapshot(device: MakeDevice) -> None:
    writer, reader = device("app-w"), device("app-r")
    await writer.open()
    await reader.open()
    writer.send(op(1))
    await writer.next(frames.Ack)
    snap = await subscribed(reader, cursor=frames.Cursor("not-an-epoch", 7))
    assert snap.reset and snap.state and at(snap).offset == 1


async def test_a_topic_outside_the_token_is_refused(device: MakeDevice) -> None:
    dev = device()
    await dev.open()
    dev.send(frames.Subscribe(id=4, topic="cart:m2"))
    error = await dev.next(frames.Error)
    assert (error.code, error.ref) == (ErrorCode.NOT_PERMITTED, 4)


async def test_an_unparsable_or_unserved_topic_is_refused(device: MakeDevice) -> None:
    dev = device(role="ops")
    await dev.open()
    dev.send(frames.Subscribe(id=5, topic="nonsense"))
    dev.send(frames.Subscribe(id=6, topic="catalog"))
    refusals = [await dev.next(frames.Error), await dev.next(frames.Error)]
    assert [e.ref for e in refusals] == [5, 6]
    assert refusals[1].code == ErrorCode.UNSUPPORTED_TOPIC


async def test_subscriptions_beyond_the_limit_are_refused(
    device: MakeDevice, hub: Hub, hub_settings: Settings
) -> None:
    hub.settings = Settings(
        data_dir=hub_settings.data_dir, token_secret=hub_settings.token_secret, max_subscriptions=1
    )
    dev = device(members=["m1", "m2"])
    await dev.open()
    await subscribed(dev)
    dev.send(frames.Subscribe(id=2, topic="cart:m2"))
    assert (await dev.next(frames.Error)).code == ErrorCode.TOO_MANY_SUBSCRIPTIONS


async def test_after_unsubscribing_no_more_events_arrive(device: MakeDevice, hub: Hub) -> None:
    writer, reader = device("app-w"), device("app-r")
    await writer.open()
    await reader.open()
    await subscribed(reader)
    reader.send(frames.Unsubscribe(topic="cart:m1"))
    writer.send(op(1))
    await writer.next(frames.Ack)
    reader.send(frames.Subscribe(id=9, topic="cart:m1"))  # a round trip: anything sent before it is in
    snap = await reader.next(frames.Snapshot)
    assert at(snap).offset == 1
    assert reader.taken(frames.Event) == []


async def test_redis_unreachable_at_hello_closes_with_backend_unavailable(
    device: MakeDevice, hub: Hub, hub_redis: object
) -> None:
    hub_redis.stop()  # type: ignore[attr-defined]
    dev = device()
    dev.hello()
    assert await dev.wire.closed() == CloseCode.BACKEND_UNAVAILABLE


async def test_an_op_while_redis_is_unreachable_is_refused_as_unavailable_with_a_retry(
    device: MakeDevice, hub: Hub, hub_redis: object
) -> None:
    dev = device()
    await dev.open()
    hub_redis.stop()  # type: ignore[attr-defined]
    dev.send(op(1))
    answer = await dev.next(frames.Error)
    assert answer.code == ErrorCode.UNAVAILABLE and answer.retry_after_ms


# -- refusals in line with the replies ---------------------------------------------------------------------


async def test_an_op_that_skips_a_seq_is_refused_after_the_acks_of_the_ops_before_it(
    device: MakeDevice,
) -> None:
    dev = device()
    await dev.open()
    dev.send(frames.OpBatch(ops=[op(1), op(3)]))
    await dev.wait(lambda: any(isinstance(f, frames.Error) for f in dev.frames))
    ack, refusal = dev.frames  # in line: the refusal comes after the ack of the op before it
    assert isinstance(ack, frames.Ack) and ack.seq == 1
    assert isinstance(refusal, frames.Error) and (refusal.code, refusal.ref) == (ErrorCode.SEQ_GAP, 3)
    dev.frames.clear()
    dev.send(op(2))
    assert (await dev.next(frames.Ack)).seq == 2  # the connection goes on


async def test_ops_sent_frame_by_frame_are_each_acked_in_order(device: MakeDevice) -> None:
    dev = device()
    await dev.open()
    for seq in range(1, 6):
        dev.send(op(seq, sku=f"SKU-{seq}"))
    assert [(await dev.next(frames.Ack)).seq for _ in range(5)] == [1, 2, 3, 4, 5]


async def test_an_unknown_frame_is_refused_and_the_connection_goes_on(device: MakeDevice) -> None:
    dev = device()
    await dev.open()
    dev.wire.put(msgspec.msgpack.encode({"t": "from-the-future"}))
    await dev.next(frames.Error)
    dev.send(op(1))
    assert (await dev.next(frames.Ack)).seq == 1


async def test_an_error_from_the_client_gets_no_answer(device: MakeDevice) -> None:
    dev = device()
    await dev.open()
    dev.wire.put(codec.encode(frames.Error(code=ErrorCode.UNAVAILABLE, message="client side trouble")))
    dev.send(op(1))
    await dev.next(frames.Ack)  # answered after anything the err could have caused
    assert dev.taken(frames.Error) == []


async def test_a_batch_longer_than_one_store_call_is_acked_in_order_and_stops_at_its_gap(
    device: MakeDevice,
) -> None:
    # The hub hands the store APPLY_CHUNK ops at a time (fairness): the batch still reads as one, every op
    # acked in order, and the gap, past the first chunk, refused once, with nothing applied after it.
    dev = device()
    await dev.open()
    last = APPLY_CHUNK + 5
    ops = [op(seq, sku=f"SKU-{seq % 7}") for seq in range(1, last + 1)]
    dev.send(frames.OpBatch(ops=[*ops, op(last + 2), op(last + 3)]))
    await dev.wait(lambda: any(isinstance(f, frames.Error) for f in dev.frames))
    *acks, refusal = dev.frames
    assert len(acks) == last
    assert [a.seq for a in acks if isinstance(a, frames.Ack)] == list(range(1, last + 1))
    assert isinstance(refusal, frames.Error) and (refusal.code, refusal.ref) == (ErrorCode.SEQ_GAP, last + 2)
    dev.frames.clear()
    dev.send(op(last + 1))
    assert (await dev.next(frames.Ack)).seq == last + 1
    assert not any(isinstance(f, frames.Error) for f in dev.frames)
