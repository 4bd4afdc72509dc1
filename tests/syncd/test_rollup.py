"""The dashboard's fold of every hub process's figures: rates, worst latency, alerts raised and cleared."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from protocol.stats import BOUNDS_MS, bucket
from syncd.rollup import MIN_OPS_FOR_RATE, STALE_MS, STOCK_ROWS, WATCH_TTL_MS, Board, Watch
from syncd.settings import Settings
from tests.e2e.harness import free_port

T0 = 1_767_225_600_000


def hub(
    name: str,
    ts: int,
    accepted: float = 0,
    refused: float = 0,
    sync: dict[float, int] | None = None,
    stock: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """A process's published figures; ``sync``: its devices' sync latency samples so far, ``{ms: count}``."""
    counts = [0] * (len(BOUNDS_MS) + 1)
    for ms, n in (sync or {}).items():
        counts[bucket(ms)] += n
    return {
        "hub": name,
        "ts": ts,
        "fanout": True,
        "counters": {"accepted": accepted, "refused": refused, "refused:unavailable": refused},
        "connections": {"pos": 1.0},
        "histograms": {"sync": {"pos": counts}} if sync else {},
        "fleet": [],
        "log": [],
        "stock": [list(row) for row in stock],
    }


def test_rates_add_up_the_processes_and_a_restarted_process_counts_from_zero() -> None:
    board = Board(Settings())
    board.fold([hub("a", T0, accepted=100), hub("b", T0, accepted=50)], T0)
    state = board.fold([hub("a", T0 + 1000, accepted=130), hub("b", T0 + 1000, accepted=60)], T0 + 1000)
    assert state["ops_per_s"] == 40
    assert (state["hubs"], state["connections"]) == (2, {"pos": 2.0})
    state = board.fold([hub("a", T0 + 2000, accepted=5), hub("b", T0 + 2000, accepted=70)], T0 + 2000)
    assert state["ops_per_s"] == 10  # a's counters went back to 5: a restart, not -125 ops


def test_a_process_that_stopped_publishing_drops_out() -> None:
    board = Board(Settings())
    board.fold([hub("a", T0), hub("b", T0)], T0)
    later = T0 + STALE_MS + 1
    state = board.fold([hub("a", T0, sync={900: 50}), hub("b", later)], later)
    assert state["hubs"] == 1
    assert state["latency"] == {}
    assert state["alerts"] == []


def test_latency_percentiles_cover_every_sample_of_every_process_in_the_window() -> None:
    board = Board(Settings(alert_window_s=10))
    board.fold([hub("a", T0), hub("b", T0)], T0)  # what each process had before the page: not counted
    state = board.fold([hub("a", T0 + 1000, sync={40: 10}), hub("b", T0 + 1000, sync={700: 10})], T0 + 1000)
    pos = state["latency"]["pos"]
    assert pos["samples"] == 20
    assert pos["p50"] == 50.0  # half the samples are a's, under 50 ms; b's are the slow half
    assert pos["p99"] == pytest.approx(990.0)  # neither process alone has this p99
    state = board.fold([hub("a", T0 + 2000, sync={40: 30}), hub("b", T0 + 2000, sync={700: 10})], T0 + 2000)
    assert state["latency"]["pos"]["samples"] == 40
    assert state["latency"]["pos"]["p50"] == pytest.approx(41.667, abs=1e-3)
    state = board.fold(
        [hub("a", T0 + 12_500, sync={40: 31}), hub("b", T0 + 12_500, sync={700: 10})], T0 + 12_500
    )
    assert state["latency"]["pos"]["samples"] == 1  # the older samples left the 10 s window


def test_the_stock_panel_shows_the_skus_with_the_most_watchers_over_every_process() -> None:
    many = [(f"SKU-{n}", 1) for n in range(STOCK_ROWS + 5)]
    state = Board(Settings()).fold(
        [hub("a", T0, stock=[("HOT", 40), ("WARM", 3), *many]), hub("b", T0, stock=[("WARM", 39)])], T0
    )
    watched = [(row["sku"], row["watchers"]) for row in state["stock"]]
    assert watched[:2] == [("WARM", 42), ("HOT", 40)]
    assert len(watched) == STOCK_ROWS


def test_the_latency_alert_is_raised_over_the_threshold_and_cleared_on_recovery() -> None:
    board = Board(Settings(alert_sync_p99_ms=500, alert_window_s=10))
    assert board.fold([hub("a", T0), hub("b", T0)], T0)["alerts"] == []
    fast = {20: 100}
    assert board.fold([hub("a", T0 + 1000, sync=fast), hub("b", T0 + 1000)], T0 + 1000)["alerts"] == []
    slow = {20: 100, 700: 20}
    raised = board.fold([hub("a", T0 + 2000, sync=fast), hub("b", T0 + 2000, sync=slow)], T0 + 2000)["alerts"]
    assert [(a["kind"], a["channel"], a["limit"], a["since"]) for a in raised] == [
        ("sync", "pos", 500, T0 + 2000)
    ]
    assert raised[0]["value"] > 500
    slower = {20: 100, 700: 40}
    still = board.fold([hub("a", T0 + 3000, sync=fast), hub("b", T0 + 3000, sync=slower)], T0 + 3000)
    assert still["alerts"][0]["since"] == T0 + 2000
    recovered = {20: 10_000, 700: 40}
    cleared = board.fold([hub("a", T0 + 4000, sync=fast), hub("b", T0 + 4000, sync=recovered)], T0 + 4000)
    assert cleared["alerts"] == []  # 40 slow of 10,000 fresh samples: p99 is back under the limit


def test_the_failure_alert_needs_enough_ops_and_a_rate_over_the_threshold_in_the_window() -> None:
    board = Board(Settings(alert_failure_rate=0.01, alert_window_s=10))
    board.fold([hub("a", T0)], T0)
    few = board.fold([hub("a", T0 + 1000, accepted=1, refused=1)], T0 + 1000)
    assert few["failure_rate"] == 0.5 and few["alerts"] == []  # 2 ops are too few to call an outage
    many = board.fold([hub("a", T0 + 2000, accepted=MIN_OPS_FOR_RATE * 10, refused=5)], T0 + 2000)
    assert [a["kind"] for a in many["alerts"]] == ["failures"]
    assert many["codes"] == {"refused:unavailable": 5}
    calm = board.fold([hub("a", T0 + 13_000, accepted=MIN_OPS_FOR_RATE * 100, refused=5)], T0 + 13_000)
    assert calm["alerts"] == []  # the failures left the 10 s window
    assert calm["success_rate"] == 1.0


async def test_an_unreadable_redis_is_shown_not_raised() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        state = await Board(Settings()).read(client)
    finally:
        await client.aclose()
    assert state["redis_ok"] is False and state["alerts"] == []


def test_a_watch_is_active_for_a_while_after_each_announcement_only() -> None:
    watch = Watch()
    assert not watch.active
    watch.heard(b"1")
    assert watch.active
    watch.until_ms -= WATCH_TTL_MS
    assert not watch.active
