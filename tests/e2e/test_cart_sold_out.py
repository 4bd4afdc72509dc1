"""Sold-out reaching open carts, through a real hub and real SDK clients: a cart follows the stock of the SKUs
on its lines, hears live when one sells out (a typed ``SoldOut`` change and ``cart.sold_out``), hears it
come back on a restock, and stops following a SKU once its line is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients import Cart, CartChange, SoldOut, SyncClient, SyncClientSync
from protocol import stock as rules
from syncd.embedded import EmbeddedRedis
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, token
from tests.e2e.test_client_stock import SKU, setup_stock

pytestmark = pytest.mark.e2e


async def next_sold_out(changes: object, cart: Cart) -> SoldOut:
    """The next ``SoldOut`` change of ``cart`` (other changes skipped), within 20 s."""
    assert hasattr(changes, "__anext__")
    while True:
        change: CartChange = await asyncio.wait_for(changes.__anext__(), 20)
        assert change.member == cart.member
        if isinstance(change, SoldOut):
            return change


async def test_a_cart_holding_a_sku_hears_it_sell_out_and_come_back(hub: HubProcess, tmp_path: Path) -> None:
    await setup_stock(hub, (rules.RESTOCK, {"qty": 1}))
    shopper_tok, buyer_tok = token("app-s", channel="web"), token("app-b", channel="web")
    async with (
        SyncClient(
            hub.url, token=shopper_tok, data_dir=tmp_path / "s", client_id="app-s", follow_stock=32
        ) as shopper,
        SyncClient(hub.url, token=buyer_tok, data_dir=tmp_path / "b", client_id="app-b") as buyer,
    ):
        cart = shopper.cart("m1")
        await (await cart.add(SKU, 1)).acked()
        await (await cart.add("OTHER-1", 1)).acked()
        await shopper.wait_synced(timeout=20)
        assert cart.following == frozenset({SKU, "OTHER-1"})
        assert cart.sold_out == frozenset({"OTHER-1"})  # never stocked: nothing to promise
        changes = cart.changes()
        stock = buyer.stock(SKU)
        await buyer.wait_synced(timeout=20)
        held = await (await stock.reserve("m2", 1, channel="web", ttl_ms=60_000)).acked()
        assert held is not None
        heard = await next_sold_out(changes, cart)
        assert heard.sold_out == frozenset({SKU, "OTHER-1"}) and heard.skus == frozenset({SKU})
        assert cart.sold_out == frozenset({SKU, "OTHER-1"}) and SKU in cart.lines
        await setup_stock(hub, (rules.RESTOCK, {"qty": 5}))
        back = await next_sold_out(changes, cart)
        assert back.sold_out == frozenset({"OTHER-1"}) and cart.sold_out == frozenset({"OTHER-1"})
        await (await cart.remove(SKU)).acked()
        await shopper.wait_synced(timeout=20)
        assert cart.following == frozenset({"OTHER-1"})
        assert f"stock:{SKU}" not in shopper._engine.topics  # unsubscribed once no line needs it
        await changes.aclose()


async def test_following_is_bounded_and_an_apps_own_stock_handle_outlives_the_line(
    hub: HubProcess, tmp_path: Path
) -> None:
    tok = token("app-f", channel="web")
    async with SyncClient(
        hub.url, token=tok, data_dir=tmp_path / "f", client_id="app-f", follow_stock=3
    ) as app:
        cart = app.cart("m1")
        for i in range(5):
            await cart.add(f"SKU-{i}", 1)
        assert cart.following == frozenset({"SKU-0", "SKU-1", "SKU-2"})  # the first three, by SKU
        own = app.stock("SKU-0")  # the app's own handle: kept when the cart lets go
        await cart.remove("SKU-0")
        assert cart.following == frozenset({"SKU-1", "SKU-2", "SKU-3"})
        await app.wait_synced(timeout=20)
        assert "stock:SKU-0" in app._engine.topics and own.state.pool == 0
        await cart.remove("SKU-1")
        assert "stock:SKU-1" not in app._engine.topics


async def test_by_default_a_cart_follows_no_stock(hub: HubProcess, tmp_path: Path) -> None:
    async with SyncClient(hub.url, token=token("app-n"), data_dir=tmp_path / "n", client_id="app-n") as app:
        cart = app.cart("m1")
        await (await cart.add(SKU, 1)).acked()
        await app.wait_synced(timeout=20)
        assert cart.following == frozenset() and cart.sold_out == frozenset()
        assert app._engine.topics == ["cart:m1"]


async def test_a_sku_followed_for_a_cart_is_not_stored_and_is_followed_again_after_a_restart(
    hub: HubProcess, tmp_path: Path
) -> None:
    options = {"token": token("app-r"), "data_dir": tmp_path / "r", "client_id": "app-r", "follow_stock": 8}
    async with SyncClient(hub.url, **options) as app:  # type: ignore[arg-type]
        cart = app.cart("m1")
        await (await cart.add(SKU, 1)).acked()
        app.stock("KEPT-1")  # asked for by the application: stored
        await app.wait_synced(timeout=20)
        assert sorted(app._engine.topics) == ["cart:m1", "stock:KEPT-1", f"stock:{SKU}"]
    async with SyncClient(hub.url, online=False, **options) as app:  # type: ignore[arg-type]
        stored = sorted(record.topic for record in await app._store_().topics())
        assert stored == ["cart:m1", "stock:KEPT-1"]
        assert app.cart("m1").following == frozenset({SKU})  # followed again with its stored cart
        assert f"stock:{SKU}" in app._engine.topics


def test_the_blocking_facade_shows_sold_out_lines_and_their_change(hub: HubProcess, tmp_path: Path) -> None:
    asyncio.run(setup_stock(hub, (rules.RESTOCK, {"qty": 1})))
    tok = token("pos-s", channel="web")
    with SyncClientSync(
        hub.url, token=tok, data_dir=tmp_path / "p", client_id="pos-s", follow_stock=4
    ) as pos:
        cart = pos.cart("m1")
        cart.add(SKU, 1).result(timeout=20)
        pos.wait_synced(timeout=20)
        assert cart.sold_out == frozenset()
        changes = cart.changes(timeout=20)
        pos.stock(SKU).reserve("m2", 1, channel="web", ttl_ms=60_000).result(timeout=20)
        heard = next(change for change in changes if isinstance(change, SoldOut))
        assert heard.sold_out == frozenset({SKU}) and cart.sold_out == frozenset({SKU})


async def test_a_follow_the_hub_refuses_is_dropped_without_failing_the_client(
    redis_server: EmbeddedRedis, hub_factory: HubFactory, tmp_path: Path
) -> None:
    hub = hub_factory(redis_server.url, SYNCD_MAX_SUBSCRIPTIONS="2")  # the cart and one stock topic
    tok = token("app-x")
    async with SyncClient(
        hub.url, token=tok, data_dir=tmp_path / "x", client_id="app-x", follow_stock=8
    ) as app:
        cart = app.cart("m1")
        for sku in ("A-1", "B-1", "C-1"):
            await (await cart.add(sku, 1)).acked()
        await app.wait_synced(timeout=20)  # a refused follow is the SDK's own business: not an error here
        assert len(cart.following) == 1 and cart.following <= {"A-1", "B-1", "C-1"}
        assert len(cart.lines) == 3
