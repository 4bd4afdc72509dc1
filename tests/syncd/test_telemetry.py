"""Device reports and the session log, as one hub process keeps them."""

from __future__ import annotations

import logging
import math

import pytest

from syncd.auth import Principal, Role
from syncd.metrics import BoundedLabel
from syncd.telemetry import MAX_CLIENTS, Telemetry

T0 = 1_767_225_600_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def till(n: int = 1, store: str | None = "s1", channel: str = "pos") -> Principal:
    return Principal(f"till-{n}", channel, Role.POS, frozenset({"*"}), store, 2e9)


def test_reports_are_clamped_and_an_offline_tills_backlog_ages_with_the_clock() -> None:
    clock = Clock()
    telemetry = Telemetry(60, clock=clock)
    assert telemetry.connected(till(), "pos/2.4") is False
    telemetry.received(till(), {"outbox": 5.0, "outbox_age_ms": math.nan, "sync_ms_p99": -3.0})
    report = telemetry.reports["till-1"]
    assert (report.outbox, report.outbox_age_ms, report.latency) == (5.0, 0.0, {"sync_p99": 0.0})
    telemetry.received(till(), {"outbox": 1e30, "outbox_age_ms": 2000.0})
    assert report.outbox == 1e12
    telemetry.disconnected(till())
    clock.now += 10_000
    assert telemetry.fleet(10) == [
        {
            "store": "s1",
            "terminal": "till-1",
            "backlog": 10**12,
            "oldest_ms": 12_000,
            "seen_ms": T0,
            "online": False,
            "version": "pos/2.4",
        }
    ]
    assert telemetry.connected(till(), "pos/2.5") is True  # seen before: a reconnect
    assert telemetry.reports["till-1"].agent == "pos/2.5"


def test_latency_speaks_for_live_devices_within_the_window_and_backlog_for_every_store() -> None:
    clock = Clock()
    telemetry = Telemetry(10, clock=clock)
    telemetry.received(till(1), {"sync_ms_p99": 300.0, "outbox": 2.0, "outbox_age_ms": 100.0})
    telemetry.received(till(2), {"sync_ms_p99": 900.0})
    telemetry.received(till(3, store=None, channel="app"), {"sync_ms_p99": 50.0})
    telemetry.disconnected(till(2))
    view = telemetry.view(BoundedLabel(), BoundedLabel())
    assert view.latency == {"pos": {"sync_p99": 300.0}, "app": {"sync_p99": 50.0}}
    assert view.backlog == {"s1": (2.0, 100.0)}
    clock.now += 11_000
    assert telemetry.view(BoundedLabel(), BoundedLabel()).latency == {}


def test_histograms_add_up_per_bounded_channel() -> None:
    telemetry = Telemetry(60, channel=BoundedLabel(limit=1))
    telemetry.received(till(1), {"sync_ms_le_5": 2.0, "sync_ms_sum": 6.0})
    telemetry.received(till(2), {"sync_ms_le_5": 1.0, "sync_ms_le_inf": 1.0, "sync_ms_sum": 20_004.0})
    telemetry.received(till(3, channel="kiosk"), {"sync_ms_le_5": 7.0})
    counts, total = telemetry.histograms["sync"]["pos"]
    assert (counts[2], counts[-1], sum(counts), total) == (3, 1, 4, 20_010.0)
    assert sum(telemetry.histograms["sync"]["other"][0]) == 7
    assert telemetry.histograms["ack"] == {}


def test_the_oldest_silent_clients_are_forgotten_beyond_the_bound() -> None:
    telemetry = Telemetry(60)
    for n in range(MAX_CLIENTS + 2):
        telemetry.received(till(n), {})
    assert len(telemetry.reports) == MAX_CLIENTS
    assert "till-0" not in telemetry.reports and "till-1" not in telemetry.reports


def test_a_log_line_is_masked_and_carries_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry(60)
    phone = Principal("app-13812345678", "miniapp", Role.APP, frozenset({"*"}), None, 2e9)
    with caplog.at_level(logging.INFO, logger="syncd.sessions"):
        telemetry.event("rejected", phone, seq=3, code="bad_args", member="13812345678")
    (record,) = caplog.records
    assert record.getMessage() == (
        "rejected client=app-138****5678 channel=miniapp seq=3 code=bad_args member=138****5678"
    )
    assert record.fields["client"] == "app-138****5678"  # type: ignore[attr-defined]
    assert telemetry.recent[-1]["member"] == "138****5678"
