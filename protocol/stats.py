"""Latency histograms in a ping's ``stats`` (PROTOCOL.md §6.12): how a device reports its samples.

A device counts its latency samples since its previous report into fixed buckets, and reports the non-empty
ones with their count and sum: ``sync_ms_le_50: 12`` is 12 samples above the previous bound and at most 50 ms,
``sync_ms_le_inf`` those above the last bound. A hub adds the reports of every device into one histogram per
channel, so fleet-wide percentiles are computed from every sample (Prometheus ``histogram_quantile``), not
guessed from per-device percentiles, which cannot be combined. Fixed bounds, shared by both sides, keep a
report small (at most 16 entries per kind) and let reports from different devices add up.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Final

BOUNDS_MS: Final = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
"""Upper bounds of the buckets, in ms: fine under the 100 ms target, coarse past the 500 ms alert."""
KINDS: Final = ("ack", "sync")
MAX_COUNT: Final = 1_000_000
"""More samples than this in one bucket of one report is not a device's honest count: clamped."""


def bucket(value_ms: float) -> int:
    """The bucket of a sample: the first bound at or above it, or ``len(BOUNDS_MS)`` (``le_inf``)."""
    return bisect.bisect_left(BOUNDS_MS, value_ms)


def key(kind: str, index: int) -> str:
    """``sync_ms_le_50``, ``ack_ms_le_2.5``, ``sync_ms_le_inf``."""
    if index >= len(BOUNDS_MS):
        return f"{kind}_ms_le_inf"
    return f"{kind}_ms_le_{BOUNDS_MS[index]:g}"


def encode(kind: str, counts: Sequence[int], total_ms: float) -> dict[str, float]:
    """A report's entries for one kind: the non-empty buckets, ``<kind>_ms_count`` and ``<kind>_ms_sum``."""
    out = {key(kind, i): float(n) for i, n in enumerate(counts) if n}
    if out:
        out[f"{kind}_ms_count"] = float(sum(counts))
        out[f"{kind}_ms_sum"] = float(total_ms)
    return out


def decode(kind: str, stats: Mapping[str, float]) -> tuple[list[int], float] | None:
    """The bucket counts (``len(BOUNDS_MS) + 1`` of them) and sum of one kind, or ``None`` when the report
    has none. Counts are clamped to ``0..MAX_COUNT`` and the sum to a non-negative finite number; unknown
    names are ignored (PROTOCOL.md §6.12)."""
    counts = [_count(stats.get(key(kind, i))) for i in range(len(BOUNDS_MS) + 1)]
    if not any(counts):
        return None
    total = stats.get(f"{kind}_ms_sum", 0.0)
    return counts, total if math.isfinite(total) and total > 0 else 0.0


def _count(value: float | None) -> int:
    if value is None or not math.isfinite(value) or value <= 0:
        return 0
    return min(int(value), MAX_COUNT)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of the samples counted in ``counts`` (``len(BOUNDS_MS) + 1`` buckets), in ms,
    estimated as Prometheus's ``histogram_quantile`` does: linear within the bucket it falls in (the first
    starting at 0), the last finite bound when it falls above it. ``None`` without samples. This is how the
    dashboard gives fleet-wide percentiles: every device's buckets added up, then one estimate."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, n in enumerate(counts[: len(BOUNDS_MS)]):
        if n and seen + n >= rank:
            lower = BOUNDS_MS[index - 1] if index else 0.0
            return lower + (BOUNDS_MS[index] - lower) * (rank - seen) / n
        seen += n
    return BOUNDS_MS[-1]
