"""``store:<store>`` fed from its SKUs' stock (syncd/storefeed.py, syncd/types/store.py) against real Redis
and Redis Cluster: every allot and sell reaches the store's topic once, a hub dying between the SKU op and the
forward loses nothing (the sweep forwards the mark), and a forward replayed or overtaken changes nothing."""

from __future__ import annotations

import time
from typing import Any

from protocol import frames
from protocol import stock as rules
from protocol.types.store import SKU_CHANGED
from syncd.store import OpOutcome, RedisStore
from syncd.storefeed import StoreFeed, marks_of
from syncd.types.store import forward

SKU = "SKU-T"
K = SKU_CHANGED


class Hubside:
    """One client's ops as the hub runs them: mark, apply, and (unless ``crash``) forward."""

    def __init__(self, store: RedisStore, client_id: str) -> None:
        self.store, self.feed, self.client_id, self.seq = store, StoreFeed(store), client_id, 0

    async def op(self, kind: str, *, crash: bool = False, **args: Any) -> OpOutcome:
        self.seq += 1
        op = frames.Op(seq=self.seq, kind=kind, args={"member": "m1", "sku": SKU, **args})
        marks = await self.feed.mark(self.client_id, [op])
        outcome = await self.store.apply_op(self.client_id, op)
        if not crash:
            await self.feed.forward(self.client_id, marks, [op.seq])
        return outcome


async def events(store: RedisStore, name: str) -> list[frames.Event]:
    found = await store.events_after(name, frames.Cursor(frames.EMPTY_EPOCH, 0))
    assert found is not None
    return found


async def test_every_allot_and_sale_reaches_the_stores_topic(store: RedisStore) -> None:
    _, empty = await store.snapshot("store:s1")
    assert empty == {"skus": {}}
    ops = Hubside(store, "ops")
    assert (await ops.op(rules.RESTOCK, qty=10)).ok
    assert (await ops.op(rules.ALLOT, store="s1", qty=4)).ok
    assert (await ops.op(rules.ALLOT, store="s2", qty=3)).ok
    till = Hubside(store, "till-1")
    assert (await till.op(rules.SELL, store="s1", qty=1)).ok
    assert (await till.op(rules.SELL, store="s1", qty=9)).code == "allotment_exceeded"  # no change: no event
    got = await events(store, "store:s1")
    assert [(e.kind, e.data["allot"], e.origin) for e in got] == [
        ("store.sku", 4, None),
        ("store.sku", 3, None),
    ]
    assert got[-1].data == {"sku": SKU, "allot": 3, "recall": 0, "to": None}
    cursor, state = await store.snapshot("store:s1")
    assert state == {"skus": {SKU: {"allot": 3, "recall": 0, "to": None}}} and cursor == got[-1].cursor
    assert [e.data["allot"] for e in await events(store, "store:s2")] == [3]


async def test_a_hub_dying_between_the_op_and_the_forward_loses_nothing(
    store: RedisStore, redis_client: Any
) -> None:
    ops = Hubside(store, "ops")
    await ops.op(rules.RESTOCK, qty=10)
    await ops.op(rules.ALLOT, store="s1", qty=5, crash=True)  # applied, never forwarded
    assert await events(store, "store:s1") == []
    await store.sweep()  # another hub's sweep finds the mark
    await store.sweep()  # and forwarded it once
    assert [e.data["allot"] for e in await events(store, "store:s1")] == [5]
    assert await redis_client.hlen("{s:s1}:due") == 0


async def test_a_mark_waits_for_its_op_and_a_replayed_forward_adds_nothing(store: RedisStore) -> None:
    ops = Hubside(store, "ops")
    await ops.op(rules.RESTOCK, qty=10)
    op = frames.Op(seq=2, kind=rules.ALLOT, args={"member": "m1", "sku": SKU, "store": "s1", "qty": 2})
    marks = await ops.feed.mark("ops", [op])  # marked, not run yet (the hub died before the op)
    await store.sweep()
    assert await events(store, "store:s1") == []
    await store.apply_op("ops", op)  # the client sent it again, to another hub that died after it
    await store.sweep()
    await ops.feed.forward("ops", marks, [2])  # the first hub's forward, late: same version, no event
    await forward(store.scripting(), SKU, "s1")
    assert [e.data["allot"] for e in await events(store, "store:s1")] == [2]


