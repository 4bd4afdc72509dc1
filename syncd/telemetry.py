"""What devices tell the hub about their sync, and the hub's structured log of sessions.

Devices attach figures to their pings (``ping.stats``, PROTOCOL.md §6.12): ops not yet acked (``outbox``), the
age of the oldest (``outbox_age_ms``) and their latency percentiles (``sync_ms_p50`` …; the SDK applies its
clock offset to the hub's commit time, so they are true durations across clocks). The hub keeps each client's
last report, by ``client_id``: a till that went offline stays in the POS fleet view with what it last said,
its backlog ageing with the clock, until it reconnects and drains (or :data:`MAX_CLIENTS` newer reports push
it out). Unknown names are ignored; the figures are clamped, never trusted to be sane.

The log has one line per connect, disconnect (with its close code), replay batch and rejection. Each line is
``event key=value …`` in text format and carries the same fields as JSON keys with ``--log-format json``;
ids are masked (:mod:`syncd.masking`) and no token is ever a field. The last :data:`LOG_KEPT` lines also feed
the dashboard's sync log.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from protocol import stats as report_stats
from syncd.auth import Principal
from syncd.masking import mask

log = logging.getLogger("syncd.sessions")

MAX_CLIENTS: Final = 10_000
"""Clients whose last report is kept; the longest-silent ones are forgotten first."""
LOG_KEPT: Final = 200
"""Recent log lines kept for the dashboard."""
REPLAY_AGE_MS: Final = 5_000
"""An op batch counts as a replay (made offline, sent late) when its oldest op is older than this."""
LATENCY_NAMES: Final = ("p50", "p95", "p99")
_MAX_FIGURE: Final = 1e12


@dataclasses.dataclass(slots=True)
class Report:
    """A client's last report, and who it is (masked where it could be personal)."""

    client: str
    channel: str
    role: str
    store: str
    agent: str
    connected: bool = True
    seen_ms: int = 0
    outbox: float = 0.0
    outbox_age_ms: float = 0.0
    latency: dict[str, float] = dataclasses.field(default_factory=dict)
    """``sync_p50``, ``ack_p99`` …: milliseconds."""

    def oldest_ms(self, now_ms: int) -> float:
        """Age of the oldest unsynced op now: the reported age, plus the time since, while ops are pending."""
        return self.outbox_age_ms + max(0, now_ms - self.seen_ms) if self.outbox else 0.0


@dataclasses.dataclass(slots=True)
class View:
    """Reports folded for metrics: worst latency per channel, backlog per store."""

    latency: dict[str, dict[str, float]]
    backlog: dict[str, tuple[float, float]]


