"""Carts through real hub processes and a real Redis: concurrency, exactly-once, resume, scope, bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocol import cart as rules
from protocol import frames
from protocol.errors import ErrorCode
from syncd.embedded import EmbeddedRedis
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, WireClient, token

pytestmark = pytest.mark.e2e


def cart_op(client_id: str, op: frames.Op) -> rules.CartOp:
    return rules.parse_op(op.kind, op.args, client_id=client_id, seq=op.seq, hlc=op.hlc, ctx=op.ctx)


async def subscribe(client: WireClient, topic: str, cursor: frames.Cursor | None = None) -> frames.Snapshot:
    await client.send(frames.Subscribe(id=1, topic=topic, cursor=cursor))
    return await client.recv_type(frames.Snapshot)


def fold_events(state: dict[str, Any], events: list[frames.Event]) -> dict[str, Any]:
    """A device's view: a snapshot's lines with each event's changed lines applied in offset order."""
    lines = dict(state["lines"])
    for event in events:
        for sku, line in event.data["lines"].items():
            if line is None:
                lines.pop(sku, None)
            else:
                lines[sku] = line
    return {"lines": lines}


async def events_until(client: WireClient, offset: int) -> list[frames.Event]:
    events: list[frames.Event] = []
    while not events or events[-1].cursor.offset < offset:
        events.append(await client.recv_type(frames.Event))
    return events


async def test_two_offline_devices_converge_to_the_rules_result_on_both_devices_and_in_redis(
    hub: HubProcess,
) -> None:
    # Both devices saw the same cart (qty 2 of A, qty 1 of B), then went offline and edited it.
    seed = await WireClient.open(hub.url, "seed")
    await subscribe(seed, "cart:m1")
    await seed.op("cart.add", {"member": "m1", "sku": "A", "qty": 2}, hlc=1)
    await seed.op("cart.add", {"member": "m1", "sku": "B", "qty": 1}, hlc=2)
    await events_until(seed, 2)
    seen = (await subscribe(await WireClient.open(hub.url, "peek"), "cart:m1")).state
    assert seen is not None
    vv_a, vv_b = seen["lines"]["A"]["vv"], seen["lines"]["B"]["vv"]

    app = await WireClient.open(hub.url, "app-1")
    pos = await WireClient.open(hub.url, "pos-1", tok=token("pos-1", role="pos", store="s1"))
    app_ops = [
        frames.Op(seq=1, kind="cart.add", args={"member": "m1", "sku": "A", "qty": 1}, ctx=vv_a, hlc=100),
        frames.Op(seq=2, kind="cart.set", args={"member": "m1", "sku": "B", "qty": 5}, ctx=vv_b, hlc=101),
    ]
    pos_ops = [
        frames.Op(seq=1, kind="cart.remove", args={"member": "m1", "sku": "A"}, ctx=vv_a, hlc=90),
        frames.Op(seq=2, kind="cart.set", args={"member": "m1", "sku": "B", "qty": 3}, ctx=vv_b, hlc=102),
    ]
    for op in pos_ops:  # the till reconnects first, then the app
        await pos.send(op)
    for op in app_ops:
        await app.send(op)
    acks = [await pos.recv_type(frames.Ack) for _ in pos_ops] + [
        await app.recv_type(frames.Ack) for _ in app_ops
    ]
    assert all(a.ok for a in acks)

    # The rules, applied in either order, give one cart: A = the unseen add(1); B = set 3 (higher HLC) wins.
    def expected(order: list[tuple[str, frames.Op]]) -> dict[str, Any]:
        cart = rules.empty_cart()
        for client_id, op in [("seed", o) for o in seed_ops()] + order:
            cart = rules.apply(cart, cart_op(client_id, op)).cart
        return rules.snapshot(cart)

    def seed_ops() -> list[frames.Op]:
        return [
            frames.Op(seq=1, kind="cart.add", args={"member": "m1", "sku": "A", "qty": 2}, hlc=1),
            frames.Op(seq=2, kind="cart.add", args={"member": "m1", "sku": "B", "qty": 1}, hlc=2),
        ]

    pos_first = expected([("pos-1", o) for o in pos_ops] + [("app-1", o) for o in app_ops])
    app_first = expected([("app-1", o) for o in app_ops] + [("pos-1", o) for o in pos_ops])
    assert pos_first == app_first  # the same state, dots and their order included, whatever arrived first
    assert {sku: line["qty"] for sku, line in pos_first["lines"].items()} == {"A": 1, "B": 3}

    seed_view = fold_events(seen, await events_until(seed, 6))
    fresh = (await subscribe(await WireClient.open(hub.url, "late"), "cart:m1")).state
    assert fresh == pos_first  # what Redis holds (the till's ops arrived first)
    assert seed_view == pos_first  # what a live device assembled from events


