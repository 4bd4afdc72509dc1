"""Latency histograms in ping stats: bucketing, the wire names, and a hub's defensive decoding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from protocol import codec, frames, stats


@pytest.mark.parametrize(
    ("value", "index"), [(0.0, 0), (1.0, 0), (1.01, 1), (100.0, 6), (100.5, 7), (10_000.0, 12), (1e9, 13)]
)
def test_a_sample_falls_in_the_first_bucket_whose_bound_it_does_not_exceed(value: float, index: int) -> None:
    assert stats.bucket(value) == index


def test_a_report_names_its_non_empty_buckets_by_bound_with_count_and_sum() -> None:
    counts = [0] * (len(stats.BOUNDS_MS) + 1)
    counts[stats.bucket(2.0)] = 3
    counts[stats.bucket(40.0)] = 1
    counts[-1] = 2
    encoded = stats.encode("sync", counts, 2 * 3 + 40 + 2 * 20_000)
    assert encoded == {
        "sync_ms_le_2.5": 3.0,
        "sync_ms_le_50": 1.0,
        "sync_ms_le_inf": 2.0,
        "sync_ms_count": 6.0,
        "sync_ms_sum": 40_046.0,
    }
    assert stats.decode("sync", encoded) == (counts, 40_046.0)
    assert stats.decode("ack", encoded) is None
    assert stats.encode("ack", [0] * 14, 0.0) == {}


def test_every_name_fits_the_protocol_bound_and_both_kinds_fit_one_ping() -> None:
    names = [stats.key(kind, i) for kind in stats.KINDS for i in range(len(stats.BOUNDS_MS) + 1)]
    assert all(len(name) <= 64 for name in names)
    assert len(names) + 2 * len(stats.KINDS) + 2 * 3 + 2 <= 64  # + count, sum, p50/p95/p99, outbox figures


def test_a_hub_clamps_what_a_device_claims() -> None:
    claimed = {"ack_ms_le_1": -5.0, "ack_ms_le_5": math.nan, "ack_ms_le_10": 1e12, "ack_ms_sum": math.inf}
    counts, total = stats.decode("ack", claimed) or ([], -1.0)
    assert counts[stats.bucket(10.0)] == stats.MAX_COUNT
    assert sum(counts) == stats.MAX_COUNT
    assert total == 0.0


def test_the_vector_of_a_latency_report_decodes_to_its_buckets() -> None:
    vectors = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "frames.json").read_text())
    vector = next(v for v in vectors if v["name"] == "ping from a client, with a latency report")
    frame = codec.FrameDecoder(frames.CLIENT_FRAMES).decode(bytes.fromhex(vector["hex"]))
    assert isinstance(frame, frames.Ping) and frame.stats is not None
    counts, total = stats.decode("sync", frame.stats) or ([], 0.0)
    assert (counts[stats.bucket(25.0)], counts[stats.bucket(50.0)], counts[-1], sum(counts)) == (7, 2, 1, 10)
    assert total == 12_345.5


def test_a_quantile_is_interpolated_within_its_bucket_as_prometheus_does() -> None:
    counts = [0] * (len(stats.BOUNDS_MS) + 1)
    assert stats.quantile(counts, 0.99) is None
    counts[stats.bucket(40.0)] = 10  # (25, 50]
    counts[stats.bucket(700.0)] = 10  # (500, 1000]
    assert stats.quantile(counts, 0.5) == 50.0
    assert stats.quantile(counts, 0.25) == 37.5
    assert stats.quantile(counts, 0.99) == pytest.approx(990.0)
    counts[-1] = 80  # above the last bound: Prometheus answers the last finite bound
    assert stats.quantile(counts, 0.99) == stats.BOUNDS_MS[-1]
    first = [4] + [0] * len(stats.BOUNDS_MS)
    assert stats.quantile(first, 0.5) == 0.5  # the first bucket starts at 0
