"""Prometheus metrics of one hub process, served at ``GET /metrics``.

Each app owns its :class:`~prometheus_client.CollectorRegistry` (never the process-global one): tests and
embedders run several apps in one process, and their figures must not add up or collide on registration.

Two kinds of figures, with two costs:

- *Events* (ops settled, sessions opened, closes) are counted where they happen. The hot path pays a dict
  lookup and an ``inc()`` per label set touched — one per applied batch, not per op where it can be avoided
  (``benchmarks metrics`` measures it).
- *State* (connections, subscriptions, send queues, client reports) is read from the hub's sessions when
  Prometheus scrapes, by :class:`SessionCollector`: nothing is kept up to date on the hot path.

Labels are bounded (docs/traps.md §18): ``channel`` and ``store`` come from tokens, so only the first
:data:`MAX_LABEL_VALUES` distinct values get a series of their own and later ones count as ``other``;
``code`` is an :class:`~protocol.errors.ErrorCode` or ``other``; ``role`` is the token role. No client, member
or SKU is ever a label: the dashboard's stock panel reads the watched SKUs' state from Redis instead
(:mod:`syncd.stockwatch`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol import frames
from protocol.errors import CloseCode, ErrorCode
from protocol.stats import BOUNDS_MS
from protocol.stock import RESERVE

if TYPE_CHECKING:
    from syncd.fanout import FanoutStats
    from syncd.session import Session
    from syncd.store.redis_store import OpOutcome
    from syncd.telemetry import Telemetry

MAX_LABEL_VALUES: Final = 64
"""Distinct values one label (``channel``, ``store``) takes before further ones are folded into ``other``."""
OTHER: Final = "other"
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; finer below 100 ms, the sync target (docs/design.md §6), coarse above the 500 ms alert."""
_CODES: Final = frozenset(code.value for code in ErrorCode)
_CLOSE_CODES: Final = frozenset(int(code) for code in CloseCode) | {1000, 1001, 1006, 1011}
STOCK_REFUSALS: Final = frozenset(
    code.value
    for code in (
        ErrorCode.INSUFFICIENT_STOCK,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.PURCHASE_LIMIT_EXCEEDED,
        ErrorCode.ALLOTMENT_EXCEEDED,
        ErrorCode.RESERVATION_EXPIRED,
    )
)
"""Rejections by which stock refuses to be oversold (or to sell a hold that lapsed)."""