async def test_an_op_replayed_five_times_after_a_dropped_ack_is_applied_once(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "pos-7")
    op = await client.op("cart.add", {"member": "m2", "sku": "X", "qty": 2})
    first = await client.recv_type(frames.Ack)
    await client.close()  # the ack "was lost": the device reconnects and replays the same op
    for _ in range(5):
        again = await WireClient.open(hub.url, "pos-7")
        assert again.welcome is not None
        assert again.welcome.last_seq == 1
        await again.send(op)
        ack = await again.recv_type(frames.Ack)
        assert (ack.seq, ack.ok, ack.dup, ack.result) == (1, True, True, first.result)
        await again.close()
    view = await WireClient.open(hub.url, "viewer")
    snap = await subscribe(view, "cart:m2")
    assert snap.state is not None
    assert snap.state["lines"]["X"]["qty"] == 2
    assert snap.cursor.offset == 1  # one event in the topic's history, not six


async def test_a_resuming_subscriber_gets_exactly_the_missed_events_in_order(hub: HubProcess) -> None:
    reader = await WireClient.open(hub.url, "reader")
    snap = await subscribe(reader, "cart:m3")
    await reader.close()
    writer = await WireClient.open(hub.url, "writer")
    for first, count in ((1, 200), (201, 150), (351, 150)):  # 500 events, in batches within max_batch
        batch = [
            frames.Op(seq=i, kind="cart.add", args={"member": "m3", "sku": f"S{i % 7}", "qty": 1})
            for i in range(first, first + count)
        ]
        await writer.send(frames.OpBatch(ops=batch))
    acks = [await writer.recv_type(frames.Ack) for _ in range(500)]
    assert [a.seq for a in acks] == list(range(1, 501))

    back = await WireClient.open(hub.url, "reader")
    resumed = await subscribe(back, "cart:m3", snap.cursor)
    assert (resumed.reset, resumed.state) == (False, None)
    events = await events_until(back, snap.cursor.offset + 500)
    assert [e.cursor.offset for e in events] == list(range(1, 501))
    assert [e.origin.seq for e in events if e.origin] == list(range(1, 501))


