"""The dashboard's fold of every hub process's figures: rates, worst latency, alerts raised and cleared."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from syncd.rollup import MIN_OPS_FOR_RATE, STALE_MS, Board
from syncd.settings import Settings
from tests.e2e.harness import free_port

T0 = 1_767_225_600_000


def hub(
    name: str, ts: int, accepted: float = 0, refused: float = 0, p99: float | None = None
) -> dict[str, Any]:
    return {
        "hub": name,
        "ts": ts,
        "fanout": True,
        "counters": {"accepted": accepted, "refused": refused, "refused:unavailable": refused},
        "connections": {"pos": 1.0},
        "latency": {} if p99 is None else {"pos": {"p50": 10.0, "p99": p99}},
        "fleet": [],
        "log": [],
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
    state = board.fold([hub("a", T0, p99=900), hub("b", T0 + STALE_MS + 1)], T0 + STALE_MS + 1)
    assert state["hubs"] == 1
    assert state["latency"] == {}
    assert state["alerts"] == []


def test_the_latency_alert_is_raised_over_the_threshold_and_cleared_on_recovery() -> None:
    board = Board(Settings(alert_sync_p99_ms=500))
    assert board.fold([hub("a", T0, p99=499)], T0)["alerts"] == []
    raised = board.fold([hub("a", T0 + 1000, p99=650), hub("b", T0 + 1000, p99=20)], T0 + 1000)["alerts"]
    assert raised == [{"kind": "sync", "channel": "pos", "value": 650, "limit": 500, "since": T0 + 1000}]
    still = board.fold([hub("a", T0 + 2000, p99=700)], T0 + 2000)["alerts"]
    assert still[0]["since"] == T0 + 1000
    assert board.fold([hub("a", T0 + 3000, p99=80)], T0 + 3000)["alerts"] == []


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
