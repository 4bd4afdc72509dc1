"""What ops see of real hub processes: /metrics (parsed as Prometheus does), labels, stock counters, the
structured log, and the dashboard feed's latency percentiles over two processes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from protocol import frames
from syncd.embedded import EmbeddedRedis
from syncd.metrics import MAX_LABEL_VALUES
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, WireClient, token

pytestmark = pytest.mark.e2e

PHONE = "13812345678"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(hub: HubProcess) -> Samples:
    """Every sample of the hub's /metrics, parsed with the Prometheus text parser."""
    with urllib.request.urlopen(hub.http + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    assert PHONE not in text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: list[Samples], name: str, **labels: str) -> float:
    """The sum over hubs of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for s in samples for (n, ls), v in s.items() if n == name and want <= set(ls))


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_counters_agree_exactly_with_what_clients_did_across_two_hub_processes(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    first, second = hub_factory(redis_server.url), hub_factory(redis_server.url)
    app = await WireClient.open(first.url, f"app-{PHONE}", tok=token(f"app-{PHONE}", channel="miniapp"))
    till = await WireClient.open(second.url, "till-1", tok=token("till-1", role="pos", store="s1"))
    for qty in (1, 2, 3):
        await app.op("cart.add", {"member": "m1", "sku": "A", "qty": qty})
        assert (await app.recv_type(frames.Ack)).ok
    await app.op("cart.add", {"member": "m1", "sku": "A", "qty": "2"})  # settled as a rejection
    assert (await app.recv_type(frames.Ack)).code == "bad_args"
    replayed = frames.Op(seq=1, kind="cart.add", args={"member": "m1", "sku": "A", "qty": 1})
    await app.send(replayed)
    assert (await app.recv_type(frames.Ack)).dup
    for qty in (1, 2):
        await till.op("cart.add", {"member": "m2", "sku": "B", "qty": qty})
        assert (await till.recv_type(frames.Ack)).ok
    await app.send(frames.Op(seq=99, kind="cart.add", args={"member": "m1", "sku": "A", "qty": 1}))  # a gap
    assert (await app.recv_type(frames.Error)).code == "seq_gap"

    samples = [scrape(first), scrape(second)]
    assert total(samples, "syncd_ops_accepted_total", channel="miniapp") == 3
    assert total(samples, "syncd_ops_accepted_total", channel="pos") == 2
    assert total(samples, "syncd_ops_rejected_total", channel="miniapp", code="bad_args") == 1
    assert total(samples, "syncd_ops_duplicates_total", channel="miniapp") == 1
    assert total(samples, "syncd_ops_refused_total", channel="miniapp", code="seq_gap") == 1
    assert total(samples, "syncd_apply_latency_seconds_count", channel="miniapp") == 5
    assert total(samples, "syncd_connections", channel="miniapp", role="app") == 1
    assert total(samples, "syncd_connections", channel="pos", role="pos") == 1
    assert total(samples, "syncd_sessions_opened_total") == 2

    await app.close()
    await till.close()
    await until(lambda: total([scrape(first), scrape(second)], "syncd_closes_total", code="1000") == 2)
    assert total([scrape(first), scrape(second)], "syncd_connections") == 0
    assert total([scrape(first), scrape(second)], "syncd_reconnects_total") == 0
    again = await WireClient.open(second.url, "till-1", tok=token("till-1", role="pos", store="s1"))
    assert total([scrape(second)], "syncd_reconnects_total", channel="pos") == 1
    await again.close()


async def test_conflicts_subscriptions_send_queues_and_the_fan_out_are_exported(hub: HubProcess) -> None:
    first = await WireClient.open(hub.url, "app-c1", tok=token("app-c1", channel="h5"))
    second = await WireClient.open(hub.url, "app-c2", tok=token("app-c2", channel="h5"))
    for topic_id, topic in enumerate(("cart:m9", "stock:SKU-9"), start=1):
        await first.send(frames.Subscribe(id=topic_id, topic=topic))
        await first.recv_type(frames.Snapshot)
    # Two sets of one line, neither having seen the other: both stay live, the second is a conflict.
    await first.op("cart.set", {"member": "m9", "sku": "C", "qty": 5}, ctx={})
    assert (await first.recv_type(frames.Ack)).ok
    await second.op("cart.set", {"member": "m9", "sku": "C", "qty": 7}, ctx={})
    assert (await second.recv_type(frames.Ack)).ok
    while (event := await first.recv_type(frames.Event)).origin != frames.Origin("app-c2", 1):
        pass
    assert event.conflict is not None

    samples = [scrape(hub)]
    assert total(samples, "syncd_ops_conflicts_total", channel="h5") == 1
    assert total(samples, "syncd_ops_accepted_total", channel="h5") == 2
    assert total(samples, "syncd_subscriptions") == 2
    assert total(samples, "syncd_fanout_connected") == 1
    assert total(samples, "syncd_redis_reconnects_total") == 0
    await until(lambda: total([scrape(hub)], "syncd_send_queue_bytes") == 0)  # idle: everything written
    assert total([scrape(hub)], "syncd_send_queue_max_bytes") == 0
    await first.close()
    await second.close()
    await until(lambda: total([scrape(hub)], "syncd_subscriptions") == 0)


async def test_device_reports_become_latency_and_backlog_gauges_and_the_offline_backlog_ages(
    hub: HubProcess,
) -> None:
    till = await WireClient.open(hub.url, "till-2", tok=token("till-2", role="pos", store="s9"))
    stats = {"outbox": 4.0, "outbox_age_ms": 9000.0, "sync_ms_p50": 40.0, "sync_ms_p99": 700.0, "junk": 1.0}
    histogram = {"sync_ms_le_50": 3.0, "sync_ms_le_1000": 1.0, "sync_ms_count": 4.0, "sync_ms_sum": 760.0}
    for _ in range(2):  # two reports: the histogram adds them up
        await till.send(frames.Ping(ts=int(time.time() * 1000), stats=stats | histogram))
        await till.recv_type(frames.Pong)
    samples = [scrape(hub)]
    assert total(samples, "syncd_sync_latency_seconds_bucket", channel="pos", le="0.05") == 6
    assert total(samples, "syncd_sync_latency_seconds_bucket", channel="pos", le="0.5") == 6
    assert total(samples, "syncd_sync_latency_seconds_bucket", channel="pos", le="+Inf") == 8
    assert total(samples, "syncd_sync_latency_seconds_count", channel="pos") == 8
    assert total(samples, "syncd_sync_latency_seconds_sum", channel="pos") == pytest.approx(1.52)
    assert total(samples, "syncd_ack_latency_seconds_count") == 0
    assert total(
        samples, "syncd_sync_latency_worst_seconds", channel="pos", quantile="0.99"
    ) == pytest.approx(0.7)
    assert total(samples, "syncd_sync_latency_worst_seconds", channel="pos", quantile="0.5") == pytest.approx(
        0.04
    )
    assert total(samples, "syncd_backlog_ops", store="s9") == 4
    assert total(samples, "syncd_backlog_oldest_seconds", store="s9") >= 9

    await till.close()  # offline with 4 ops unsynced: its backlog stays on view and ages
    await asyncio.sleep(1.1)
    samples = [scrape(hub)]
    assert total(samples, "syncd_backlog_ops", store="s9") == 4
    assert total(samples, "syncd_backlog_oldest_seconds", store="s9") >= 10
    assert (
        total(samples, "syncd_sync_latency_worst_seconds") == 0
    )  # only live devices speak for a channel now


async def test_label_values_stay_bounded_whatever_channels_tokens_name(hub: HubProcess) -> None:
    for n in range(MAX_LABEL_VALUES + 6):
        await WireClient.open(hub.url, f"kiosk-{n}", tok=token(f"kiosk-{n}", channel=f"ch-{n}"))
    samples = scrape(hub)
    channels = {dict(ls)["channel"] for (name, ls) in samples if name == "syncd_sessions_opened_total"}
    assert len(channels) == MAX_LABEL_VALUES + 1
    assert "other" in channels
    assert total([samples], "syncd_sessions_opened_total", channel="other") == 6
    for _, labels in samples:
        assert {key for key, _ in labels} <= {"channel", "role", "code", "store", "quantile", "le"}


async def test_one_masked_json_line_per_connect_replay_rejection_and_disconnect(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    hub = hub_factory(redis_server.url, SYNCD_LOG_FORMAT="json")
    client_id = f"app-{PHONE}"
    tok = token(client_id, store="s2")
    app = await WireClient.open(hub.url, client_id, tok=tok)
    old = int(time.time() * 1000) - 60_000  # made a minute ago, offline: a replay
    await app.send(
        frames.OpBatch(
            ops=[
                frames.Op(seq=1, kind="cart.add", args={"member": PHONE, "sku": "A", "qty": 1}, ts=old),
                frames.Op(seq=2, kind="cart.add", args={"member": PHONE, "sku": "A", "qty": "x"}, ts=old),
            ]
        )
    )
    await app.recv_type(frames.Ack)
    await app.recv_type(frames.Ack)
    await app.ws.close(4000, "bye")

    def lines() -> list[dict[str, object]]:
        parsed = [json.loads(line) for line in hub.log().splitlines() if line.startswith("{")]
        return [entry for entry in parsed if entry.get("logger") == "syncd.sessions"]

    await until(lambda: any(entry["event"] == "disconnect" for entry in lines()))
    by_event = {str(entry["event"]): entry for entry in lines()}
    assert set(by_event) == {"connect", "replay", "rejected", "disconnect"}
    assert by_event["connect"]["client"] == "app-138****5678"
    assert (by_event["connect"]["channel"], by_event["connect"]["store"]) == ("app", "s2")
    assert by_event["replay"]["ops"] == 2
    assert by_event["replay"]["rejected"] == 1
    assert (by_event["rejected"]["seq"], by_event["rejected"]["code"]) == (2, "bad_args")
    assert by_event["disconnect"]["code"] == 4000
    log = hub.log()
    assert PHONE not in log
    assert tok not in log
    assert tok.split(".")[2] not in log


async def feed_states(hub: HubProcess) -> AsyncIterator[dict[str, Any]]:
    """The dashboard feed of ``hub`` as an ops page receives it, one state a second."""
    headers = {"Cookie": f"syncd_ops={token('ops-1', role='ops')}"}
    async with connect(hub.url.replace("/ws", "/dashboard/feed"), additional_headers=headers) as ws:
        async for message in ws:
            yield json.loads(message)


async def test_the_dashboard_feed_gives_latency_percentiles_of_every_sample_on_every_hub(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    """Ten fast samples reported to one process, ten slow ones to another: the page served by the first shows
    the percentiles of all twenty — a p99 neither process has alone — and alerts on it."""
    first, second = hub_factory(redis_server.url), hub_factory(redis_server.url)
    fast = await WireClient.open(first.url, "till-f", tok=token("till-f", role="pos", store="s1"))
    slow = await WireClient.open(second.url, "till-s", tok=token("till-s", role="pos", store="s2"))
    reported = False
    states = feed_states(first)
    async with asyncio.timeout(30):
        async for state in states:
            if state.get("hubs") != 2:
                continue  # until both processes publish (what they had before is not the page's)
            if not reported:
                for till, ms in ((fast, "50"), (slow, "1000")):
                    stats = {f"sync_ms_le_{ms}": 10.0, "sync_ms_count": 10.0, "sync_ms_sum": 10.0 * int(ms)}
                    await till.send(frames.Ping(ts=int(time.time() * 1000), stats=stats))
                reported = True
                continue
            if state["latency"].get("pos", {}).get("samples") == 20:
                break
    await states.aclose()
    pos = state["latency"]["pos"]
    assert pos["p50"] == 50.0
    assert pos["p99"] == pytest.approx(990.0)
    assert [(a["kind"], a["channel"]) for a in state["alerts"]] == [("sync", "pos")]


async def test_stock_metrics_count_reservations_refusals_by_code_and_expiries_with_no_sku_label(
    hub: HubProcess,
) -> None:
    admin = await WireClient.open(hub.url, "ops-1", tok=token("ops-1", role="ops"))
    for kind, args in (("stock.restock", {"qty": 5}), ("stock.quota", {"channel": "web", "qty": 3})):
        await admin.op(kind, {"member": "ops", "sku": "SKU-9", **args})
        assert (await admin.recv_type(frames.Ack)).ok
    app = await WireClient.open(hub.url, "app-1", tok=token("app-1", channel="web"))
    for qty, ttl_ms, code in (
        (2, 60_000, None),
        (10, 60_000, "insufficient_stock"),
        (2, 60_000, "quota_exceeded"),
    ):
        await app.op(
            "stock.reserve", {"member": "m1", "sku": "SKU-9", "channel": "web", "qty": qty, "ttl_ms": ttl_ms}
        )
        assert (await app.recv_type(frames.Ack)).code == code
    await app.op("stock.reserve", {"member": "m2", "sku": "SKU-9", "channel": "web", "qty": 1, "ttl_ms": 1})
    assert (await app.recv_type(frames.Ack)).ok  # held for a millisecond: the sweeper returns it
    samples = [scrape(hub)]
    assert total(samples, "syncd_stock_reservations_total", channel="web") == 2
    assert total(samples, "syncd_stock_refusals_total", channel="web", code="insufficient_stock") == 1
    assert total(samples, "syncd_stock_refusals_total", channel="web", code="quota_exceeded") == 1
    assert total(samples, "syncd_stock_refusals_total") == 2
    await until(lambda: total([scrape(hub)], "syncd_stock_expired_total") == 1, timeout=20)
    assert not any("SKU-9" in value for _, labels in scrape(hub) for _, value in labels)
