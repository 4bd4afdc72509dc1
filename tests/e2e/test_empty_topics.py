"""Carts never written cost nothing in Redis, and a cursor taken from one still misses nothing.

Real hub processes and a real Redis; the wire client shows the exact frames, the SDK that a device follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from clients import ChangeCause, SyncClient
from clients.client import Cart
from protocol import frames
from syncd.embedded import EmbeddedRedis
from tests.e2e.harness import HubProcess, WireClient, token

pytestmark = pytest.mark.e2e

EMPTY = frames.Cursor(frames.EMPTY_EPOCH, 0)


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_subscribing_to_1000_never_written_carts_creates_no_key(hub: HubProcess, redis: Redis) -> None:
    browser = await WireClient.open(hub.url, "browse-1")
    before = await redis.dbsize()
    for start in range(0, 1000, 100):  # 100 at a time: the connection's subscription limit
        topics = [f"cart:never-{i}" for i in range(start, start + 100)]
        for i, topic in enumerate(topics, start):
            await browser.send(frames.Subscribe(id=i, topic=topic))
        for i, topic in enumerate(topics, start):
            snap = await browser.recv_type(frames.Snapshot)
            assert (snap.id, snap.topic, snap.cursor, snap.state) == (i, topic, EMPTY, {"lines": {}})
        for topic in topics:
            await browser.send(frames.Unsubscribe(topic=topic))
    await browser.send(frames.Ping(ts=1))
    await browser.recv_type(frames.Pong)  # every sub and unsub was handled
    assert await redis.dbsize() == before


async def test_a_cursor_of_a_never_written_cart_receives_its_first_writes_live_and_on_resume(
    hub: HubProcess,
) -> None:
    watcher = await WireClient.open(hub.url, "watch-1")
    await watcher.send(frames.Subscribe(id=1, topic="cart:m1"))
    assert (await watcher.recv_type(frames.Snapshot)).cursor == EMPTY
    writer = await WireClient.open(hub.url, "app-1")
    await writer.op("cart.add", {"member": "m1", "sku": "tea", "qty": 1}, hlc=1)
    # Live: the first event opens a new epoch; the hub says where the empty state sits in it, then sends it.
    moved = await watcher.recv()
    assert isinstance(moved, frames.Snapshot) and moved.id == 1
    assert (moved.state, moved.reset, moved.cursor.offset) == (None, False, 0)
    epoch = moved.cursor.epoch
    assert epoch != frames.EMPTY_EPOCH
    first = await watcher.recv_type(frames.Event)
    assert first.cursor == frames.Cursor(epoch, 1) and first.data["lines"]["tea"]["qty"] == 1
    await writer.op("cart.add", {"member": "m1", "sku": "cake", "qty": 2}, hlc=2)
    assert (await watcher.recv_type(frames.Event)).cursor == frames.Cursor(epoch, 2)

    # On resume: a device that kept the empty cursor while offline gets the missed events, not a reset.
    late = await WireClient.open(hub.url, "watch-2")
    await late.send(frames.Subscribe(id=7, topic="cart:m1", cursor=EMPTY))
    snap = await late.recv_type(frames.Snapshot)
    assert (snap.id, snap.cursor, snap.state, snap.reset) == (7, frames.Cursor(epoch, 0), None, False)
    missed = [await late.recv_type(frames.Event) for _ in range(2)]
    assert [e.cursor.offset for e in missed] == [1, 2]

    # A cursor of the empty state that no longer holds (lines written since that history began elsewhere)
    # cannot be resumed: another offset of the empty epoch is answered with a reset.
    await late.send(frames.Subscribe(id=8, topic="cart:m1", cursor=frames.Cursor(frames.EMPTY_EPOCH, 5)))
    reset = await late.recv_type(frames.Snapshot)
    assert reset.reset and reset.state is not None and set(reset.state["lines"]) == {"tea", "cake"}


def sdk(hub: HubProcess, data_dir: Path, client_id: str) -> SyncClient:
    return SyncClient(hub.url, token=token(client_id), data_dir=data_dir, client_id=client_id)


async def causes_until(cart: Cart, qty: dict[str, int], seen: list[ChangeCause]) -> None:
    async for change in cart.changes():
        seen.append(change.cause)
        if {sku: line.qty for sku, line in change.lines.items()} == qty:
            return


async def test_an_sdk_device_that_saw_a_never_written_cart_follows_its_first_writes_as_events(
    hub: HubProcess, tmp_path: Path
) -> None:
    writer = await WireClient.open(hub.url, "app-1")
    async with sdk(hub, tmp_path / "d", "dev-1") as device:
        cart = device.cart("m2")
        await device.wait_synced(20)
        seen: list[ChangeCause] = []
        following = asyncio.create_task(causes_until(cart, {"tea": 1}, seen))
        await asyncio.sleep(0)
        await writer.op("cart.add", {"member": "m2", "sku": "tea", "qty": 1}, hlc=1)
        await asyncio.wait_for(following, 20)
        assert seen == [ChangeCause.EVENT]  # not a snapshot fetched again
    # Offline, then back: the cursor it kept resumes in the new history.
    await writer.op("cart.add", {"member": "m3", "sku": "tea", "qty": 1}, hlc=2)
    async with sdk(hub, tmp_path / "e", "dev-2") as device:
        cart = device.cart("m3x")
        await device.wait_synced(20)
    await writer.op("cart.add", {"member": "m3x", "sku": "cake", "qty": 3}, hlc=3)
    async with sdk(hub, tmp_path / "e", "dev-2") as device:
        cart = device.cart("m3x")
        seen = []
        following = asyncio.create_task(causes_until(cart, {"cake": 3}, seen))
        await asyncio.wait_for(following, 20)
        assert ChangeCause.RESET not in seen and ChangeCause.SNAPSHOT not in seen
        assert seen[-1] is ChangeCause.EVENT
