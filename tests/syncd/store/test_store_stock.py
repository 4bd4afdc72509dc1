"""Stock scripts (syncd/store/lua/stock/) against real Redis and Redis Cluster: the rules of protocol.stock,
the invariant in Redis itself after every op, and exactly-once replay."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from protocol import frames
from protocol import stock as rules
from syncd.store import OpOutcome, RedisStore
from tests.profiles import examples

SKU = "SKU-1"


class Till:
    def __init__(self, store: RedisStore, client_id: str) -> None:
        self.store, self.client_id, self.seq = store, client_id, 0

    async def op(self, kind: str, **args: Any) -> OpOutcome:
        self.seq += 1
        op = frames.Op(seq=self.seq, kind=kind, args={"member": "m1", "sku": SKU, **args})
        return await self.store.apply_op(self.client_id, op)


async def invariant(client: Redis | RedisCluster) -> dict[str, int]:
    raw = await client.hgetall(f"{{sku:{SKU}}}:stock")
    s = {k.decode(): int(v) for k, v in raw.items()}
    allot = sum(v for k, v in s.items() if k.startswith("a:"))
    holds = await client.hgetall(f"{{sku:{SKU}}}:holds")
    held = sum(int(v.split(b"|")[0]) for v in holds.values())
    assert s["held"] == held
    assert s["on_hand"] == s["pool"] + allot + held
    assert all(v >= 0 for v in s.values())
    return s


async def test_reserve_commit_release_keep_the_invariant(store: RedisStore, redis_client: Any) -> None:
    ops = Till(store, "ops")
    assert (await ops.op(rules.RESTOCK, qty=10)).ok
    shopper = Till(store, "c1")
    held = await shopper.op(rules.RESERVE, channel="web", qty=4, ttl_ms=60_000)
    assert held.ok and held.result is not None and held.result["rid"] == "c1/1"
    assert (await shopper.op(rules.RESERVE, channel="web", qty=7, ttl_ms=60_000)).code == "insufficient_stock"
    assert (await shopper.op(rules.COMMIT, rid="c1/1")).ok
    assert (await shopper.op(rules.COMMIT, rid="c1/1")).code == "unknown_reservation"
    s = await invariant(redis_client)
    assert (s["on_hand"], s["pool"], s["sold"]) == (6, 6, 4)
    event = held.event
    assert event is not None and event.topic == f"stock:{SKU}" and event.data["atp"] == {"*": 6}


async def test_quota_limit_and_allotment_are_typed_rejections(store: RedisStore, redis_client: Any) -> None:
    ops = Till(store, "ops")
    for kind, args in [
        (rules.RESTOCK, {"qty": 100}),
        (rules.QUOTA, {"channel": "web", "qty": 3}),
        (rules.LIMIT, {"qty": 2}),
        (rules.ALLOT, {"store": "s1", "qty": 5}),
    ]:
        assert (await ops.op(kind, **args)).ok, kind
    web = Till(store, "w")
    assert (await web.op(rules.RESERVE, channel="web", qty=2, ttl_ms=1000)).ok
    assert (await web.op(rules.RESERVE, channel="app", qty=1, ttl_ms=1000)).code == "purchase_limit_exceeded"
    out = await web.op(rules.RESERVE, channel="web", qty=2, ttl_ms=1000, member="m2")
    assert out.code == "quota_exceeded"
    till = Till(store, "t")
    assert (await till.op(rules.SELL, store="s1", qty=6)).code == "allotment_exceeded"
    sold = await till.op(rules.SELL, store="s1", qty=5)
    assert sold.ok and sold.event is not None and sold.event.data["allot"] == {"s1": 0}
    s = await invariant(redis_client)
    assert (s["on_hand"], s["pool"], s["sold"]) == (95, 93, 5)


async def test_an_expired_hold_cannot_be_committed_and_release_returns_it(
    store: RedisStore, redis_client: Any
) -> None:
    ops = Till(store, "ops")
    await ops.op(rules.RESTOCK, qty=3)
    shopper = Till(store, "c1")
    assert (await shopper.op(rules.RESERVE, channel="web", qty=3, ttl_ms=1)).ok
    await asyncio.sleep(0.01)
    assert (await shopper.op(rules.COMMIT, rid="c1/1")).code == "reservation_expired"
    assert (await shopper.op(rules.RELEASE, rid="c1/1")).ok
    s = await invariant(redis_client)
    assert (s["pool"], s["held"], s["t:web"]) == (3, 0, 0)


async def test_a_replayed_reserve_is_answered_not_applied_again(store: RedisStore, redis_client: Any) -> None:
    await Till(store, "ops").op(rules.RESTOCK, qty=5)
    op = frames.Op(
        seq=1,
        kind=rules.RESERVE,
        args={"member": "m1", "sku": SKU, "channel": "web", "qty": 2, "ttl_ms": 9000},
    )
    first = await store.apply_op("c1", op)
    again = await store.apply_op("c1", op)
    assert first.ok and again.dup and again.result == first.result
    assert (await invariant(redis_client))["pool"] == 3


async def test_concurrent_reservations_never_oversell(store: RedisStore, redis_client: Any) -> None:
    await Till(store, "ops").op(rules.RESTOCK, qty=20)
    shoppers = [Till(store, f"c{i}") for i in range(60)]
    outcomes = await asyncio.gather(
        *(
            t.op(rules.RESERVE, channel="web", qty=1, ttl_ms=60_000, member=f"m{i}")
            for i, t in enumerate(shoppers)
        )
    )
    assert sum(o.ok for o in outcomes) == 20
    assert {o.code for o in outcomes if not o.ok} == {"insufficient_stock"}
    s = await invariant(redis_client)
    assert (s["pool"], s["held"]) == (0, 20)


async def test_a_stock_snapshot_matches_the_events(store: RedisStore) -> None:
    cursor, state = await store.snapshot(f"stock:{SKU}")
    assert cursor == frames.Cursor(frames.EMPTY_EPOCH, 0) and state["pool"] == 0
    out = await Till(store, "ops").op(rules.RESTOCK, qty=7)
    cursor, state = await store.snapshot(f"stock:{SKU}")
    assert out.event is not None and state == out.event.data and cursor == out.event.cursor


async def test_expired_holds_return_once_however_many_sweep(store: RedisStore, redis_client: Any) -> None:
    await Till(store, "ops").op(rules.RESTOCK, qty=30)
    shoppers = [Till(store, f"c{i}") for i in range(20)]
    for i, t in enumerate(shoppers):
        ttl = 1 if i < 15 else 600_000
        assert (await t.op(rules.RESERVE, channel="web", qty=1, ttl_ms=ttl, member=f"m{i}")).ok
    await asyncio.sleep(0.01)
    other = RedisStore(redis_client)  # a second hub's store over the same Redis
    swept = await asyncio.gather(store.sweep(), other.sweep(), store.sweep(), other.sweep())
    assert sum(swept) == 15
    assert await store.sweep() == 0
    s = await invariant(redis_client)
    assert (s["pool"], s["held"], s["t:web"]) == (25, 5, 5)
    _, state = await store.snapshot(f"stock:{SKU}")
    assert state["pool"] == 25
    expired = await shoppers[0].op(rules.COMMIT, rid="c0/1")
    assert expired.code == "unknown_reservation"  # returned: nothing left to commit


_sku = itertools.count()
STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *sorted(rules.KINDS),
                *[rules.RESERVE] * 4,
                rules.COMMIT,
                rules.RELEASE,
                rules.QUOTA,
                rules.YIELD,
            ]
        ),
        st.integers(0, 2),  # client
        st.integers(0, 4),  # qty
        st.sampled_from(["web", "app"]),
        st.sampled_from(["m1", "m2"]),
        st.sampled_from(["s1", "s2"]),
        st.integers(1, 8),  # which op of the client a commit/release names
    ),
    min_size=4,
    max_size=30,
)


def view_of(s: rules.Stock) -> dict[str, Any]:
    atp = {"*": s["pool"], **{ch: rules.atp(s, ch) for ch in s["quota"]}}
    return {"on_hand": s["on_hand"], "pool": s["pool"], "sold": s["sold"], "atp": atp, "allot": s["allot"]}


DIFFERENTIAL = settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""Hypothesis settings of the tests that run scripts and reference rules side by side."""


