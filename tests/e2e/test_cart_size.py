"""The poison cart through real hub processes, a real Redis and the SDK: bounded at write time, and a cart at
its bound still syncs to a fresh device, in pages no larger than a client accepts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from clients import OpRejected, SyncClient
from protocol import cart as rules
from protocol import codec, frames
from protocol.snapshots import SnapshotAssembler
from syncd.embedded import EmbeddedRedis
from syncd.store.redis_store import member_slot
from tests.e2e.harness import HubProcess, WireClient, token
from tests.protocol.helpers import long_attrs

pytestmark = pytest.mark.e2e


async def fill(hub: HubProcess, member: str) -> list[frames.Ack]:
    """An app writing 24 skus x 17 adds with 16 long attrs each: the poison cart."""
    app = await WireClient.open(hub.url, "app-poison")
    sent = []
    for sku in range(24):
        for _ in range(17):
            args = {"member": member, "sku": f"S{sku}", "qty": 1, "attrs": long_attrs(str(app.seq + 1))}
            sent.append(await app.op("cart.add", args, hlc=app.seq + 1))
    acks = [await app.recv_type(frames.Ack, timeout=30) for _ in sent]
    await app.close()
    return acks


async def snapshot_frames(hub: HubProcess, member: str) -> list[bytes]:
    """The raw messages that answer a fresh ``sub``, up to the one that carries the cursor."""
    client = await WireClient.open(hub.url, "inspector", tok=token("inspector", role="ops"))
    await client.send(frames.Subscribe(id=1, topic=f"cart:{member}"))
    received: list[bytes] = []
    while True:
        data = await asyncio.wait_for(client.ws.recv(), 10)
        assert isinstance(data, bytes)
        frame = client.decoder.decode(data)  # within the client's limits, or it raises
        if isinstance(frame, frames.Snapshot):
            received.append(data)
            if frame.cursor is not None:
                await client.close()
                return received


async def snapshot_lines(hub: HubProcess, member: str, *, pages: int = 1) -> dict[str, Any]:
    """The cart's lines from a fresh ``sub``, checking every message against the client's limits; at least
    ``pages`` messages."""
    data = await snapshot_frames(hub, member)
    assert len(data) >= pages
    assert all(len(d) <= codec.CLIENT_LIMITS.max_frame for d in data)
    assembler = SnapshotAssembler()
    decoder = codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS)
    parts = [assembler.add(decoder.decode(d)) for d in data]  # type: ignore[arg-type]
    whole = parts[-1]
    assert whole is not None and whole.state is not None
    lines: dict[str, Any] = whole.state["lines"]
    return lines


async def test_a_cart_at_its_bound_syncs_to_a_fresh_device_and_a_write_beyond_is_a_kept_rejection(
    hub: HubProcess, tmp_path: Path
) -> None:
    acks = await fill(hub, "m-poison")
    codes = [a.code for a in acks]
    assert set(codes) == {None, "too_large"}  # the cart filled up, then refused to grow

    # Its snapshot is within what a client accepts (whole, or in pages if the frame's own bytes tip it over).
    lines = await snapshot_lines(hub, "m-poison")
    assert sum(rules.line_bytes(li) for li in lines.values()) > rules.MAX_CART_BYTES - rules.MAX_LINE_BYTES
    assert sum(rules.line_bytes(li) for li in lines.values()) <= rules.MAX_CART_BYTES

    # A fresh device (the member's own phone) syncs it, then writes beyond the bound: a typed rejection,
    # kept until the application saw it.
    async with SyncClient(
        hub.url, token=token("phone-1"), data_dir=tmp_path / "phone", client_id="phone-1"
    ) as phone:
        cart = phone.cart("m-poison")
        await phone.wait_synced(30)
        assert {sku: line.qty for sku, line in cart.lines.items()} == {
            s: li["qty"] for s, li in lines.items()
        }
        handle = await cart.add("ONE-MORE", 1, attrs=long_attrs("x"))
        with pytest.raises(OpRejected) as info:
            await asyncio.wait_for(handle.acked(), 30)
        assert info.value.code == "too_large"
        assert "ONE-MORE" not in cart.lines
        rejections = phone.rejections()
        rejection = await asyncio.wait_for(anext(rejections), 10)
        assert (rejection.seq, rejection.code) == (handle.seq, "too_large")
        await rejections.aclose()
        # Ops that do not grow the cart still work at the bound.
        removed = await cart.remove("S0")
        assert await asyncio.wait_for(removed.acked(), 30) == {"qty": 0}


async def test_a_cart_stored_over_the_bound_by_an_older_hub_syncs_in_pages_and_only_shrinks(
    hub: HubProcess, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # What a hub without the size bounds left in Redis: the poison cart, 2 MiB and more. Before pages, a
    # device could never receive its snapshot (the frame is over the client's 1 MiB: close 1009, forever).
    cart, seq = rules.empty_cart(), 0
    for sku in range(24):
        for _ in range(17):
            seq += 1
            op = rules.CartOp(rules.ADD, "old-app", seq, seq, {}, f"S{sku}", 1, long_attrs(str(seq)))
            cart = rules._apply(cart, op, rules.MAX_DOTS, 1 << 62, 1 << 62).cart  # unbounded, as it was
    assert rules.cart_bytes(cart) > 2 * rules.MAX_CART_BYTES
    redis = Redis.from_url(redis_server.url)
    slot = member_slot("m-old")
    await redis.hset(
        f"{slot}:cart", mapping={s: msgspec.msgpack.encode(li) for s, li in cart["lines"].items()}
    )
    await redis.hset(f"{slot}:cart:meta", "fold", cart["folds"])
    await redis.aclose()

    lines = await snapshot_lines(hub, "m-old", pages=3)
    assert lines == rules.snapshot(cart)["lines"]
    async with SyncClient(
        hub.url, token=token("phone-2"), data_dir=tmp_path / "phone", client_id="phone-2"
    ) as phone:
        held = phone.cart("m-old")
        await phone.wait_synced(30)
        assert {sku: line.qty for sku, line in held.lines.items()} == {sku: 17 for sku in cart["lines"]}
        grow = await held.add("NEW", 1, attrs={"gift": True})
        with pytest.raises(OpRejected) as info:
            await asyncio.wait_for(grow.acked(), 30)
        assert info.value.code == "too_large"  # over the bound already: it may only shrink
        shrink = await held.remove("S1")
        assert await asyncio.wait_for(shrink.acked(), 30) == {"qty": 0}
        assert "S1" not in held.lines
