"""docs/grafana/syncd.json asks only for series a hub exports, with the labels it exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from protocol import frames
from protocol.errors import ErrorCode
from syncd.auth import Principal, Role
from syncd.fanout import FanoutStats
from syncd.metrics import Metrics, SessionCollector
from syncd.session import RateLimit, Session
from syncd.store.redis_store import OpOutcome
from syncd.telemetry import Telemetry

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "syncd.json"


def exported() -> dict[str, set[str]]:
    """Every sample name a hub exports once each kind of event happened, with its label names."""
    metrics, telemetry = Metrics(), Telemetry(60)
    till = Principal("till-1", "pos", Role.POS, frozenset({"*"}), "s1", 2e9)
    report = {"outbox": 1.0, "outbox_age_ms": 5.0, "sync_ms_p50": 1.0, "sync_ms_p95": 2.0, "sync_ms_p99": 3.0}
    telemetry.received(till, report | {"sync_ms_le_5": 1.0, "ack_ms_le_5": 1.0})
    outcomes = [
        OpOutcome(seq=1, ok=True, conflict={"sku": "A"}),
        OpOutcome(seq=2, ok=False, code=ErrorCode.BAD_ARGS),
        OpOutcome(seq=3, ok=True, dup=True),
        OpOutcome(seq=4, ok=True),
        OpOutcome(seq=5, ok=False, code=ErrorCode.INSUFFICIENT_STOCK),
    ]
    kinds = ["cart.add", "cart.add", "cart.add", "stock.reserve", "stock.reserve"]
    metrics.settled(
        "pos", [frames.Op(seq=n, kind=k, args={}) for n, k in enumerate(kinds, 1)], outcomes, 0.01
    )
    metrics.expired.inc()
    metrics.refused_op("pos", ErrorCode.RATE_LIMITED)
    metrics.opened("pos", "pos", True)
    metrics.closed(1000)
    session = Session(till, max_queue_bytes=1 << 20, rate=RateLimit(rate=1, burst=1), on_gap=lambda *_: None)
    metrics.registry.register(SessionCollector(metrics, [session], telemetry, FanoutStats()))
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_every_series_and_label_of_the_grafana_dashboard_exists() -> None:
    board = json.loads(DASHBOARD.read_text())
    names = exported()
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    assert len(exprs) >= 12
    for expr in exprs:
        for name, selector in re.findall(r"\b(syncd_[a-z0-9_]+)(\{[^}]*\})?", expr):
            assert name in names, f"{name} is not exported"
            labels = set(re.findall(r"([a-z_]+)=", selector)) - {"job"}
            assert labels <= names[name], f"{name} has no label {labels - names[name]}"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (part.strip() for part in group.split(",")):
                assert label == "le" or any(label in found for found in names.values()), label
