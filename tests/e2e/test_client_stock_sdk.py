"""The SDK's stock handle on a real hub, beyond selling: the view never shows an acked op undone, the change
stream tells each change with its cause, and the blocking facade offers the same methods."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from clients import ChangeCause, OpRejected, StockChange, SyncClient, SyncClientSync
from protocol import frames
from protocol import stock as rules
from syncd.embedded import EmbeddedRedis
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, WireClient, token
from tests.e2e.test_client_stock import SKU, setup_stock

pytestmark = pytest.mark.e2e
BRAND = {
    "SYNCD_STOCK_CLEARING_TIME": "03:30",
    "SYNCD_STOCK_CLEARING_TZ": "America/New_York",
    "SYNCD_STOCK_DEFAULT_HOLD": "900000",
}
"""A brand that clears holds at 03:30 New York time and holds a cart's reservation 15 minutes by default."""


async def test_an_acked_reservation_and_commit_show_in_the_view_at_once(
    hub: HubProcess, tmp_path: Path
) -> None:
    await setup_stock(hub, (rules.RESTOCK, {"qty": 10}), (rules.QUOTA, {"channel": "web", "qty": 5}))
    tok = token("app-1", channel="web")
    async with SyncClient(hub.url, token=tok, data_dir=tmp_path / "app", client_id="app-1") as client:
        stock = client.stock(SKU)
        await client.wait_synced(timeout=20)
        for _ in range(5):  # each read right after the ack, whether or not the event came first
            result = await (await stock.reserve("m1", 1, channel="web", ttl_ms=60_000)).acked()
            assert result is not None
            shown = stock.state
            before = (shown.pool, shown.atp["web"], shown.sold)
            assert await (await stock.commit("m1", result["rid"])).acked() == {}
            after = stock.state
            assert (after.pool, after.atp["web"], after.sold) == (before[0], before[1], before[2] + 1)
        state = stock.state
        assert (state.on_hand, state.pool, state.sold, state.atp) == (5, 5, 5, {"*": 5, "web": 0})
        await client.wait_synced(timeout=20)
        for _ in range(1000):  # the events catch up: the same figures, with nothing left pending
            if not stock.state.has_pending_writes:
                break
            await asyncio.sleep(0.02)
        state = stock.state
        assert (state.on_hand, state.pool, state.sold, state.has_pending_writes) == (5, 5, 5, False)


async def test_stock_rejections_are_kept_by_the_sdk_until_the_app_has_seen_them(
    hub: HubProcess, tmp_path: Path
) -> None:
    """A refused reservation is not dropped: it stays among the client's rejections, with its
    typed code, across a restart, until the application marks it seen."""
    await setup_stock(hub, (rules.RESTOCK, {"qty": 2}))
    tok, data_dir = token("app-1", channel="web"), tmp_path / "app"
    async with SyncClient(hub.url, token=tok, data_dir=data_dir, client_id="app-1") as client:
        stock = client.stock(SKU)
        await client.wait_synced(timeout=20)
        with pytest.raises(OpRejected):
            await (await stock.reserve("m1", 3, channel="web", ttl_ms=60_000)).acked()
    async with SyncClient(hub.url, token=tok, data_dir=data_dir, client_id="app-1") as client:
        kept = await client.pending_rejections()
        assert [(r.kind, r.code) for r in kept] == [("stock.reserve", "insufficient_stock")]
        await client.mark_seen(*kept)
        assert await client.pending_rejections() == []


async def test_a_stock_event_is_small_whatever_the_sku_has_seen(hub: HubProcess) -> None:
    """``stock:<sku>`` is the topic thousands of shoppers watch in a flash sale: each event carries the SKU's
    few figures (PROTOCOL.md §18), not its holds or their history: small however many there are."""
    await setup_stock(hub, (rules.RESTOCK, {"qty": 500}), (rules.QUOTA, {"channel": "web", "qty": 400}))
    watcher = await WireClient.open(hub.url, "watcher")
    await watcher.send(frames.Subscribe(id=1, topic=f"stock:{SKU}"))
    await watcher.recv_type(frames.Snapshot)
    shopper = await WireClient.open(hub.url, "shopper", tok=token("shopper", channel="web"))
    sizes = []
    for n in range(300):
        await shopper.op(
            rules.RESERVE, {"member": f"m{n}", "sku": SKU, "qty": 1, "channel": "web", "ttl_ms": 600_000}
        )
        assert (await shopper.recv_type(frames.Ack)).ok
        while True:
            raw = await asyncio.wait_for(watcher.ws.recv(), 10)
            assert isinstance(raw, bytes)
            event = watcher.decoder.decode(raw)
            if isinstance(event, frames.Event):
                break
        assert set(event.data) == {"on_hand", "pool", "sold", "atp", "allot"}
        sizes.append(len(raw))
    assert max(sizes) <= 256 and max(sizes) - min(sizes) <= 8, (min(sizes), max(sizes))


