"""Two stores' tills sell offline past each other's knowledge, through the real SDK and real hubs, then
replay: every sale within its store's allotment is accepted, the SDK refused the one beyond it at the call
site while offline, and no term of the SKU's stock goes below zero (docs/design.md §3, "Inventory").

Offline is a network outage: each till talks to its hub through a TCP proxy that is pointed at a closed port
and reset, so its reconnects fail until the proxy points at the hub again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import OpRejected, Status, SyncClient
from clients.handles import OpHandle
from protocol import frames
from protocol import stock as rules
from protocol.errors import ErrorCode
from syncd.embedded import EmbeddedRedis
from tests.clients.hubtools import TcpProxy
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import WireClient, free_port, token
from tests.e2e.test_stock_escrow import admin, checked_stock

pytestmark = pytest.mark.e2e
SKU = "POS-2"


def quick() -> Iterator[float]:
    while True:
        yield 0.05


async def until_offline(client: SyncClient) -> Status:
    async with asyncio.timeout(15):
        async for status in client.status_changes():
            if not status.online:
                return status
    raise AssertionError("the client closed first")


async def test_two_stores_sell_offline_past_each_other_and_every_sale_within_its_allotment_replays(
    redis_server: EmbeddedRedis, hub_factory: HubFactory, tmp_path: Path
) -> None:
    hub_a, hub_b = hub_factory(redis_server.url), hub_factory(redis_server.url)
    await admin(
        hub_a,
        SKU,
        (rules.RESTOCK, {"qty": 20}),
        (rules.ALLOT, {"store": "s1", "qty": 5}),
        (rules.ALLOT, {"store": "s2", "qty": 3}),
    )
    async with TcpProxy(hub_a.port) as proxy_1, TcpProxy(hub_b.port) as proxy_2:
        till_1, till_2 = (
            SyncClient(
                proxy.url,
                token=token(f"pos-{n}", role="pos", store=f"s{n}"),
                data_dir=tmp_path / f"pos-{n}",
                client_id=f"pos-{n}",
                backoff=quick,
            )
            for n, proxy in ((1, proxy_1), (2, proxy_2))
        )
        async with till_1, till_2:
            stock_1, stock_2 = till_1.stock(SKU), till_2.stock(SKU)
            await till_1.wait_synced(timeout=20)
            await till_2.wait_synced(timeout=20)
            assert (stock_1.allotment("s1"), stock_2.allotment("s2")) == (5, 3)

            dead = free_port()  # the network goes: both tills lose their hub
            for proxy in (proxy_1, proxy_2):
                proxy.target_port = dead
                proxy.drop_all()
            await until_offline(till_1)
            await until_offline(till_2)

            # Each sells what its store holds, knowing nothing of the other's sales; one unit more is
            # refused by the SDK at the call site (the hub is unreachable: nothing was sent).
            sales: list[OpHandle] = [
                await stock_1.sell("m1", 2, store="s1"),
                await stock_2.sell("m2", 3, store="s2"),
                await stock_1.sell("m3", 3, store="s1"),
            ]
            for stock, store in ((stock_1, "s1"), (stock_2, "s2")):
                with pytest.raises(OpRejected) as beyond:
                    await stock.sell("m4", 1, store=store)
                assert beyond.value.code == ErrorCode.ALLOTMENT_EXCEEDED
                assert stock.allotment(store) == 0 and stock.state.has_pending_writes
            # Meanwhile online: the pool sells and s2 is given more; neither till knows yet.
            await admin(hub_b, SKU, (rules.ALLOT, {"store": "s2", "qty": 4}))
            shopper = await WireClient.open(hub_a.url, "web-1", tok=token("web-1", channel="web"))
            await shopper.op(
                rules.RESERVE, {"member": "m5", "sku": SKU, "channel": "web", "qty": 8, "ttl_ms": 600_000}
            )
            assert (await shopper.recv_type(frames.Ack)).ok

            for proxy, hub in ((proxy_1, hub_a), (proxy_2, hub_b)):  # the network is back: both replay
                proxy.target_port = hub.port
            await till_1.wait_synced(timeout=30)
            await till_2.wait_synced(timeout=30)
            assert [await sale.acked() for sale in sales] == [{}, {}, {}]
            assert proxy_1.connections >= 2 and proxy_2.connections >= 2  # they did reconnect

    state, _, _ = await checked_stock(redis_server.url, SKU)
    assert (state["a:s1"], state["a:s2"], state["sold"]) == (0, 4, 8)
    assert (state["on_hand"], state["pool"], state["held"]) == (12, 20 - 5 - 3 - 4 - 8, 8)