async def test_a_cursor_older_than_the_retained_history_gets_a_reset_snapshot(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    hub = hub_factory(redis_server.url, SYNCD_HISTORY_MAXLEN="10")
    reader = await WireClient.open(hub.url, "reader")
    snap = await subscribe(reader, "cart:m4")
    writer = await WireClient.open(hub.url, "writer")
    for _ in range(30):
        await writer.op("cart.add", {"member": "m4", "sku": "A", "qty": 1})
    for _ in range(30):
        await writer.recv_type(frames.Ack)
    back = await WireClient.open(hub.url, "reader-2")
    resumed = await subscribe(back, "cart:m4", snap.cursor)
    assert resumed.reset
    assert resumed.state is not None
    assert resumed.state["lines"]["A"]["qty"] == 30
    assert resumed.cursor.offset == 30
    stale_epoch = frames.Cursor(epoch="not-this-one", offset=3)
    assert (await subscribe(back, "cart:m4", stale_epoch)).reset


async def test_a_write_through_one_hub_reaches_subscribers_of_another(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    hub_a, hub_b = hub_factory(redis_server.url), hub_factory(redis_server.url)
    listener = await WireClient.open(hub_b.url, "listener")
    await subscribe(listener, "cart:m5")
    writer = await WireClient.open(hub_a.url, "writer")
    await writer.op("cart.add", {"member": "m5", "sku": "A", "qty": 3})
    event = await listener.recv_type(frames.Event)
    assert event.origin == frames.Origin("writer", 1)
    assert event.data["lines"]["A"]["qty"] == 3
    assert event.at > 0


async def test_a_pos_token_is_confined_to_its_store_and_members(hub: HubProcess) -> None:
    pos = await WireClient.open(hub.url, "pos-a1", tok=token("pos-a1", role="pos", store="A", members=["m1"]))
    await pos.send(frames.Subscribe(id=9, topic="store:B"))
    error = await pos.recv_type(frames.Error)
    assert (error.code, error.ref) == (ErrorCode.NOT_PERMITTED, 9)
    await pos.send(frames.Subscribe(id=10, topic="cart:m2"))
    error = await pos.recv_type(frames.Error)
    assert (error.code, error.ref) == (ErrorCode.NOT_PERMITTED, 10)
    await pos.op("cart.add", {"member": "m2", "sku": "A", "qty": 1})
    ack = await pos.recv_type(frames.Ack)
    assert (ack.ok, ack.code) == (False, ErrorCode.NOT_PERMITTED)
    await pos.op("cart.add", {"member": "m1", "sku": "A", "qty": 1})  # its own member: fine
    assert (await pos.recv_type(frames.Ack)).ok


async def test_bad_ops_are_refused_with_their_codes_while_others_are_served(hub: HubProcess) -> None:
    bystander = await WireClient.open(hub.url, "bystander")
    await subscribe(bystander, "cart:b1")
    bad = await WireClient.open(hub.url, "bad-1")
    await bad.op("cart.add", {"member": "m1", "sku": "A", "qty": "2"})
    ack = await bad.recv_type(frames.Ack)
    assert (ack.ok, ack.code) == (False, ErrorCode.BAD_ARGS)
    await bad.op("cart.explode", {"member": "m1"})
    ack = await bad.recv_type(frames.Ack)
    assert (ack.ok, ack.code) == (False, ErrorCode.UNKNOWN_OP)
    ops = [frames.Op(seq=bad.seq + 1 + i, kind="cart.add", args={}) for i in range(257)]
    await bad.send(frames.OpBatch(ops=ops))
    error = await bad.recv_type(frames.Error)
    assert error.code == ErrorCode.BATCH_TOO_LARGE
    # 10,000 subscriptions on one connection: the first 100 (the limit) are served, the rest refused.
    for i in range(10_000):
        await bad.send(frames.Subscribe(id=100 + i, topic=f"cart:x{i}"))
    errors, snapshots = [], 0
    while len(errors) < 9_900:
        frame = await bad.recv()
        if isinstance(frame, frames.Error):
            errors.append(frame)
        elif isinstance(frame, frames.Snapshot):
            snapshots += 1
    assert {e.code for e in errors} == {ErrorCode.TOO_MANY_SUBSCRIPTIONS}
    assert sorted(e.ref for e in errors if e.ref is not None) == list(range(200, 10_100))
    assert snapshots == 100
    writer = await WireClient.open(hub.url, "writer")
    await writer.op("cart.add", {"member": "b1", "sku": "A", "qty": 1})
    assert (await writer.recv_type(frames.Ack)).ok
    assert (await bystander.recv_type(frames.Event)).data["lines"]["A"]["qty"] == 1
    await asyncio.gather(bystander.close(), bad.close(), writer.close())
