"""Version vectors: the order, the merge laws, and folding that never invents an order (docs/traps.md §11)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.vv import HUB, Order, canonical, compare, covers, dominates, fold, merge
from tests.profiles import examples

FAST = settings(max_examples=examples(300), deadline=None)

clients = st.sampled_from(["a", "b", "c", "d", "e", "pos-1", HUB])
vectors = st.dictionaries(clients, st.integers(min_value=0, max_value=6), max_size=7)


# --- examples ------------------------------------------------------------------------------------------


def test_missing_entry_is_zero_and_zeros_are_dropped() -> None:
    assert canonical({"b": 2, "a": 0, "c": 1}) == {"b": 2, "c": 1}
    assert list(canonical({"b": 2, "a": 1, HUB: 3})) == ["a", "b", HUB]  # sorted, "~" after letters
    assert compare({"a": 1, "b": 0}, {"a": 1}) is Order.EQUAL
    assert compare({}, {}) is Order.EQUAL


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ({"a": 1}, {"a": 2}, Order.BEFORE),
        ({"a": 2}, {"a": 1}, Order.AFTER),
        ({}, {"a": 1}, Order.BEFORE),
        ({"a": 1}, {"b": 1}, Order.CONCURRENT),
        ({"a": 2, "b": 1}, {"a": 1, "b": 2}, Order.CONCURRENT),
        ({"a": 2, "b": 2}, {"a": 2, "b": 2}, Order.EQUAL),
        ({"a": 2, "b": 3}, {"a": 2}, Order.AFTER),
    ],
)
def test_compare(a: dict[str, int], b: dict[str, int], order: Order) -> None:
    assert compare(a, b) is order


def test_merge_dominates_covers() -> None:
    assert merge({"a": 2, "b": 1}, {"b": 3, "c": 1}) == {"a": 2, "b": 3, "c": 1}
    assert dominates({"a": 2, "b": 1}, {"a": 2})
    assert dominates({"a": 1}, {"a": 1, "b": 0})
    assert not dominates({"a": 2}, {"a": 2, "b": 1})
    assert covers({"a": 3}, "a", 3)
    assert covers({"a": 3}, "a", 1)
    assert not covers({"a": 3}, "a", 4)
    assert not covers({"a": 3}, "b", 1)


def test_fold_keeps_the_greatest_entries_and_sets_the_hub_entry() -> None:
    v = {"a": 5, "b": 1, "c": 3, "d": 3, HUB: 2}
    assert fold(v, 2, counter=7) == {"a": 5, "c": 3, HUB: 7}  # tie c/d: the smaller key stays
    assert fold(v, 0, counter=3) == {HUB: 3}
    # At most ``keep`` client entries: unchanged (canonical), whatever the counter.
    assert fold({"a": 1, "b": 0, HUB: 9}, 1, counter=1) == {"a": 1, HUB: 9}
    assert fold({"a": 1, "b": 2}, 2, counter=1) == {"a": 1, "b": 2}
    # Another name for the hub entry.
    assert fold({"a": 1, "b": 2}, 1, counter=4, into="hub") == {"b": 2, "hub": 4}


def test_fold_refuses_a_stale_counter_and_a_negative_keep() -> None:
    with pytest.raises(ValueError, match="not fresh"):
        fold({"a": 1, "b": 1, HUB: 5}, 1, counter=5)
    with pytest.raises(ValueError, match="keep"):
        fold({"a": 1}, -1, counter=1)


def test_fold_creates_false_concurrency_not_false_order() -> None:
    before = {"a": 1, "b": 1}
    later = {"a": 2, "b": 1}
    assert compare(before, later) is Order.BEFORE
    folded = fold(before, 1, counter=1)
    # The folded vector no longer knows it saw b:1, and says so: a spurious conflict, never "covered".
    assert compare(folded, later) is Order.CONCURRENT
    assert compare(folded, before) is Order.CONCURRENT


# --- properties ----------------------------------------------------------------------------------------


@FAST
@given(vectors, vectors)
def test_merge_is_commutative(a: dict[str, int], b: dict[str, int]) -> None:
    assert merge(a, b) == merge(b, a)


@FAST
@given(vectors, vectors, vectors)
def test_merge_is_associative(a: dict[str, int], b: dict[str, int], c: dict[str, int]) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@FAST
@given(vectors)
def test_merge_is_idempotent_and_canonical(a: dict[str, int]) -> None:
    assert merge(a, a) == canonical(a)
    assert merge(a, {}) == canonical(a)
    assert 0 not in merge(a, a).values()


@FAST
@given(vectors, vectors)
def test_compare_agrees_with_merge_and_dominates(a: dict[str, int], b: dict[str, int]) -> None:
    order = compare(a, b)
    assert (order in (Order.BEFORE, Order.EQUAL)) == (merge(a, b) == canonical(b))
    assert (order in (Order.AFTER, Order.EQUAL)) == dominates(a, b)
    assert (order is Order.EQUAL) == (canonical(a) == canonical(b))
    mirror = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}
    assert compare(b, a) is mirror.get(order, order)
    # The merge is the least upper bound.
    m = merge(a, b)
    assert dominates(m, a)
    assert dominates(m, b)


@FAST
@given(vectors, vectors, st.integers(min_value=0, max_value=4), st.integers(min_value=1, max_value=5))
def test_fold_never_invents_an_order(a: dict[str, int], b: dict[str, int], keep: int, fresh: int) -> None:
    # ``counter`` is fresh: greater than the hub entry of every vector that exists when the fold happens.
    counter = max(a.get(HUB, 0), b.get(HUB, 0)) + fresh
    folded = fold(a, keep, counter=counter)
    before, after = compare(a, b), compare(folded, b)
    assert len([k for k in folded if k != HUB]) <= keep
    if folded == canonical(a):
        assert after is before  # nothing folded, nothing changed
        return
    # CONCURRENT or AFTER never turns into BEFORE: no false ordering...
    if before in (Order.CONCURRENT, Order.AFTER):
        assert after is not Order.BEFORE
    # ...and more: a folded vector is never judged covered by one that has not seen the fold.
    assert after in (Order.AFTER, Order.CONCURRENT)
    # AFTER only when ``a`` was already ahead of or equal to ``b`` on every client entry.
    if after is Order.AFTER:
        assert all(a.get(k, 0) >= v for k, v in b.items() if k != HUB)
    # Folding forgets, it never adds client knowledge.
    assert all(folded.get(k, 0) <= v for k, v in a.items() if k != HUB)
