"""``RedisStore.write_many``: one script for several calls, in one pipeline, as a write step (the marks of a
batch of stock sales, syncd/storefeed.py): every call runs and is answered in order, on Redis and on Redis
Cluster, after a server forgot its scripts, and with the fsync durability wait."""

from __future__ import annotations

from redis.asyncio import Redis

from protocol import frames
from protocol import stock as rules
from syncd.embedded import EmbeddedRedis
from syncd.redis_info import make_client
from syncd.store import RedisStore
from syncd.storefeed import StoreFeed
from syncd.types.store import due_key


def sell(seq: int, sku: str, store: str) -> frames.Op:
    return frames.Op(seq=seq, kind=rules.SELL, args={"member": "m1", "sku": sku, "store": store, "qty": 1})


SALES = [sell(1, "SKU-1", "s1"), sell(2, "SKU-2", "s2"), sell(3, "SKU-1", "s1"), sell(4, "SKU-3", "s3")]


async def marked(store: RedisStore) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in ("s1", "s2", "s3"):
        raw = await store._client.hgetall(due_key(name))
        found[name] = {k.decode() if isinstance(k, bytes) else k for k in raw}
    return found


async def test_a_batch_of_sales_marks_every_store_each_sale_may_change(store: RedisStore) -> None:
    marks = await StoreFeed(store).mark("pos-1", SALES)
    assert [m.seq for m in marks] == [1, 2, 3, 4]
    assert await marked(store) == {
        "s1": {"SKU-1|pos-1|1", "SKU-1|pos-1|3"},
        "s2": {"SKU-2|pos-1|2"},
        "s3": {"SKU-3|pos-1|4"},
    }


async def test_every_call_is_answered_in_order(store: RedisStore) -> None:
    calls = [([due_key(f"s{i}")], [f"m|c|{i}", 1000 + i]) for i in (1, 2, 3)]
    assert await store.write_many("store_mark", calls) == [1, 1, 1]
    assert await store.write_many("store_mark", []) == []


async def test_a_server_that_forgot_its_scripts_still_runs_every_call(
    standalone_server: EmbeddedRedis,
) -> None:
    client = Redis.from_url(standalone_server.url)
    try:
        await client.flushall()
        await client.script_flush()
        store = RedisStore(client)
        await StoreFeed(store).mark("pos-1", SALES)
        assert sum(len(v) for v in (await marked(store)).values()) == 4
    finally:
        await client.aclose()


async def test_with_fsync_durability_the_marks_are_made_and_confirmed(valkey_server: EmbeddedRedis) -> None:
    client = make_client(valkey_server.url, timeout_s=2.0)
    try:
        store = RedisStore(client, durability="fsync", fsync_timeout_ms=2000)
        await StoreFeed(store).mark("pos-1", SALES)
        assert sum(len(v) for v in (await marked(store)).values()) == 4
    finally:
        await client.aclose()
