"""The fan-out's reconnect delays while Redis is down: growing, capped and jittered (docs/traps.md §12).

A fixed-interval loop that logs once would pass the end-to-end outage test; these pin the schedule itself.
"""

from __future__ import annotations

import itertools
import random

from syncd.fanout import RETRY_INITIAL_S, RETRY_MAX_S, retry_delays


def _first(n: int, seed: int) -> list[float]:
    return list(itertools.islice(retry_delays(rng=random.Random(seed)), n))


def test_each_delay_lies_between_half_its_ceiling_and_the_ceiling_which_doubles_up_to_the_cap() -> None:
    for seed in range(20):
        for attempt, delay in enumerate(_first(12, seed)):
            ceiling = min(RETRY_MAX_S, RETRY_INITIAL_S * 2**attempt)
            assert ceiling / 2 <= delay <= ceiling


def test_delays_reach_the_cap_and_never_pass_it() -> None:
    tail = _first(40, seed=1)[-20:]
    assert all(RETRY_MAX_S / 2 <= d <= RETRY_MAX_S for d in tail)


def test_two_hubs_do_not_retry_in_step() -> None:
    a, b = _first(8, seed=1), _first(8, seed=2)
    assert all(x != y for x, y in zip(a, b, strict=True))