async def test_stock_changes_tell_another_devices_sale_and_our_own_ack(
    hub: HubProcess, tmp_path: Path
) -> None:
    await setup_stock(hub, (rules.RESTOCK, {"qty": 3}))
    watcher_tok, buyer_tok = token("app-w", channel="web"), token("app-b", channel="web")
    async with (
        SyncClient(hub.url, token=watcher_tok, data_dir=tmp_path / "w", client_id="app-w") as watcher,
        SyncClient(hub.url, token=buyer_tok, data_dir=tmp_path / "b", client_id="app-b") as buyer,
    ):
        watched = watcher.stock(SKU)
        await watcher.wait_synced(timeout=20)
        changes = watched.changes()
        bought = buyer.stock(SKU)
        await buyer.wait_synced(timeout=20)
        await (await bought.reserve("m2", 2, channel="web", ttl_ms=60_000)).acked()
        seen: StockChange = await asyncio.wait_for(anext(changes), 20)
        while seen.state.pool != 1:
            seen = await asyncio.wait_for(anext(changes), 20)
        assert seen.sku == SKU and seen.cause is ChangeCause.EVENT and seen.kind == rules.RESERVE
        assert seen.origin is not None and seen.origin[0] == "app-b" and seen.state.atp == {"*": 1}
        own = watched.changes()
        await (await watched.reserve("m1", 1, channel="web", ttl_ms=60_000)).acked()
        mine = await asyncio.wait_for(anext(own), 20)
        assert mine.state.pool == 0 and mine.kind == rules.RESERVE  # by the ack or by its event
        assert mine.cause in (ChangeCause.ACKED, ChangeCause.EVENT)
        await changes.aclose()
        await own.aclose()


def test_the_blocking_facade_reserves_commits_sells_and_streams(hub: HubProcess, tmp_path: Path) -> None:
    asyncio.run(setup_stock(hub, (rules.RESTOCK, {"qty": 10}), (rules.ALLOT, {"store": "s1", "qty": 2})))
    tok = token("pos-9", role="pos", store="s1", channel="pos")
    with SyncClientSync(hub.url, token=tok, data_dir=tmp_path / "pos", client_id="pos-9") as pos:
        stock = pos.stock(SKU)
        pos.wait_synced(timeout=20)
        assert stock.sku == SKU and stock.allotment("s1") == 2 and stock.error is None
        changes = stock.changes(timeout=20)
        held = stock.reserve("m1", 3, channel="pos", ttl_ms=60_000).result(timeout=20)
        assert stock.state.pool == 5
        assert stock.commit("m1", held["rid"]).result(timeout=20) == {}
        assert stock.state.sold == 3
        again = stock.reserve("m1", 1, channel="pos", ttl_ms=60_000).result(timeout=20)
        assert stock.release("m1", again["rid"]).result(timeout=20) == {}
        assert stock.sell("m2", 2, store="s1").result(timeout=20) == {}
        with pytest.raises(OpRejected) as beyond:
            stock.sell("m2", 1, store="s1")
        assert beyond.value.code == "allotment_exceeded"
        pos.wait_synced(timeout=20)
        assert any(isinstance(change, StockChange) for change in changes)
        state = stock.state
        assert (state.on_hand, state.pool, state.sold, state.allot) == (5, 5, 5, {"s1": 0})
        stock.unsubscribe()


async def test_holds_end_at_the_brands_clearing_time_or_the_hubs_default(
    redis_server: EmbeddedRedis, hub_factory: HubFactory, tmp_path: Path
) -> None:
    hub = hub_factory(redis_server.url, **BRAND)
    await setup_stock(hub, (rules.RESTOCK, {"qty": 10}))
    tok = token("app-1", channel="web")
    async with SyncClient(hub.url, token=tok, data_dir=tmp_path / "app", client_id="app-1") as client:
        stock = client.stock(SKU)
        await client.wait_synced(timeout=20)
        before = int(time.time() * 1000)
        clearing = await (await stock.reserve("m1", 1, channel="web", until=rules.CLEARING)).acked()
        assert clearing is not None
        local = dt.datetime.fromtimestamp(clearing["until"] / 1000, ZoneInfo("America/New_York"))
        assert (local.hour, local.minute, local.second) == (3, 30, 0)
        assert before < clearing["until"] <= before + 24 * 3600 * 1000
        default = await (await stock.reserve("m1", 1, channel="web")).acked()
        after = int(time.time() * 1000)
        assert default is not None and before + 900_000 <= default["until"] <= after + 900_000
        absolute = await (await stock.reserve("m1", 1, channel="web", until=before + 7_200_000)).acked()
        assert absolute is not None and absolute["until"] == before + 7_200_000
        with pytest.raises(OpRejected) as past:
            await (await stock.reserve("m1", 1, channel="web", until=before - 1)).acked()
        assert past.value.code == "bad_args"
        with pytest.raises(OpRejected) as both:
            await stock.reserve("m1", 1, channel="web", ttl_ms=1000, until=rules.CLEARING)
        assert both.value.code == "bad_args"  # refused at the call site: nothing stored
