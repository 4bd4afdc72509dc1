"""A real hub process against the letter of PROTOCOL.md, on the points an independent client found ambiguous.

Each test drives the hub with a bare :class:`~tests.e2e.harness.WireClient` (no SDK logic), so what is
asserted is exactly what the hub put on the wire: reply order (§7.2), batch elements (§6.9), which decoding
error wins (§4.1), the close code at shutdown (§5.2), what ``err.ref`` refers to (§6.11), topic kinds not
served yet (§8.1), a cursor ahead of the head (§6.1), the key order of a cart line (§10), and one expiry
rule (§13.1).
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from protocol import frames
from protocol.errors import CloseCode, ErrorCode
from tests.e2e.harness import HubProcess, WireClient, token

pytestmark = pytest.mark.e2e


def add(seq: int, sku: str = "A", member: str = "m1") -> frames.Op:
    return frames.Op(seq=seq, kind="cart.add", args={"member": member, "sku": sku, "qty": 1})


async def replies(client: WireClient, count: int) -> list[frames.Frame]:
    """The next ``count`` acks and errs, in the order the hub sent them (events and pongs skipped)."""
    out: list[frames.Frame] = []
    while len(out) < count:
        frame = await client.recv()
        if isinstance(frame, frames.Ack | frames.Error):
            out.append(frame)
    return out


async def test_replies_to_a_batch_with_a_gap_come_in_the_order_of_the_ops(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "pos-1")
    await client.send(frames.OpBatch(ops=[add(1), add(3)]))
    first, second = await replies(client, 2)
    assert isinstance(first, frames.Ack) and first.seq == 1 and first.ok
    assert isinstance(second, frames.Error)
    assert (second.code, second.ref, second.about) == (ErrorCode.SEQ_GAP, 3, "op")


async def test_an_oversized_batch_is_refused_after_the_reply_to_the_op_before_it(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "pos-1")
    assert client.welcome is not None
    await client.send(add(1))
    await client.send(frames.OpBatch(ops=[add(2 + i) for i in range(client.welcome.max_batch + 1)]))
    first, second = await replies(client, 2)
    assert isinstance(first, frames.Ack) and first.seq == 1
    assert isinstance(second, frames.Error)
    assert (second.code, second.ref, second.about) == (ErrorCode.BATCH_TOO_LARGE, 2, "op")


async def test_a_batch_element_without_its_tag_closes_the_connection_and_applies_nothing(
    hub: HubProcess,
) -> None:
    client = await WireClient.open(hub.url, "pos-1")
    untagged = {"seq": 2, "kind": "cart.add", "args": {"member": "m1", "sku": "A", "qty": 1}}
    tagged = {"t": "op", **untagged, "seq": 1}
    await client.send_raw(msgspec.msgpack.encode({"t": "ops", "ops": [tagged, untagged]}))
    assert await client.closed() == CloseCode.PROTOCOL_ERROR
    again = await WireClient.open(hub.url, "pos-1")
    assert again.welcome is not None and again.welcome.last_seq == 0  # not even the tagged op was applied


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1", CloseCode.INVALID_PAYLOAD),  # a lone reserved byte: malformed, not "not a map"
        (b"\x92\x01", CloseCode.INVALID_PAYLOAD),  # a truncated array
        (b"\x82\xa1t\xa4ping", CloseCode.INVALID_PAYLOAD),  # a map declaring 2 entries, holding 1
        (
            b"\x83\xa1t\xa4ping\xa2ts\x01\xa1x\xa2\xff\xfe",
            CloseCode.INVALID_PAYLOAD,
        ),  # bad UTF-8, unknown key
        (b"\x92\x01\x02", CloseCode.PROTOCOL_ERROR),  # complete and well formed, but not a map
    ],
    ids=["lone-c1", "truncated-array", "truncated-map", "utf8-under-unknown-key", "array"],
)
async def test_undecodable_bytes_close_with_1007_and_only_a_value_that_is_not_a_map_with_1002(
    hub: HubProcess, data: bytes, code: CloseCode
) -> None:
    client = await WireClient.open(hub.url, "pos-1")
    await client.send_raw(data)
    assert await client.closed() == code


async def test_a_hub_shutting_down_closes_its_connections_with_going_away(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "pos-1")
    await asyncio.to_thread(hub.stop)  # SIGTERM: a graceful shutdown
    assert await client.closed() == CloseCode.GOING_AWAY


async def test_errors_say_whether_ref_is_a_subscription_id_or_an_op_seq(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "pos-1", tok=token("pos-1", members=["m1"]))
    await client.send(frames.Subscribe(id=5, topic="cart:m2"))  # outside the token's scope
    refused = await client.recv_type(frames.Error)
    assert (refused.code, refused.ref, refused.about) == (ErrorCode.NOT_PERMITTED, 5, "sub")
    await client.send(add(5))  # seq 5 while the hub expects 1: the same number, an op this time
    gap = await client.recv_type(frames.Error)
    assert (gap.code, gap.ref, gap.about) == (ErrorCode.SEQ_GAP, 5, "op")


@pytest.mark.parametrize("topic", ["points:m1", "member:m1", "catalog"])
async def test_a_topic_kind_the_hub_does_not_serve_yet_is_unsupported_not_unknown(
    hub: HubProcess, topic: str
) -> None:
    client = await WireClient.open(hub.url, "ops-1", tok=token("ops-1", role="ops"))
    await client.send(frames.Subscribe(id=1, topic=topic))
    refused = await client.recv_type(frames.Error)
    assert (refused.code, refused.ref, refused.about) == (ErrorCode.UNSUPPORTED_TOPIC, 1, "sub")
    await client.send(frames.Subscribe(id=2, topic="basket:m1"))
    unknown = await client.recv_type(frames.Error)
    assert (unknown.code, unknown.ref) == (ErrorCode.UNKNOWN_TOPIC, 2)


async def test_a_cursor_ahead_of_the_topics_head_gets_a_reset_snapshot(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "pos-1")
    await client.send(add(1))
    await client.recv_type(frames.Ack)
    await client.send(frames.Subscribe(id=1, topic="cart:m1"))
    head = await client.recv_type(frames.Snapshot)
    ahead = frames.Cursor(head.cursor.epoch, head.cursor.offset + 5)
    await client.send(frames.Subscribe(id=2, topic="cart:m1", cursor=ahead))
    reset = await client.recv_type(frames.Snapshot)
    assert reset.reset and reset.state is not None and reset.cursor == head.cursor


async def test_a_cart_line_is_written_with_its_keys_in_the_documented_order(hub: HubProcess) -> None:
    for i, client_id in enumerate(["zz-9", "Ab-1", "ab-0"], start=1):
        writer = await WireClient.open(hub.url, client_id)
        await writer.send(frames.Op(seq=1, kind="cart.add", args={"member": "m1", "sku": "A", "qty": i}))
        await writer.recv_type(frames.Ack)
        await writer.close()
    reader = await WireClient.open(hub.url, "reader-1")
    await reader.send(frames.Subscribe(id=1, topic="cart:m1"))
    raw = await asyncio.wait_for(reader.ws.recv(), 10)
    assert isinstance(raw, bytes)
    line = msgspec.msgpack.decode(raw)["state"]["lines"]["A"]  # a plain dict keeps the order on the wire
    assert list(line) == ["qty", "vv", "dots"]
    assert list(line["vv"]) == ["Ab-1", "ab-0", "zz-9"]  # ascending UTF-8 bytes


async def test_a_token_accepted_within_the_clock_leeway_is_not_cut_off_at_once(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "pos-1", tok=token("pos-1", ttl_s=-1))  # exp 1-2 s ago
    assert client.welcome is not None  # within the 5 s leeway
    await asyncio.sleep(1.5)  # the hub's expiry check runs every half second
    await client.send(frames.Ping(ts=1))
    assert (await client.recv_type(frames.Pong)).echo_ts == 1
    assert await client.closed(timeout=15) == CloseCode.TOKEN_EXPIRED