async def test_an_overtaken_forward_never_shows_an_older_value(store: RedisStore) -> None:
    ops = Hubside(store, "ops")
    await ops.op(rules.RESTOCK, qty=10)
    await ops.op(rules.ALLOT, store="s1", qty=2)
    tools = store.scripting()
    stale = await tools.run(
        "stock_forward_read",
        ["{sku:SKU-T}:stock", "{sku:SKU-T}:recall", "{sku:SKU-T}:top:stock", "{sku:SKU-T}:d:x"],
        ["s1", 0],
    )
    await ops.op(rules.ALLOT, store="s1", qty=3)  # allot 5, forwarded
    _, allot, recall, to, epoch, offset = stale
    keys = ["{s:s1}:store", "{s:s1}:top:store", "{s:s1}:log:store", "{s:s1}:due"]
    argv = [
        tools.epoch(),
        "ev:store:s1",
        "store:s1",
        *tools.log_argv,
        SKU,
        allot,
        recall,
        to,
        epoch,
        offset,
        "",
    ]
    assert (await tools.run("store_put", keys, argv))[0] == 0  # the older read arrives last: refused
    _, state = await store.snapshot("store:s1")
    assert state["skus"][SKU]["allot"] == 5


async def test_the_sweep_drops_marks_it_can_never_forward(store: RedisStore, redis_client: Any) -> None:
    await redis_client.hset("{s:s1}:due", mapping={"garbage": "1", f"{SKU}|gone|7": "0"})  # 0: long ago
    now = str(time.time_ns() // 1_000_000)
    await redis_client.hset("{s:s1}:due", f"{SKU}|late|1", now)  # recent, its op not settled yet: kept
    await store.sweep()
    assert await redis_client.hkeys("{s:s1}:due") == [f"{SKU}|late|1".encode()]


def test_only_ops_that_may_change_a_store_are_marked_and_only_with_valid_keys() -> None:
    def op(seq: int, kind: str, **args: Any) -> frames.Op:
        return frames.Op(seq=seq, kind=kind, args={"member": "m", **args})

    ops = [
        op(1, rules.RESERVE, sku=SKU, channel="web", qty=1, ttl_ms=1),
        op(2, rules.SELL, sku="bad sku", store="s1", qty=1),
        op(3, rules.YIELD, sku=SKU, store="s1", qty=1, to="s2"),
        op(4, rules.ALLOT, sku=SKU, store="no:colons", qty=1),
    ]
    marks = marks_of("c", ops)
    assert [(m.seq, m.store, m.name) for m in marks] == [(3, "s1", f"{SKU}|c|3"), (3, "s2", f"{SKU}|c|3")]


async def test_a_mark_whose_op_did_not_settle_in_the_batch_is_left_to_the_sweep(store: RedisStore) -> None:
    ops = Hubside(store, "ops")
    await ops.op(rules.RESTOCK, qty=10)
    op = frames.Op(seq=2, kind=rules.ALLOT, args={"member": "m1", "sku": SKU, "store": "s1", "qty": 2})
    marks = await ops.feed.mark("ops", [op])
    await store.apply_op("ops", op)
    await ops.feed.forward("ops", marks, [])  # the batch stopped before it (as the hub reports)
    assert await events(store, "store:s1") == []
    assert await store.sweep() == 0  # the sweep's count is of holds returned: forwards are not counted
    assert [e.data["allot"] for e in await events(store, "store:s1")] == [2]


async def test_a_batch_is_marked_in_one_write_per_store_and_forwarded_once_per_sku(
    store: RedisStore, redis_client: Any
) -> None:
    for kind, args in ((rules.RESTOCK, {"qty": 12}), (rules.ALLOT, {"store": "s1", "qty": 6})):
        await Hubside(store, f"ops-{kind}").op(kind, **args)
    till = StoreFeed(store)
    batch = [
        frames.Op(seq=i, kind=rules.SELL, args={"member": "m1", "sku": SKU, "store": "s1", "qty": 1})
        for i in range(1, 5)
    ]
    marks = await till.mark("till", batch)
    assert sorted(await redis_client.hkeys("{s:s1}:due")) == sorted(m.name.encode() for m in marks)
    for op in batch:
        assert (await store.apply_op("till", op)).ok
    await till.forward("till", marks, [op.seq for op in batch])
    assert await redis_client.hlen("{s:s1}:due") == 0
    assert [e.data["allot"] for e in await events(store, "store:s1")] == [6, 2]  # one forward for the batch
