"""Stock ops that correct or move escrow after the fact (syncd/store/lua/stock/), against real Redis and Redis
Cluster: a stock take's adjustment, and the recall a store answers (``stock.recall``, ``stock.yield``)."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from protocol import frames
from protocol import stock as rules
from syncd.store import RedisStore
from syncd.types.stock import full_state
from tests.syncd.store.test_store_stock import DIFFERENTIAL, SKU, Till, invariant

ESCROW_KINDS = [
    rules.ALLOT,
    rules.ALLOT,
    rules.SELL,
    rules.RECALL,
    rules.RECALL,
    *[rules.YIELD] * 3,
    rules.ADJUST,
]


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


_sku = itertools.count()
ESCROW_STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            [rules.ALLOT, rules.SELL, rules.RECALL, rules.RECALL, rules.YIELD, rules.YIELD, rules.ADJUST]
        ),
        st.sampled_from(["s1", "s2"]),
        st.sampled_from(["", "", "s2", "s3"]),  # the pool, mostly; another store; (s2 for s2: bad_args)
        st.integers(0, 5),
    ),
    min_size=4,
    max_size=25,
)


@DIFFERENTIAL
@given(steps=ESCROW_STEPS)
async def test_recalls_and_yields_match_the_reference_rules(
    store: RedisStore, steps: list[tuple[str, str, str, int]]
) -> None:
    """The Lua scripts and protocol/stock.py agree on every recall and yield, their results included."""
    sku = f"Y{next(_sku)}"
    ref = rules.empty()
    seq = 0
    for kind, shop, to, qty in [(rules.RESTOCK, "s1", "", 20), *steps]:
        seq += 1
        pending = ref.get("recall", {}).get(shop)
        if kind == rules.YIELD and to == "" and pending is not None:
            to = pending["to"]  # as a till does: answer the recall it saw (else: one redirected meanwhile)
        args: dict[str, Any] = {"member": "m1", "sku": sku}
        args |= {
            rules.RESTOCK: {"qty": qty},
            rules.ALLOT: {"store": shop, "qty": qty},
            rules.SELL: {"store": shop, "qty": qty},
            rules.RECALL: {"store": shop, "qty": qty, "to": to or None},
            rules.YIELD: {"store": shop, "qty": qty, "to": to or None},
            rules.ADJUST: {"delta": qty - 3, "reason": "count"},
        }[kind]
        got = await store.apply_op(f"{sku}-c", frames.Op(seq=seq, kind=kind, args=args))
        if qty == 0 and kind in (rules.ALLOT, rules.SELL, rules.YIELD):
            assert got.code == "bad_args"
            continue
        want = rules.apply(ref, rules.Op(kind, qty=qty, store=shop, to=to, delta=qty - 3), 0)
        event(f"{kind}: {got.code or 'ok'}")
        assert got.code == (None if want.rejected is None else want.rejected.value), (kind, args)
        if got.ok:
            ref = want.stock
            rules.check(ref)
            assert got.event is not None
            assert got.event.data["allot"] == ref["allot"] and got.event.data["pool"] == ref["pool"]
        if kind == rules.YIELD and got.ok:
            assert got.result == want.result
            event(f"yield moved units: {bool(want.result and want.result['moved'])}")
    state = await full_state(store.read, sku)
    want_recall = {s: {"qty": r["qty"], "to": r["to"] or None} for s, r in ref.get("recall", {}).items()}
    assert state["recall"] == want_recall and state["allot"] == ref["allot"]


async def test_a_rebalance_moves_exactly_what_the_store_yields_never_below_zero(
    store: RedisStore, redis_client: Any
) -> None:
    ops = Till(store, "ops")
    await ops.op(rules.RESTOCK, qty=10)
    await ops.op(rules.ALLOT, store="s1", qty=6)
    assert (await ops.op(rules.RECALL, store="s1", qty=4, to="s2")).ok
    s = await invariant(redis_client)
    assert (s["a:s1"], s.get("a:s2", 0)) == (6, 0)  # a recall moves nothing
    till = Till(store, "till-s1")
    assert (await till.op(rules.SELL, store="s1", qty=3)).ok  # sold offline before it saw the recall
    first = await till.op(rules.YIELD, store="s1", qty=4, to="s2")  # as it knew its allotment: 3 are left
    assert first.ok and first.result == {"moved": 3}
    till.seq -= 1
    replay = await till.op(rules.YIELD, store="s1", qty=4, to="s2")
    assert replay.dup and replay.result == {"moved": 3}
    second = await Till(store, "till-s1b").op(rules.YIELD, store="s1", qty=4, to="s2")  # another till
    assert second.ok and second.result == {"moved": 0}
    s = await invariant(redis_client)
    assert (s["a:s1"], s["a:s2"], s["pool"]) == (0, 3, 4)
    state = await full_state(store.read, SKU)
    assert state["recall"] == {"s1": {"qty": 1, "to": "s2"}}  # 1 still asked for: the store has none
    assert (await ops.op(rules.RECALL, store="s1", qty=0)).ok  # withdrawn
    assert (await full_state(store.read, SKU))["recall"] == {}
