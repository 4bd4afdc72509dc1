"""How long a reservation holds (protocol.stock): a ttl, an absolute instant, or the brand's daily clearing
time in its own time zone, resolved against the clock of the step that applies the op."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import stock
from protocol.errors import ErrorCode, OpRejected
from protocol.ops import parse_args

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
MIDNIGHT = dt.time(0, 0)


def ms(year: int, month: int, day: int, hour: int, minute: int = 0, tz: dt.tzinfo = dt.UTC) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=tz).timestamp() * 1000)


def nxt(now: int, at: dt.time = MIDNIGHT, tz: dt.tzinfo = SHANGHAI, hub_now: int | None = None) -> int | None:
    """The hold's end for ``until: "clearing"`` made at ``now`` (candidates computed at ``hub_now``)."""
    return stock.resolve_until(
        now, clearing=stock.clearing_instants(now if hub_now is None else hub_now, at, tz)
    )


def test_midnight_in_shanghai_is_four_pm_utc_and_the_next_one_is_picked() -> None:
    now = ms(2026, 12, 6, 3)  # 11:00 in Shanghai
    instants = stock.clearing_instants(now, MIDNIGHT, SHANGHAI)
    assert instants == sorted(instants) and len(instants) >= 2
    assert stock.resolve_until(now, clearing=instants) == ms(2026, 12, 6, 16)  # 00:00 on the 7th there
    just_before = ms(2026, 12, 6, 15, 59)
    assert stock.resolve_until(
        just_before, clearing=stock.clearing_instants(just_before, MIDNIGHT, SHANGHAI)
    ) == (ms(2026, 12, 6, 16))
    at = ms(2026, 12, 6, 16)  # at the clearing instant itself: that one is over, the next day's applies
    assert stock.resolve_until(at, clearing=stock.clearing_instants(at, MIDNIGHT, SHANGHAI)) == ms(
        2026, 12, 7, 16
    )


def test_a_clearing_time_follows_daylight_saving_in_its_zone() -> None:
    four = dt.time(4, 0)
    winter = ms(2026, 3, 7, 12)  # New York on EST (UTC-5) until the 8th, 02:00
    assert stock.resolve_until(winter, clearing=stock.clearing_instants(winter, four, NEW_YORK)) == ms(
        2026, 3, 8, 4, tz=NEW_YORK
    )
    assert ms(2026, 3, 8, 4, tz=NEW_YORK) == ms(2026, 3, 8, 8)  # 04:00 EDT is 08:00 UTC, not 09:00


def test_the_instant_depends_on_the_clock_that_applies_the_op_not_on_who_computed_the_candidates() -> None:
    # The hub computes candidates around its own clock; the script picks with its own: a hub a minute
    # ahead of Redis across the clearing still yields the instant Redis's clock calls next.
    redis_now = ms(2026, 12, 6, 15, 59, tz=dt.UTC)
    hub_now = redis_now + 120_000  # already past 16:00 UTC on the hub
    assert stock.resolve_until(
        redis_now, clearing=stock.clearing_instants(hub_now, MIDNIGHT, SHANGHAI)
    ) == ms(2026, 12, 6, 16)


def test_ttl_and_until_resolve_and_an_instant_outside_the_bounds_is_refused() -> None:
    now = ms(2026, 12, 6, 3)
    assert stock.resolve_until(now, ttl_ms=60_000) == now + 60_000
    assert stock.resolve_until(now, until=now + 1) == now + 1
    assert stock.resolve_until(now, until=now + stock.MAX_TTL_MS) == now + stock.MAX_TTL_MS
    assert stock.resolve_until(now, until=now) is None  # already over
    assert stock.resolve_until(now, until=now + stock.MAX_TTL_MS + 1) is None
    assert stock.resolve_until(now, clearing=[now - 1]) is None  # no candidate ahead: refused, not forever
    assert stock.resolve_until(now) is None


@given(st.integers(0, 2**42), st.integers(0, 23), st.integers(0, 59))
def test_the_next_clearing_is_always_ahead_within_a_day_and_at_the_wall_time(
    now: int, hour: int, minute: int
) -> None:
    at = dt.time(hour, minute)
    until = stock.resolve_until(now, clearing=stock.clearing_instants(now, at, SHANGHAI))
    assert until is not None and now < until <= now + 24 * 3600 * 1000
    local = dt.datetime.fromtimestamp(until / 1000, SHANGHAI)
    assert (local.hour, local.minute, local.second) == (hour, minute, 0)


def test_reserve_takes_ttl_ms_or_until_or_neither_but_never_both() -> None:
    base = {"sku": "S", "member": "m", "channel": "web", "qty": 1}
    assert parse_args(stock.RESERVE, {**base, "ttl_ms": 1000}) is not None
    assert parse_args(stock.RESERVE, {**base, "until": 1_800_000_000_000}) is not None
    assert parse_args(stock.RESERVE, {**base, "until": stock.CLEARING}) is not None
    assert parse_args(stock.RESERVE, base) is not None  # the hub's default hold
    for bad in (
        {"ttl_ms": 1000, "until": stock.CLEARING},
        {"until": "tomorrow"},
        {"until": -1},
        {"ttl_ms": 0},
    ):
        with pytest.raises(OpRejected) as info:
            parse_args(stock.RESERVE, {**base, **bad})
        assert info.value.code == ErrorCode.BAD_ARGS, bad


def test_a_rejected_until_is_a_typed_rejection_through_apply() -> None:
    s = stock.apply(stock.empty(), stock.Op(stock.RESTOCK, qty=5), 0).stock
    op = stock.Op(stock.RESERVE, qty=1, channel="web", member="m", rid="a/1", until=0)
    assert stock.apply(s, op, 10).rejected is ErrorCode.BAD_ARGS  # unresolved or past: nothing is held