class Telemetry:
    """Clients' last reports and the recent session log of one hub process."""

    def __init__(
        self,
        window_s: int,
        clock: Callable[[], int] | None = None,
        channel: Callable[[str], str] | None = None,
    ) -> None:
        self.window_ms = window_s * 1000
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._channel = channel or (lambda name: name)
        self.reports: collections.OrderedDict[str, Report] = collections.OrderedDict()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_KEPT)
        self.histograms: dict[str, dict[str, tuple[list[int], float]]] = {k: {} for k in report_stats.KINDS}
        """``kind → channel → (cumulative bucket counts, sum in ms)``: every device's samples added up."""

    # -- reports --------------------------------------------------------------------------------------

    def connected(self, principal: Principal, agent: str) -> bool:
        """Record a session opened; whether this process had seen the client before (a reconnect)."""
        known = principal.client_id in self.reports
        report = self._report(principal, agent)
        report.connected = True
        report.seen_ms = self._clock()
        return known

    def disconnected(self, principal: Principal) -> None:
        report = self.reports.get(principal.client_id)
        if report is not None:
            report.connected = False

    def received(self, principal: Principal, stats: Mapping[str, float]) -> None:
        """A ping's figures: the client's current backlog and latency percentiles."""
        report = self._report(principal, None)
        report.seen_ms = self._clock()
        report.connected = True
        report.outbox = _figure(stats.get("outbox"))
        report.outbox_age_ms = _figure(stats.get("outbox_age_ms"))
        report.latency = {
            f"{kind}_{name}": _figure(stats[key])
            for kind in ("sync", "ack")
            for name in LATENCY_NAMES
            if (key := f"{kind}_ms_{name}") in stats
        }
        for kind, by_channel in self.histograms.items():
            decoded = report_stats.decode(kind, stats)
            if decoded is not None:
                counts, total = decoded
                label = self._channel(principal.channel)
                known, known_total = by_channel.get(label) or ([0] * len(counts), 0.0)
                by_channel[label] = ([a + b for a, b in zip(known, counts, strict=True)], known_total + total)

    def _report(self, principal: Principal, agent: str | None) -> Report:
        report = self.reports.get(principal.client_id)
        if report is None:
            report = Report(
                client=mask(principal.client_id),
                channel=principal.channel,
                role=principal.role.value,
                store=principal.store or "",
                agent=mask(agent or ""),
            )
            self.reports[principal.client_id] = report
            while len(self.reports) > MAX_CLIENTS:
                self.reports.popitem(last=False)
        else:
            self.reports.move_to_end(principal.client_id)
            if agent is not None:
                report.agent = mask(agent)
        return report

    def view(self, channel: Callable[[str], str], store: Callable[[str], str]) -> View:
        """Latency: the worst figure among connected clients that reported within the window. Backlog: per
        store, pending ops summed and the oldest age, connected or not (an offline till's backlog is the
        one that matters)."""
        now = self._clock()
        latency: dict[str, dict[str, float]] = {}
        backlog: dict[str, tuple[float, float]] = {}
        for report in self.reports.values():
            if report.connected and report.latency and now - report.seen_ms <= self.window_ms:
                worst = latency.setdefault(channel(report.channel), {})
                for name, value in report.latency.items():
                    worst[name] = max(worst.get(name, 0.0), value)
            if report.store:
                key = store(report.store)
                ops, age = backlog.get(key, (0.0, 0.0))
                backlog[key] = (ops + report.outbox, max(age, report.oldest_ms(now)))
        return View(latency, backlog)

    def fleet(self, limit: int) -> list[dict[str, Any]]:
        """POS terminals, the one with the oldest unsynced op first (then the longest silent)."""
        now = self._clock()
        tills = [report for report in self.reports.values() if report.role == "pos"]
        tills.sort(key=lambda r: (-r.oldest_ms(now), r.seen_ms))
        return [
            {
                "store": mask(r.store),
                "terminal": r.client,
                "backlog": int(r.outbox),
                "oldest_ms": int(r.oldest_ms(now)),
                "seen_ms": r.seen_ms,
                "online": r.connected,
                "version": r.agent,
            }
            for r in tills[:limit]
        ]

    # -- the session log ------------------------------------------------------------------------------

    def event(self, event: str, principal: Principal, **fields: Any) -> None:
        """Log one structured line about ``principal``'s session and keep it for the dashboard."""
        entry: dict[str, Any] = {
            "ts": self._clock(),
            "event": event,
            "client": mask(principal.client_id),
            "channel": mask(principal.channel),
            "store": mask(principal.store or ""),
        }
        entry.update((k, mask(v) if isinstance(v, str) else v) for k, v in fields.items())
        self.recent.append(entry)
        if log.isEnabledFor(logging.INFO):
            text = " ".join(f"{k}={v}" for k, v in entry.items() if k not in ("ts", "event") and v != "")
            log.info("%s %s", event, text, extra={"fields": {k: v for k, v in entry.items() if k != "ts"}})


def _figure(value: float | None) -> float:
    """A reported figure, clamped: a device's bug must not become a negative backlog or an infinite age."""
    if value is None or math.isnan(value):
        return 0.0
    return min(max(float(value), 0.0), _MAX_FIGURE)
