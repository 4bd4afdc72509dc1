"""The stock rules (protocol.stock): the invariant under any sequence of ops, and each typed rejection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import stock
from protocol.errors import ErrorCode

T0 = 1_000_000
CHANNELS = ["web", "app", "mini"]
MEMBERS = ["m1", "m2", "m3"]
STORES = ["s1", "s2"]


def run(*ops: stock.Op, now: int = T0) -> stock.Outcome:
    s = stock.empty()
    out = stock.Outcome(s)
    for op in ops:
        out = stock.apply(s, op, now)
        s = out.stock
    return out


def reserve(
    qty: int, rid: str, channel: str = "web", member: str = "m1", until: int = T0 + 60_000
) -> stock.Op:
    return stock.Op(stock.RESERVE, qty=qty, channel=channel, member=member, rid=rid, until=until)


RESTOCK_10 = stock.Op(stock.RESTOCK, qty=10)


def test_reserve_takes_from_the_pool_and_refuses_beyond_it() -> None:
    out = run(RESTOCK_10, reserve(10, "a/1"), reserve(1, "a/2"))
    assert out.rejected is ErrorCode.INSUFFICIENT_STOCK
    assert out.stock["pool"] == 0 and out.stock["holds"]["a/1"]["qty"] == 10
    stock.check(out.stock)


def test_a_channel_at_its_quota_cannot_take_more_while_another_channel_still_can() -> None:
    s = run(stock.Op(stock.RESTOCK, qty=100), stock.Op(stock.QUOTA, channel="web", qty=30)).stock
    for i in range(30):
        s = stock.apply(s, reserve(1, f"w/{i}", member=f"m{i}"), T0).stock
    assert stock.apply(s, reserve(1, "w/31", member="x"), T0).rejected is ErrorCode.QUOTA_EXCEEDED
    assert stock.atp(s, "web") == 0 and stock.atp(s, "app") == 70
    assert stock.apply(s, reserve(1, "a/1", channel="app", member="x"), T0).rejected is None


def test_a_member_at_their_purchase_limit_is_refused_on_every_channel() -> None:
    s = run(RESTOCK_10, stock.Op(stock.LIMIT, qty=2), reserve(2, "a/1", channel="web")).stock
    for channel in CHANNELS:
        assert (
            stock.apply(s, reserve(1, "a/2", channel=channel), T0).rejected
            is ErrorCode.PURCHASE_LIMIT_EXCEEDED
        )
    assert stock.apply(s, reserve(1, "a/2", member="m2"), T0).rejected is None
    # a commit keeps counting; a release gives the member room again
    sold = stock.apply(s, stock.Op(stock.COMMIT, rid="a/1"), T0).stock
    assert stock.apply(sold, reserve(1, "a/3"), T0).rejected is ErrorCode.PURCHASE_LIMIT_EXCEEDED
    released = stock.apply(s, stock.Op(stock.RELEASE, rid="a/1"), T0).stock
    assert stock.apply(released, reserve(1, "a/3"), T0).rejected is None


def test_commit_sells_a_live_hold_and_refuses_an_expired_or_unknown_one() -> None:
    s = run(RESTOCK_10, reserve(3, "a/1", until=T0 + 10)).stock
    sold = stock.apply(s, stock.Op(stock.COMMIT, rid="a/1"), T0).stock
    assert (sold["on_hand"], sold["sold"], sold["holds"]) == (7, 3, {})
    assert (
        stock.apply(s, stock.Op(stock.COMMIT, rid="a/1"), T0 + 10).rejected is ErrorCode.RESERVATION_EXPIRED
    )
    assert stock.apply(sold, stock.Op(stock.COMMIT, rid="a/1"), T0).rejected is ErrorCode.UNKNOWN_RESERVATION
    assert stock.apply(sold, stock.Op(stock.RELEASE, rid="a/1"), T0).rejected is ErrorCode.UNKNOWN_RESERVATION


def test_expiry_returns_each_hold_once() -> None:
    s = run(RESTOCK_10, reserve(3, "a/1", until=T0 + 10), reserve(2, "a/2", until=T0 + 20)).stock
    s, gone = stock.expire(s, T0 + 10)
    assert gone == ["a/1"] and s["pool"] == 8
    s, gone = stock.expire(s, T0 + 10)
    assert gone == [] and s["pool"] == 8
    s, gone = stock.expire(s, T0 + 30)
    assert gone == ["a/2"] and s["pool"] == 10 and s["taken"]["web"] == 0
    stock.check(s)


def test_a_till_sells_only_within_its_stores_allotment() -> None:
    s = run(RESTOCK_10, stock.Op(stock.ALLOT, store="s1", qty=4)).stock
    assert s["pool"] == 6 and s["allot"] == {"s1": 4}
    assert (
        stock.apply(s, stock.Op(stock.SELL, store="s1", qty=5), T0).rejected is ErrorCode.ALLOTMENT_EXCEEDED
    )
    assert (
        stock.apply(s, stock.Op(stock.SELL, store="s2", qty=1), T0).rejected is ErrorCode.ALLOTMENT_EXCEEDED
    )
    s = stock.apply(s, stock.Op(stock.SELL, store="s1", qty=4), T0).stock
    assert (s["on_hand"], s["sold"], s["allot"]["s1"]) == (6, 4, 0)
    assert (
        stock.apply(s, stock.Op(stock.ALLOT, store="s2", qty=7), T0).rejected is ErrorCode.INSUFFICIENT_STOCK
    )


def test_a_rejection_leaves_the_stock_unchanged() -> None:
    s = run(RESTOCK_10).stock
    out = stock.apply(s, reserve(11, "a/1"), T0)
    assert out.rejected is not None and out.stock is s and s["pool"] == 10


OPS = st.one_of(
    st.builds(lambda q: stock.Op(stock.RESTOCK, qty=q), st.integers(1, 20)),
    st.builds(
        lambda s, q: stock.Op(stock.ALLOT, store=s, qty=q), st.sampled_from(STORES), st.integers(1, 10)
    ),
    st.builds(
        lambda c, q: stock.Op(stock.QUOTA, channel=c, qty=q), st.sampled_from(CHANNELS), st.integers(0, 20)
    ),
    st.builds(lambda q: stock.Op(stock.LIMIT, qty=q), st.integers(0, 5)),
    st.builds(
        lambda c, m, q, r, u: stock.Op(stock.RESERVE, qty=q, channel=c, member=m, rid=f"r/{r}", until=T0 + u),
        st.sampled_from(CHANNELS),
        st.sampled_from(MEMBERS),
        st.integers(1, 8),
        st.integers(0, 30),
        st.integers(0, 100),
    ),
    st.builds(lambda r: stock.Op(stock.COMMIT, rid=f"r/{r}"), st.integers(0, 30)),
    st.builds(lambda r: stock.Op(stock.RELEASE, rid=f"r/{r}"), st.integers(0, 30)),
    st.builds(lambda s, q: stock.Op(stock.SELL, store=s, qty=q), st.sampled_from(STORES), st.integers(1, 6)),
    st.builds(lambda d: stock.Op(stock.ADJUST, delta=d), st.integers(-10, 10)),
    st.builds(
        lambda s, q, t: stock.Op(stock.RECALL, store=s, qty=q, to=t),
        st.sampled_from(STORES),
        st.integers(0, 8),
        st.sampled_from(["", *STORES]),
    ),
    st.builds(
        lambda s, q, t: stock.Op(stock.YIELD, store=s, qty=q, to=t),
        st.sampled_from(STORES),
        st.integers(1, 8),
        st.sampled_from(["", *STORES]),
    ),
)


@given(st.lists(st.tuples(OPS, st.integers(0, 120)), max_size=60))
def test_the_invariant_holds_and_no_bound_is_passed_under_any_ops(steps: list[tuple[stock.Op, int]]) -> None:
    s = stock.empty()
    now = T0
    for op, dt in steps:
        now += dt
        if op.kind == stock.RESERVE and op.rid in s["holds"]:
            continue  # a rid names one reserve: (client_id, seq) is applied once (dedup, not these rules)
        s, _ = stock.expire(s, now)
        s = stock.apply(s, op, now).stock
        stock.check(s)
        for channel, cap in s["quota"].items():
            held = sum(h["qty"] for h in s["holds"].values() if h["channel"] == channel)
            assert held <= s["taken"].get(channel, 0)
            if s["taken"].get(channel, 0) > cap:
                # only a quota lowered below what the channel already took: it then takes nothing more
                assert stock.atp(s, channel) == 0
        if s["limit"]:
            for member in MEMBERS:
                held = sum(h["qty"] for h in s["holds"].values() if h["member"] == member)
                assert held <= s["bought"].get(member, 0)


def test_an_op_kind_outside_the_rules_is_unknown() -> None:
    assert stock.apply(stock.empty(), stock.Op("stock.nope"), T0).rejected is ErrorCode.UNKNOWN_OP


@pytest.mark.parametrize("kind", sorted(stock.KINDS))
def test_every_op_kind_is_known_to_the_rules(kind: str) -> None:
    assert (
        stock.apply(run(RESTOCK_10).stock, stock.Op(kind, qty=1, rid="x/1"), T0).rejected
        is not ErrorCode.UNKNOWN_OP
    )


def test_an_adjustment_moves_on_hand_through_the_pool_only() -> None:
    s = run(RESTOCK_10, stock.Op(stock.ALLOT, store="s1", qty=8)).stock
    short = stock.apply(s, stock.Op(stock.ADJUST, delta=-3), T0)
    assert short.rejected is ErrorCode.INSUFFICIENT_STOCK and short.stock is s
    fixed = stock.apply(s, stock.Op(stock.ADJUST, delta=-2), T0).stock
    assert (fixed["on_hand"], fixed["pool"], fixed["allot"]) == (8, 0, {"s1": 8})
    stock.check(fixed)


def test_a_recall_moves_nothing_until_the_store_yields_and_then_at_most_what_was_asked() -> None:
    s = run(RESTOCK_10, stock.Op(stock.ALLOT, store="s1", qty=6)).stock
    asked = stock.apply(s, stock.Op(stock.RECALL, store="s1", qty=4, to="s2"), T0).stock
    assert asked["allot"] == {"s1": 6} and asked["recall"] == {"s1": {"qty": 4, "to": "s2"}}
    wrong = stock.apply(asked, stock.Op(stock.YIELD, store="s1", qty=4), T0)  # answers no recall to the pool
    assert wrong.result == {"moved": 0} and wrong.stock["allot"] == {"s1": 6}
    out = stock.apply(asked, stock.Op(stock.YIELD, store="s1", qty=5, to="s2"), T0)
    assert out.result == {"moved": 4} and out.stock["allot"] == {"s1": 2, "s2": 4}
    assert out.stock["recall"] == {}
    stock.check(out.stock)
    again = stock.apply(out.stock, stock.Op(stock.YIELD, store="s1", qty=5, to="s2"), T0)
    assert again.result == {"moved": 0}
    same = stock.apply(s, stock.Op(stock.RECALL, store="s1", qty=1, to="s1"), T0)
    assert same.rejected is ErrorCode.BAD_ARGS