class BoundedLabel:
    """A label's admitted values: the first ``limit`` seen keep their name, later ones are ``other``."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


def error_code(code: str | None) -> str:
    """``code`` as a label: a protocol error code, else ``other`` (a bounded set whatever a script says)."""
    return code if code in _CODES else OTHER


class Metrics:
    """The hub's counters and histograms, and the registry ``/metrics`` renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.channel = BoundedLabel()
        self.store = BoundedLabel()
        r = self.registry
        self.accepted = Counter("syncd_ops_accepted", "Ops applied (first time)", ["channel"], registry=r)
        self.rejected = Counter(
            "syncd_ops_rejected", "Ops settled as a rejection, by error code", ["channel", "code"], registry=r
        )
        self.conflicts = Counter(
            "syncd_ops_conflicts", "Ops applied with a conflict reported", ["channel"], registry=r
        )
        self.duplicates = Counter(
            "syncd_ops_duplicates",
            "Replayed ops answered from dedup, not applied again",
            ["channel"],
            registry=r,
        )
        self.refused = Counter(
            "syncd_ops_refused",
            "Ops refused without being settled (rate, sequence gap, Redis unavailable), by error code",
            ["channel", "code"],
            registry=r,
        )
        self.apply_latency = Histogram(
            "syncd_apply_latency_seconds",
            "Time the hub took to apply one batch of a connection's ops (store round trips included)",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions = Counter(
            "syncd_sessions_opened", "Sessions opened (handshakes accepted)", ["channel", "role"], registry=r
        )
        self.closes = Counter("syncd_closes", "Connections closed, by close code", ["code"], registry=r)
        self.reconnects = Counter(
            "syncd_reconnects",
            "Sessions opened by a client this process had served before (a reconnect to another process "
            "counts as a first session there)",
            ["channel"],
            registry=r,
        )
        self.reservations = Counter(
            "syncd_stock_reservations", "Stock holds made (stock.reserve applied)", ["channel"], registry=r
        )
        self.stock_refusals = Counter(
            "syncd_stock_refusals",
            "Stock ops rejected rather than oversell (or commit a lapsed hold), by error code",
            ["channel", "code"],
            registry=r,
        )
        self.expired = Counter(
            "syncd_stock_expired",
            "Expired stock holds this process's sweeper returned to the pool",
            registry=r,
        )
        self._hot: dict[str, tuple[Counter, Histogram]] = {}
        """Per channel: the ``accepted`` and ``apply_latency`` children every batch updates."""
        self._reserved: dict[str, Counter] = {}
        """Per channel: the ``reservations`` child (a flash sale updates it with every batch)."""

    def settled(
        self, channel: str, ops: Sequence[frames.Op], outcomes: Sequence[OpOutcome], seconds: float
    ) -> None:
        """The first ``len(outcomes)`` of a connection's ``ops`` were settled in ``seconds``."""
        label = self.channel(channel)
        accepted = reserved = 0
        for op, outcome in zip(ops, outcomes, strict=False):
            if outcome.dup:
                self.duplicates.labels(label).inc()
            elif not outcome.ok:
                code = error_code(outcome.code)
                self.rejected.labels(label, code).inc()
                if code in STOCK_REFUSALS:
                    self.stock_refusals.labels(label, code).inc()
            else:
                accepted += 1
                if outcome.conflict:
                    self.conflicts.labels(label).inc()
                if op.kind == RESERVE:
                    reserved += 1
        children = self._hot.get(label)
        if children is None:  # labels() takes a lock and builds a key: once per channel, not per batch
            children = self._hot[label] = (self.accepted.labels(label), self.apply_latency.labels(label))
        if accepted:
            children[0].inc(accepted)
        if reserved:
            counter = self._reserved.get(label)
            if counter is None:  # made on the first reservation: no series before there is one
                counter = self._reserved[label] = self.reservations.labels(label)
            counter.inc(reserved)
        children[1].observe(seconds)

    def refused_op(self, channel: str, code: str) -> None:
        self.refused.labels(self.channel(channel), error_code(code)).inc()

    def opened(self, channel: str, role: str, reconnect: bool) -> None:
        label = self.channel(channel)
        self.sessions.labels(label, role).inc()
        if reconnect:
            self.reconnects.labels(label).inc()

    def closed(self, code: int) -> None:
        self.closes.labels(str(code) if code in _CLOSE_CODES else OTHER).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SessionCollector(Collector):
    """Gauges read from the hub's live sessions and its clients' last reports, at scrape time."""

    def __init__(
        self,
        metrics: Metrics,
        sessions: Iterable[Session],
        telemetry: Telemetry,
        fanout: FanoutStats,
    ) -> None:
        self._metrics = metrics
        self._sessions = sessions
        self._telemetry = telemetry
        self._fanout = fanout

    def collect(self) -> Iterator[Metric]:
        channel = self._metrics.channel
        connections: dict[tuple[str, str], int] = {}
        subscriptions = queued = deepest = 0
        for session in list(self._sessions):
            key = (channel(session.principal.channel), session.principal.role.value)
            connections[key] = connections.get(key, 0) + 1
            subscriptions += len(session.subscriptions)
            queued += session.queued_bytes
            deepest = max(deepest, session.queued_bytes)
        gauge = GaugeMetricFamily("syncd_connections", "Open sessions", labels=["channel", "role"])
        for (chan, role), count in sorted(connections.items()):
            gauge.add_metric([chan, role], count)
        yield gauge
        yield GaugeMetricFamily("syncd_subscriptions", "Subscriptions held by open sessions", subscriptions)
        yield GaugeMetricFamily("syncd_send_queue_bytes", "Bytes waiting in all send queues", queued)
        yield GaugeMetricFamily(
            "syncd_send_queue_max_bytes", "Bytes waiting in the longest send queue", deepest
        )
        yield from self._reports()
        yield GaugeMetricFamily(
            "syncd_fanout_connected", "1 while the event stream is subscribed", int(self._fanout.connected)
        )
        yield CounterMetricFamily(
            "syncd_redis_reconnects", "Times the fan-out lost its Redis connection", self._fanout.outages
        )

    def _reports(self) -> Iterator[Metric]:
        for kind, what in (
            ("sync", "Commit on the hub to event at another device (clock offset applied)"),
            ("ack", "Op sent to its ack received"),
        ):
            histogram = HistogramMetricFamily(
                f"syncd_{kind}_latency_seconds",
                f"{what}, every sample devices reported (protocol.stats)",
                labels=["channel"],
            )
            for chan, (counts, total_ms) in sorted(self._telemetry.histograms[kind].items()):
                bounds = [f"{bound / 1000:g}" for bound in BOUNDS_MS] + ["+Inf"]
                histogram.add_metric(
                    [chan], list(zip(bounds, itertools.accumulate(counts), strict=True)), total_ms / 1000
                )
            yield histogram
        view = self._telemetry.view(self._metrics.channel, self._metrics.store)
        sync = GaugeMetricFamily(
            "syncd_sync_latency_worst_seconds",
            "Sync latency percentiles of the channel's worst live device in its last report (for alerts)",
            labels=["channel", "quantile"],
        )
        ack = GaugeMetricFamily(
            "syncd_ack_latency_worst_seconds",
            "Ack latency percentiles of the channel's worst live device in its last report",
            labels=["channel", "quantile"],
        )
        for chan, figures in sorted(view.latency.items()):
            for quantile, name in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                if (value := figures.get(f"sync_{name}")) is not None:
                    sync.add_metric([chan, quantile], value / 1000)
                if (value := figures.get(f"ack_{name}")) is not None:
                    ack.add_metric([chan, quantile], value / 1000)
        yield sync
        yield ack
        pending = GaugeMetricFamily(
            "syncd_backlog_ops", "Ops devices of the store hold that the hub has not acked", labels=["store"]
        )
        oldest = GaugeMetricFamily(
            "syncd_backlog_oldest_seconds",
            "Age of the oldest unsynced op in the store's devices",
            labels=["store"],
        )
        for store, (ops, age_ms) in sorted(view.backlog.items()):
            pending.add_metric([store], ops)
            oldest.add_metric([store], age_ms / 1000)
        yield pending
        yield oldest
