"""Latency histograms and percentiles, for the Python load generators and (same formula) the Node receivers.

A latency in microseconds falls in bucket ``floor(log(us) / log(1.01))`` (``0`` for anything under 1 µs), so
a percentile read back from the histogram is within 1 % of the exact one, whatever the number of samples, and
histograms from several processes merge by adding counts. ``benchmarks/node/receiver.js`` uses the same
formula.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

GROWTH = 1.01
_LOG_GROWTH = math.log(GROWTH)


def bucket(latency_us: float) -> int:
    return 0 if latency_us < 1 else int(math.log(latency_us) / _LOG_GROWTH)


def bucket_value_us(index: int) -> float:
    """The geometric middle of a bucket: what a percentile falling in it is reported as."""
    return float(GROWTH ** (index + 0.5))


class Histogram:
    """Counts of latencies by bucket; ``add`` takes microseconds."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def add(self, latency_us: float) -> None:
        index = bucket(latency_us)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.total += 1

    def add_all(self, latencies_us: Iterable[float]) -> None:
        for value in latencies_us:
            self.add(value)

    def merge(self, counts: Mapping[int | str, int]) -> None:
        """Add the counts of another histogram (keys may be strings, as they come out of JSON)."""
        for key, count in counts.items():
            index = int(key)
            self.counts[index] = self.counts.get(index, 0) + count
            self.total += count

    def percentile_ms(self, p: float) -> float | None:
        """The ``p``-th percentile (0 < p <= 100) in milliseconds, ``None`` without samples."""
        if not self.total:
            return None
        rank = max(1, math.ceil(self.total * p / 100))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return round(bucket_value_us(index) / 1000, 3)
        raise AssertionError("unreachable: counts add up to total")

    def summary(self) -> dict[str, float | int | None]:
        return {
            "count": self.total,
            "p50_ms": self.percentile_ms(50),
            "p99_ms": self.percentile_ms(99),
            "max_ms": self.percentile_ms(100),
        }
