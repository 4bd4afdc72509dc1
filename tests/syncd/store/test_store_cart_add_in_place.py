"""The in-place ``cart.add`` (``add_in_place`` in ``lua/cart/_cart.lua``) against the reference, on the
histories at the edges of the shape it takes and of the cases it hands back to the general path.

Each history runs through the differential test's harness (a Hypothesis test there, so here one example of a
fixed history): after every op the outcome, the event's lines and the whole stored cart must equal
:mod:`protocol.cart`'s.
"""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cart, frames
from syncd.store import RedisStore
from syncd.store.keys import member_slot
from tests.syncd.store.test_store_differential import Action, expected, run_history

A, LOWER_A, B = 0, 1, 2  # the differential test's clients "A", "a", "b"


ONCE = settings(
    max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)


def adds(who: int, count: int, hlc: int = 0, sku: int = 0) -> list[Action]:
    return [Action(who=who, kind="cart.add", sku=sku, hlc=hlc) for _ in range(count)]


@ONCE
@given(nothing=st.none())
async def test_a_fold_that_takes_a_clients_only_dot_drops_it_from_the_line_vv(
    store: RedisStore, nothing: None
) -> None:
    # A's one dot is the lowest; 16 adds of "a" later it is folded into the base, and the line's vv no
    # longer names A (the base's own entry replaces it).
    await run_history(store, [*adds(A, 1), *adds(LOWER_A, 18)])


@ONCE
@given(nothing=st.none())
async def test_a_fold_that_takes_the_adders_own_highest_dot_keeps_its_new_seq(
    store: RedisStore, nothing: None
) -> None:
    await run_history(store, [*adds(A, 1), *adds(LOWER_A, 15), *adds(A, 3)])


@ONCE
@given(nothing=st.none())
async def test_a_fold_that_takes_a_clients_lower_dot_keeps_its_entry(
    store: RedisStore, nothing: None
) -> None:
    await run_history(store, [*adds(A, 2), *adds(LOWER_A, 15), *adds(B, 3)])


@ONCE
@given(nothing=st.none())
async def test_an_add_that_sorts_before_the_last_dot_is_inserted_in_order(
    store: RedisStore, nothing: None
) -> None:
    # b's dots carry a later hlc: A's adds with an earlier one go before them, folds included.
    await run_history(store, [*adds(B, 3, hlc=9), *adds(A, 16, hlc=1), *adds(LOWER_A, 2, hlc=5)])


@ONCE
@given(nothing=st.none())
async def test_adds_to_a_line_with_sets_keep_the_sets_and_their_conflict(
    store: RedisStore, nothing: None
) -> None:
    sets = [
        Action(who=A, kind="cart.set", qty=2, hlc=1, ctx="none"),
        Action(who=B, kind="cart.set", qty=5, hlc=1, ctx="none"),
    ]
    await run_history(store, [*sets, *adds(LOWER_A, 18, hlc=2)])


@ONCE
@given(nothing=st.none())
async def test_adds_to_a_line_with_attrs_fold_the_attrs_into_the_base(
    store: RedisStore, nothing: None
) -> None:
    first = Action(who=A, kind="cart.add", attrs={"size": "L"})
    await run_history(store, [first, *adds(B, 17, hlc=1), *adds(A, 2, hlc=2)])


@ONCE
@given(nothing=st.none())
async def test_adds_across_lines_and_a_replay_answer_as_before(store: RedisStore, nothing: None) -> None:
    mixed = [
        *adds(A, 17, sku=0),
        *adds(B, 3, sku=1),
        Action(who=A, kind="replay", replay=3),
        *adds(B, 17, sku=0),
    ]
    await run_history(store, mixed)


async def test_a_line_changed_behind_its_shape_is_walked_not_trusted(store: RedisStore) -> None:
    # The in-place add keeps each line's shape (where its dots start) beside it. A script that knows nothing
    # of shapes — an older hub's, in a rolling upgrade — may rewrite the line: here another client's add with
    # an earlier hlc lands among A's dots and folds A's lowest, keeping the dot count but not where the dots
    # start, as such a hub would store it. The next in-place adds must read the line as it is now, and stay
    # equal to the reference.
    member, ref = "shape-stale", cart.empty_cart()

    def add(client_id: str, seq: int, hlc: int) -> tuple[frames.Op, cart.Outcome]:
        args = {"member": member, "sku": "tea", "qty": 1}
        op = frames.Op(seq=seq, kind="cart.add", args=args, ctx=None, hlc=hlc)
        return op, expected(ref, client_id, op)

    async def add_here(seq: int) -> cart.Cart:
        op, want = add("A", seq, seq)
        got = await store.apply_op("A", op)
        assert got.ok and got.event is not None and got.event.data == want.event_data(), seq
        assert await store.load_cart(member) == want.cart, seq
        return want.cart

    for seq in range(1, 19):  # a base and 16 dots, twice folded: the shape is kept
        ref = await add_here(seq)
    _, older = add("older-hub-client", 1, 10)
    assert len(older.cart["lines"]["tea"]["dots"]) == len(ref["lines"]["tea"]["dots"])
    slot = member_slot(member)
    await store._client.hset(f"{slot}:cart", "tea", msgspec.msgpack.encode(older.cart["lines"]["tea"]))
    await store._client.hset(f"{slot}:cart:meta", "fold", older.cart["folds"])
    ref = older.cart
    for seq in range(19, 22):
        ref = await add_here(seq)
