"""The dashboard's figures for the whole fleet of hub processes, through Redis.

A dashboard page is served by one hub process, but a brand runs several behind a load balancer: each counts
only what it served. So every process publishes its own figures once a second (:class:`Publisher`: its
metrics registry read as samples, its clients' reports, its recent session log) into one Redis hash, a field
per process, and whichever process serves the page folds all fresh fields together (:class:`Board`): rates
from the difference of each process's counters between two reads; sync latency percentiles fleet-wide, from
the differences of each process's latency histograms (every device's samples, :mod:`protocol.stats`) added
up over ``alert_window_s`` — a percentile of all samples, which no fold of per-process percentiles can give;
fleet and log merged; the stock panel shows the SKUs with the most subscribers over every process, their state
read from Redis (:mod:`syncd.stockwatch`). A process that stops publishing drops out after :data:`STALE_MS`.

Processes publish only while someone watches: a page's feed announces itself on :data:`WATCH_CHANNEL` every
:data:`WATCH_EVERY_S`, which every process hears through its fan-out connection (:class:`Watch`). A hub nobody
watches sends Redis nothing for the dashboard, so its idle pool connections are still closed
(``SYNCD_REDIS_IDLE_S``).

Alerts are judged on the folded figures over ``alert_window_s``: a channel's fleet-wide p99 sync latency above
``alert_sync_p99_ms``, or rejected and refused ops above ``alert_failure_rate`` of all ops (once at least
:data:`MIN_OPS_FOR_RATE` ops were seen, so one bad op of two is no 50 % outage). An alert clears as soon as
its figure is back under the threshold.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

from protocol import stats as report_stats
from syncd.masking import mask
from syncd.settings import Settings
from syncd.stockwatch import most_watched, read_stock, watched

if TYPE_CHECKING:
    from syncd.hub import Hub

log = logging.getLogger("syncd.rollup")

KEY: Final = "syncd:dashboard:hubs"
INTERVAL_S: Final = 1.0
STALE_MS: Final = 5_000
"""A process whose figures are older than this is counted as gone."""
KEY_TTL_MS: Final = 60_000
WATCH_CHANNEL: Final = "syncd:dashboard:watch"
WATCH_EVERY_S: Final = 5.0
WATCH_TTL_MS: Final = 15_000
"""Processes keep publishing this long after the last announcement (three announcements may be lost)."""
MIN_OPS_FOR_RATE: Final = 20
FLEET_ROWS: Final = 200
LOG_ROWS: Final = 200
STOCK_ROWS: Final = 10
"""SKUs on the stock panel: the most watched."""
PERCENTILES: Final = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
_COUNTERS: Final = {
    "syncd_ops_accepted_total": "accepted",
    "syncd_ops_rejected_total": "rejected",
    "syncd_ops_refused_total": "refused",
    "syncd_ops_conflicts_total": "conflicts",
    "syncd_ops_duplicates_total": "duplicates",
    "syncd_stock_reservations_total": "reservations",
    "syncd_stock_refusals_total": "stock_refused",
    "syncd_stock_expired_total": "expired",
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def snapshot(hub: Hub, hub_id: str) -> dict[str, Any]:
    """This process's figures: counters (cumulative), connections, reports, recent log lines."""
    assert hub.metrics is not None
    counters: dict[str, float] = collections.defaultdict(float)
    connections: dict[str, float] = collections.defaultdict(float)
    for family in hub.metrics.registry.collect():
        for sample in family.samples:
            kind = _COUNTERS.get(sample.name)
            if kind is not None:
                counters[kind] += sample.value
                if kind in ("rejected", "refused"):
                    counters[f"{kind}:{sample.labels['code']}"] += sample.value
            elif sample.name == "syncd_connections":
                connections[sample.labels["channel"]] += sample.value
    return {
        "hub": hub_id,
        "ts": _now_ms(),
        "fanout": hub.fanout.stats.connected,
        "counters": counters,
        "connections": connections,
        "histograms": {
            "sync": {chan: counts for chan, (counts, _) in hub.telemetry.histograms["sync"].items()}
        },
        "fleet": hub.telemetry.fleet(FLEET_ROWS),
        "stock": watched(hub.fanout.listeners(), STOCK_ROWS),
        "log": list(hub.telemetry.recent)[-LOG_ROWS:],
    }