@DIFFERENTIAL
@given(steps=STEPS)
async def test_the_stock_scripts_match_the_reference_rules(
    store: RedisStore, steps: list[tuple[str, int, int, str, str, str, int]]
) -> None:
    sku = f"D{next(_sku)}"
    ref = rules.empty()
    seqs = [0, 0, 0]
    for kind, who, qty, channel, member, shop, nth in [(rules.RESTOCK, 0, 4, "web", "m1", "s1", 1), *steps]:
        seqs[who] += 1
        client = f"{sku}-c{who}"
        rid = f"{sku}-c{who}/{nth}"
        # A rebalance target: none (the pool), the other store, or (nth 8) the same store, which is bad_args.
        to = "" if nth % 2 else shop if nth == 8 else {"s1": "s2", "s2": "s1"}[shop]
        args: dict[str, Any] = {"member": member, "sku": sku}
        args |= {
            rules.RESTOCK: {"qty": qty},
            rules.ALLOT: {"store": shop, "qty": qty},
            rules.QUOTA: {"channel": channel, "qty": qty},
            rules.LIMIT: {"qty": qty},
            rules.RESERVE: {"channel": channel, "qty": qty, "ttl_ms": 600_000},
            rules.COMMIT: {"rid": rid},
            rules.RELEASE: {"rid": rid},
            rules.SELL: {"store": shop, "qty": qty},
            rules.ADJUST: {"delta": qty - 2, "reason": "stock take"},
            rules.RECALL: {"store": shop, "qty": qty, "to": to or None},
            rules.YIELD: {"store": shop, "qty": qty, "to": to or None},
        }[kind]
        got = await store.apply_op(client, frames.Op(seq=seqs[who], kind=kind, args=args))
        if qty == 0 and kind in (rules.RESTOCK, rules.ALLOT, rules.RESERVE, rules.SELL, rules.YIELD):
            assert got.code == "bad_args"
            continue
        op = rules.Op(
            kind, qty=qty, channel=channel, member=member, store=shop, until=2**62, delta=qty - 2, to=to
        )
        if kind == rules.RESERVE:
            op = dataclasses.replace(op, rid=f"{client}/{seqs[who]}")
        elif kind in (rules.COMMIT, rules.RELEASE):
            op = dataclasses.replace(op, rid=rid)
        want = rules.apply(ref, op, 0)
        event(f"{kind}: {got.code or 'ok'}")
        assert got.code == (None if want.rejected is None else want.rejected.value), (kind, args)
        if got.ok:
            ref = want.stock
            assert got.event is not None, (kind, args)
            data = {k: v for k, v in got.event.data.items() if k != "reason"}  # adjust's event says why
            assert data == view_of(ref), (kind, args)
            if kind == rules.YIELD:
                assert got.result == want.result, (args, got.result, want.result)
                event(f"stock.yield moved units: {bool(want.result and want.result['moved'])}")


async def test_a_channel_takes_exactly_its_quota_and_a_member_exactly_their_limit(
    store: RedisStore, redis_client: Any
) -> None:
    ops = Till(store, "ops")
    for kind, args in [
        (rules.RESTOCK, {"qty": 10}),
        (rules.QUOTA, {"channel": "web", "qty": 3}),
        (rules.LIMIT, {"qty": 2}),
    ]:
        assert (await ops.op(kind, **args)).ok
    web = Till(store, "w")
    assert (await web.op(rules.RESERVE, channel="web", qty=2, ttl_ms=60_000, member="m1")).ok
    assert (await web.op(rules.RESERVE, channel="web", qty=1, ttl_ms=60_000, member="m2")).ok  # 3 of 3
    assert (
        await web.op(rules.RESERVE, channel="web", qty=1, ttl_ms=60_000, member="m3")
    ).code == "quota_exceeded"
    assert (await web.op(rules.RESERVE, channel="app", qty=1, ttl_ms=60_000, member="m2")).ok  # 2 of 2
    await invariant(redis_client)
