"""The dashboard's stock panel reads the watched SKUs' state from Redis (standalone and cluster): buckets,
available to promise per channel, holds."""

from __future__ import annotations

from typing import Any

from protocol import frames
from protocol import stock as rules
from syncd.stockwatch import read_stock
from syncd.store import RedisStore


async def test_the_panel_reads_buckets_atp_per_channel_and_holds_of_each_sku(
    store: RedisStore, redis_client: Any
) -> None:
    for seq, (kind, args) in enumerate(
        (
            (rules.RESTOCK, {"qty": 10}),
            (rules.QUOTA, {"channel": "web", "qty": 6}),
            (rules.ALLOT, {"store": "s1", "qty": 2}),
            (rules.RESERVE, {"channel": "web", "qty": 3, "ttl_ms": 60_000}),
            (rules.RESERVE, {"channel": "app", "qty": 1, "ttl_ms": 60_000}),
            (rules.SELL, {"store": "s1", "qty": 1}),
        ),
        1,
    ):
        op = frames.Op(seq=seq, kind=kind, args={"member": "m1", "sku": "SKU-1", **args})
        assert (await store.apply_op("ops", op)).ok, kind
    rows = await read_stock(redis_client, ["SKU-1", "SKU-NEVER"])
    assert rows["SKU-1"] == {
        "on_hand": 9,
        "pool": 4,
        "sold": 1,
        "held": 4,
        "holds": 2,
        "atp": {"*": 4, "web": 3},
        "allot": {"s1": 1},
    }
    assert rows["SKU-NEVER"] is None  # never written: nothing to show, and nothing is created
    assert await redis_client.exists("{sku:SKU-NEVER}:stock") == 0
