"""Hybrid logical clock: packed encoding, monotonicity under any wall clock, counter carry, overflow."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.hlc import COUNTER_LIMIT, MAX_HLC, MAX_MS, HybridClock, encode, logical, physical
from tests.profiles import examples

FAST = settings(max_examples=examples(200), deadline=None)


def test_encoding_round_trips_and_sorts_like_the_pair() -> None:
    ts = encode(1_700_000_000_000, 5)
    assert ts == 1_700_000_000_000 * 1024 + 5
    assert (physical(ts), logical(ts)) == (1_700_000_000_000, 5)
    assert encode(10, 1023) < encode(11, 0)
    assert encode(MAX_MS, COUNTER_LIMIT - 1) == MAX_HLC
    assert encode(3) == 3 * 1024


@pytest.mark.parametrize(("ms", "counter"), [(-1, 0), (MAX_MS + 1, 0), (0, -1), (0, COUNTER_LIMIT)])
def test_encode_rejects_out_of_range(ms: int, counter: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode(ms, counter)


def test_now_follows_the_wall_clock_and_counts_within_a_millisecond() -> None:
    clock = HybridClock()
    assert clock.now(1000) == encode(1000, 0)
    assert clock.now(1000) == encode(1000, 1)
    assert clock.now(1001) == encode(1001, 0)
    # The wall clock goes back: time stands still at the greatest value seen, the counter moves on.
    assert clock.now(900) == encode(1001, 1)
    assert clock.last == encode(1001, 1)


def test_counter_overflow_advances_the_millisecond() -> None:
    clock = HybridClock(encode(50, COUNTER_LIMIT - 1))
    assert clock.now(50) == encode(51, 0)
    assert clock.now(50) == encode(51, 1)


def test_observe_moves_past_the_remote_and_the_local_clock() -> None:
    clock = HybridClock()
    assert clock.observe(encode(2000, 7), 1000) == encode(2000, 8)  # remote ahead of wall and local
    assert clock.observe(encode(1500, 3), 1000) == encode(2000, 9)  # local ahead of remote
    assert clock.observe(encode(10, 0), 3000) == encode(3000, 0)  # wall ahead of both
    assert clock.now(2500) == encode(3000, 1)


def test_resume_from_persisted_value() -> None:
    clock = HybridClock(encode(777, 3))
    assert clock.now(0) == encode(777, 4)
    with pytest.raises(ValueError, match="out of range"):
        HybridClock(-1)
    with pytest.raises(ValueError, match="out of range"):
        HybridClock(MAX_HLC + 1)


def test_invalid_inputs_and_overflow_leave_the_clock_unchanged() -> None:
    clock = HybridClock(MAX_HLC - 1)
    assert clock.now(0) == MAX_HLC
    with pytest.raises(OverflowError):
        clock.now(0)
    assert clock.last == MAX_HLC
    clock = HybridClock(5)
    with pytest.raises(OverflowError):
        clock.observe(MAX_HLC, 0)
    with pytest.raises(ValueError, match="remote"):
        clock.observe(MAX_HLC + 1, 0)
    with pytest.raises(ValueError, match="remote"):
        clock.observe(-1, 0)
    with pytest.raises(ValueError, match="wall_ms"):
        clock.now(-1)
    with pytest.raises(ValueError, match="wall_ms"):
        clock.now(MAX_MS + 1)
    assert clock.last == 5


walls = st.integers(min_value=0, max_value=5000)
events = st.lists(
    st.one_of(
        st.tuples(st.just("now"), walls, st.just(0)),
        st.tuples(st.just("observe"), walls, st.integers(min_value=0, max_value=6000 * 1024)),
    ),
    min_size=1,
    max_size=60,
)


@FAST
@given(events)
def test_monotonic_under_any_wall_clock(evs: list[tuple[str, int, int]]) -> None:
    clock = HybridClock()
    prev = 0
    for what, wall, remote in evs:
        ts = clock.now(wall) if what == "now" else clock.observe(remote, wall)
        assert ts > prev  # strictly increasing, whatever the wall clock does
        assert physical(ts) >= wall  # never behind the wall clock
        if what == "observe":
            assert ts > remote  # a receive is after the send (causality)
        assert 0 <= logical(ts) < COUNTER_LIMIT
        assert clock.last == ts
        prev = ts


@FAST
@given(st.lists(walls, min_size=1, max_size=40))
def test_two_clocks_exchanging_messages_respect_causality(ws: list[int]) -> None:
    a, b = HybridClock(), HybridClock()
    for i, wall in enumerate(ws):
        sender, receiver = (a, b) if i % 2 == 0 else (b, a)
        sent = sender.now(wall)
        received = receiver.observe(sent, max(0, wall - 300))  # the receiver's clock lags
        assert received > sent
