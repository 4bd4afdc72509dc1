"""``store:<store>`` fed from its SKUs' stock (syncd/storefeed.py, syncd/types/store.py) against real Redis
and Redis Cluster: every allot and sell reaches the store's topic once, a hub dying between the SKU op and the
forward loses nothing (the sweep forwards the mark), and a forward replayed or overtaken changes nothing."""

from __future__ import annotations

from typing import Any

from protocol import frames
from protocol import stock as rules
from protocol.types.store import SKU_CHANGED
from syncd.store import OpOutcome, RedisStore
from syncd.storefeed import StoreFeed
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
    assert await store.sweep() == 1  # another hub's sweep finds the mark
    assert await store.sweep() == 0  # and forwarded it once
    assert [e.data["allot"] for e in await events(store, "store:s1")] == [5]
    assert await redis_client.hlen("{s:s1}:due") == 0


async def test_a_mark_waits_for_its_op_and_a_replayed_forward_adds_nothing(store: RedisStore) -> None:
    ops = Hubside(store, "ops")
    await ops.op(rules.RESTOCK, qty=10)
    op = frames.Op(seq=2, kind=rules.ALLOT, args={"member": "m1", "sku": SKU, "store": "s1", "qty": 2})
    marks = await ops.feed.mark("ops", [op])  # marked, not run yet (the hub died before the op)
    assert await store.sweep() == 0 and await events(store, "store:s1") == []
    await store.apply_op("ops", op)  # the client sent it again, to another hub that died after it
    assert await store.sweep() == 1
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
