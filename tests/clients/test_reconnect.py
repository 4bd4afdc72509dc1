"""The reconnect policy: a pure generator of jittered delays, and one table of close-code decisions."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.reconnect import (
    SLOW_CONSUMER_MIN_S,
    TRY_AGAIN_LATER_MIN_S,
    Decision,
    Hubs,
    after_close,
    backoff,
    retry_hint_s,
)
from protocol.errors import CloseCode


@given(st.integers(0, 2**32), st.integers(1, 40))
def test_each_delay_is_jittered_below_a_capped_exponential_ceiling(seed: int, attempts: int) -> None:
    delays = list(itertools.islice(backoff(rng=random.Random(seed)), attempts))
    for attempt, delay in enumerate(delays):
        assert 0.0 <= delay <= min(30.0, 0.5 * 2**attempt)


class _Highest(random.Random):
    """Draws the top of every range, so the delays show the ceiling itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_the_ceiling_doubles_per_attempt_up_to_the_cap() -> None:
    delays = list(itertools.islice(backoff(rng=_Highest()), 9))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_thousand_clients_spread_their_first_reconnects() -> None:
    rng = random.Random(7)
    firsts = [next(backoff(rng=rng)) for _ in range(1000)]
    buckets = {int(d / 0.05) for d in firsts}  # 50 ms buckets over the first 0.5 s
    assert len(buckets) == 10  # every bucket used: no thundering herd


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (1006, "", Decision(True)),  # the network dropped: reconnect
        (CloseCode.GOING_AWAY, "", Decision(True)),
        (CloseCode.INTERNAL_ERROR, "", Decision(True)),
        (CloseCode.TRY_AGAIN_LATER, "", Decision(True, TRY_AGAIN_LATER_MIN_S)),
        (CloseCode.TRY_AGAIN_LATER, "overloaded; retry_after_ms=12000", Decision(True, 12.0)),
        (CloseCode.SLOW_CONSUMER, "", Decision(True, SLOW_CONSUMER_MIN_S)),
        (CloseCode.HEARTBEAT_TIMEOUT, "", Decision(True)),
        (CloseCode.BACKEND_UNAVAILABLE, "", Decision(True)),
        (4321, "", Decision(True)),  # unnamed, in the reconnect range
        (CloseCode.UNAUTHORIZED, "", Decision(False, auth=True)),  # a new token can cure it: wait for one
        (CloseCode.TOKEN_EXPIRED, "", Decision(False, auth=True)),
        (CloseCode.REVOKED, "", Decision(False, auth=True)),
        (CloseCode.UNSUPPORTED_VERSION, "", Decision(False)),
        (CloseCode.FORBIDDEN_ORIGIN, "", Decision(False)),
        (4987, "", Decision(False)),  # unnamed, in the stop range
        (CloseCode.NORMAL, "", Decision(False)),
        (CloseCode.PROTOCOL_ERROR, "", Decision(False)),  # the hub says our frame was bad: not again as is
        (CloseCode.MESSAGE_TOO_BIG, "", Decision(False)),
    ],
)
def test_close_codes_from_the_hub(code: int, reason: str, expected: Decision) -> None:
    assert after_close(code, reason) == expected


def test_an_expired_token_is_retried_when_a_fresh_one_can_be_fetched() -> None:
    assert after_close(CloseCode.TOKEN_EXPIRED, fresh_token=True) == Decision(True)


def test_a_provider_whose_tokens_keep_being_refused_is_asked_again_with_backoff_as_auth_required() -> None:
    again = after_close(CloseCode.TOKEN_EXPIRED, fresh_token=True, auth_refusals=1)
    assert again == Decision(True, auth=True)
    assert after_close(CloseCode.UNAUTHORIZED, fresh_token=True) == Decision(True, auth=True)


def test_hubs_rotate_in_order_and_a_single_url_stays() -> None:
    hubs = Hubs(["ws://a/ws", "ws://b/ws", "ws://c/ws"])
    assert [hubs.current, hubs.advance(), hubs.advance(), hubs.advance()] == [
        "ws://a/ws",
        "ws://b/ws",
        "ws://c/ws",
        "ws://a/ws",
    ]
    one = Hubs("ws://only/ws")
    assert (one.urls, one.advance()) == (("ws://only/ws",), "ws://only/ws")
    with pytest.raises(ValueError, match="at least one"):
        Hubs([])


def test_a_close_the_client_made_over_a_broken_hub_is_retried() -> None:
    assert after_close(CloseCode.PROTOCOL_ERROR, by_hub=False) == Decision(True)


def test_retry_hints_are_read_from_the_reason_only_when_well_formed() -> None:
    assert retry_hint_s("retry_after_ms=250") == 0.25
    assert retry_hint_s("retry_after_ms=") is None
    assert retry_hint_s("later") is None


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        next(backoff(initial_s=0))