class Watch:
    """Whether a dashboard page is open on any hub process: set by the announcements the fan-out hears."""

    def __init__(self) -> None:
        self.until_ms = 0

    def heard(self, data: bytes) -> None:
        self.until_ms = _now_ms() + WATCH_TTL_MS

    @property
    def active(self) -> bool:
        return _now_ms() < self.until_ms


async def announce(redis: Any) -> None:
    """Tell every hub process that a page is watching (its feed calls this every :data:`WATCH_EVERY_S`)."""
    with contextlib.suppress(Exception):  # Redis away: the page shows it
        await redis.publish(WATCH_CHANNEL, b"1")


class Publisher:
    """Writes this process's figures to Redis every :data:`INTERVAL_S` while a page watches."""

    def __init__(self, hub: Hub, redis: Any, watch: Watch) -> None:
        self.hub = hub
        self.redis = redis
        self.watch = watch
        self.hub_id = uuid.uuid4().hex[:12]

    async def run(self) -> None:
        while True:
            if not self.watch.active:
                await asyncio.sleep(INTERVAL_S)
                continue
            try:
                data = json.dumps(snapshot(self.hub, self.hub_id), separators=(",", ":"))
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(KEY, self.hub_id, data)
                    pipe.pexpire(KEY, KEY_TTL_MS)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the board shows it; try again next tick
                log.debug("could not publish the dashboard figures: %s", exc)
            await asyncio.sleep(INTERVAL_S)

    async def withdraw(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.hdel(KEY, self.hub_id)


class Board:
    """Folds every process's published figures into what the dashboard shows; one per page feed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._last: dict[str, tuple[int, dict[str, float], dict[str, list[int]]]] = {}
        self._window: collections.deque[tuple[int, dict[str, float], dict[str, list[int]]]] = (
            collections.deque()
        )
        """Per read: how much every process's counters and sync latency buckets grew since the last."""
        self._alerts: dict[str, dict[str, Any]] = {}

    async def read(self, redis: Any) -> dict[str, Any]:
        """The dashboard's state now; ``redis_ok`` false (and no figures) when Redis cannot be read."""
        try:
            raw: dict[bytes, bytes] = await redis.hgetall(KEY)
        except Exception as exc:
            return {"ts": _now_ms(), "redis_ok": False, "error": str(exc)[:200], "alerts": []}
        state = self.fold([json.loads(value) for value in raw.values()], _now_ms())
        try:
            stock = await read_stock(redis, [row["sku"] for row in state["stock"]])
        except Exception as exc:  # the rest of the board is still worth showing
            log.debug("could not read the watched stock: %s", exc)
            stock = {}
        state["stock"] = [
            {"sku": mask(row["sku"]), "watchers": row["watchers"], "state": stock.get(row["sku"])}
            for row in state["stock"]
        ]
        return state

    def fold(self, hubs: list[dict[str, Any]], now: int) -> dict[str, Any]:
        alive = [h for h in hubs if now - int(h["ts"]) <= STALE_MS]
        delta: dict[str, float] = collections.defaultdict(float)
        buckets: dict[str, list[int]] = {}
        for h in alive:
            previous = self._last.get(h["hub"])
            counters = h["counters"]
            sync = h.get("histograms", {}).get("sync", {})
            if previous is not None and h["ts"] > previous[0]:
                for name, value in counters.items():
                    delta[name] += max(0.0, value - previous[1].get(name, 0.0))  # a restart counts from 0
                for chan, counts in sync.items():
                    before = previous[2].get(chan) or [0] * len(counts)
                    total = buckets.setdefault(chan, [0] * len(counts))
                    for i, (now_n, was_n) in enumerate(zip(counts, before, strict=True)):
                        total[i] += max(0, now_n - was_n)
            self._last[h["hub"]] = (h["ts"], counters, sync)
        self._window.append((now, dict(delta), buckets))
        while self._window and now - self._window[0][0] > self.settings.alert_window_s * 1000:
            self._window.popleft()
        span = max(1.0, (now - self._window[0][0]) / 1000) if len(self._window) > 1 else 1.0
        window: dict[str, float] = collections.defaultdict(float)
        samples: dict[str, list[int]] = {}
        for _, tick, tick_buckets in self._window:
            for name, value in tick.items():
                window[name] += value
            for chan, counts in tick_buckets.items():
                total = samples.setdefault(chan, [0] * len(counts))
                for i, n in enumerate(counts):
                    total[i] += n
        settled = window["accepted"] + window["rejected"] + window["refused"]
        failure_rate = (window["rejected"] + window["refused"]) / settled if settled else 0.0
        latency = _percentiles(samples)
        connections: dict[str, float] = collections.defaultdict(float)
        for h in alive:
            for chan, count in h["connections"].items():
                connections[chan] += count
        codes = {name: value for name, value in window.items() if name.startswith(("rejected:", "refused:"))}
        state = {
            "ts": now,
            "redis_ok": True,
            "hubs": len(alive),
            "fanout_ok": all(h["fanout"] for h in alive),
            "durability": self.settings.durability,
            "ops_per_s": delta["accepted"],
            "ops_per_s_window": window["accepted"] / span,
            "success_rate": 1.0 - failure_rate if settled else None,
            "failure_rate": failure_rate if settled else None,
            "conflicts": window["conflicts"],
            "duplicates": window["duplicates"],
            "codes": codes,
            "latency": latency,
            "target_ms": 100,
            "alert_sync_p99_ms": self.settings.alert_sync_p99_ms,
            "alert_failure_rate": self.settings.alert_failure_rate,
            "connections": dict(connections),
            "fleet": _fleet(alive),
            "stock": _watched(alive),
            "stock_counts": {name: window[name] for name in ("reservations", "stock_refused", "expired")},
            "log": sorted((e for h in alive for e in h["log"]), key=lambda e: e["ts"])[-LOG_ROWS:],
        }
        state["alerts"] = self._judge(latency, failure_rate, settled, now)
        return state

    def _judge(
        self, latency: dict[str, dict[str, float]], failure_rate: float, settled: float, now: int
    ) -> list[dict[str, Any]]:
        """Alerts in force now: raised when a figure crosses its threshold, cleared when it is back."""
        firing: dict[str, dict[str, Any]] = {}
        limit = self.settings.alert_sync_p99_ms
        for chan, figures in latency.items():
            p99 = figures.get("p99", 0.0)
            if p99 > limit:
                firing[f"sync:{chan}"] = {"kind": "sync", "channel": chan, "value": p99, "limit": limit}
        if settled >= MIN_OPS_FOR_RATE and failure_rate > self.settings.alert_failure_rate:
            firing["failures"] = {
                "kind": "failures",
                "value": failure_rate,
                "limit": self.settings.alert_failure_rate,
            }
        for key, alert in firing.items():
            alert["since"] = self._alerts.get(key, {}).get("since", now)
        for key in set(self._alerts) - set(firing):
            log.warning("alert cleared: %s", key)
        for key in set(firing) - set(self._alerts):
            log.warning("alert raised: %s (%s)", key, firing[key]["value"])
        self._alerts = firing
        return list(firing.values())


def _percentiles(samples: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Per channel with samples: ``p50``, ``p95``, ``p99`` (ms) of all of them, and how many there were."""
    latency: dict[str, dict[str, float]] = {}
    for chan, counts in sorted(samples.items()):
        count = sum(counts)
        if count:
            figures = {name: report_stats.quantile(counts, q) or 0.0 for name, q in PERCENTILES}
            latency[chan] = figures | {"samples": float(count)}
    return latency


def _watched(hubs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The :data:`STOCK_ROWS` SKUs with the most subscribers over every process."""
    watchers: dict[str, int] = collections.defaultdict(int)
    for h in hubs:
        for sku, count in h.get("stock", []):
            watchers[sku] += int(count)
    return [{"sku": sku, "watchers": n} for sku, n in most_watched(watchers.items(), STOCK_ROWS)]


def _fleet(hubs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's tills, the latest row per terminal, the oldest unsynced op first."""
    rows: dict[str, dict[str, Any]] = {}
    for h in hubs:
        for row in h["fleet"]:
            known = rows.get(row["terminal"])
            if known is None or row["seen_ms"] > known["seen_ms"] or (row["online"] and not known["online"]):
                rows[row["terminal"]] = row
    return sorted(rows.values(), key=lambda r: (-r["oldest_ms"], r["seen_ms"]))[:FLEET_ROWS]
