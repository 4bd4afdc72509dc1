"""Stock ops that correct or move escrow after the fact (syncd/store/lua/stock/), against real Redis and Redis
Cluster: a stock take's adjustment, and later the recall a store answers."""

from __future__ import annotations

from typing import Any

from protocol import stock as rules
from syncd.store import RedisStore
from tests.syncd.store.test_store_stock import Till, invariant


async def test_an_adjustment_corrects_on_hand_through_the_pool_and_keeps_its_reason(
    store: RedisStore, redis_client: Any
) -> None:
    ops = Till(store, "ops")
    assert (await ops.op(rules.RESTOCK, qty=10)).ok
    assert (await ops.op(rules.ALLOT, store="s1", qty=6)).ok
    found = await ops.op(rules.ADJUST, delta=-3, reason="stock take: 3 damaged")
    assert found.ok and found.event is not None
    assert found.event.kind == rules.ADJUST and found.event.data["reason"] == "stock take: 3 damaged"
    assert (found.event.data["on_hand"], found.event.data["pool"]) == (7, 1)
    beyond = await ops.op(rules.ADJUST, delta=-2, reason="more missing")  # the pool holds 1; s1's 6 are s1's
    assert beyond.code == "insufficient_stock"
    assert (await ops.op(rules.ADJUST, delta=4, reason="found in the back")).ok
    s = await invariant(redis_client)
    assert (s["on_hand"], s["pool"], s["a:s1"]) == (11, 5, 6)


async def test_an_adjustment_needs_a_reason_and_a_bounded_delta(store: RedisStore) -> None:
    ops = Till(store, "ops")
    assert (await ops.op(rules.ADJUST, delta=1, reason="")).code == "bad_args"
    assert (await ops.op(rules.ADJUST, delta=rules.MAX_QTY + 1, reason="x")).code == "bad_args"
    assert (await ops.op(rules.ADJUST, delta=True, reason="x")).code == "bad_args"
    assert (await ops.op(rules.ADJUST, delta=0, reason="counted, all there")).ok


async def test_a_replayed_adjustment_is_applied_once(store: RedisStore, redis_client: Any) -> None:
    ops = Till(store, "ops")
    await ops.op(rules.RESTOCK, qty=5)
    first = await ops.op(rules.ADJUST, delta=-2, reason="count")
    ops.seq -= 1
    again = await ops.op(rules.ADJUST, delta=-2, reason="count")
    assert first.ok and again.ok and again.dup and again.event is None
    assert (await invariant(redis_client))["on_hand"] == 3
