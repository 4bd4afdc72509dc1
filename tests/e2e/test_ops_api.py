"""The ops HTTP API against a real hub process: each write is an event on ``stock:<sku>`` that a subscribed
SDK client (and a raw websocket) sees, in order, exactly once even when the request is retried."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest

from clients import OpRejected, SyncClient
from protocol import frames
from protocol import stock as rules
from tests.e2e.harness import HubProcess, WireClient, token, until

pytestmark = pytest.mark.e2e
SKU = "HTTP-1"
OPS = {"Authorization": "Bearer " + token("ops-http", role="ops")}


async def test_http_writes_are_events_a_subscribed_sdk_client_sees(hub: HubProcess, tmp_path: Path) -> None:
    watcher = await WireClient.open(hub.url, "watch-1", tok=token("watch-1", channel="web"))
    await watcher.send(frames.Subscribe(id=1, topic=f"stock:{SKU}"))
    await watcher.recv_type(frames.Snapshot)
    tok = token("app-1", channel="web")
    async with (
        SyncClient(hub.url, token=tok, data_dir=tmp_path / "app", client_id="app-1") as client,
        httpx.AsyncClient(base_url=hub.http, headers=OPS) as http,
    ):
        stock = client.stock(SKU)
        await client.wait_synced(timeout=20)
        keyed = {"Idempotency-Key": "first-delivery"}
        for _ in range(2):  # a retried request: applied once
            assert (await http.post(f"/ops/stock/{SKU}/restock", json={"qty": 30}, headers=keyed)).is_success
        await until(lambda: stock.state.on_hand == 30, "the restock")
        assert (await http.put(f"/ops/stock/{SKU}/quota/web", json={"qty": 10})).is_success
        await until(lambda: stock.state.atp == {"*": 30, "web": 10}, "the quota")
        assert (await http.put(f"/ops/stock/{SKU}/limit", json={"qty": 2})).is_success
        adjusted = await http.post(f"/ops/stock/{SKU}/adjust", json={"delta": -4, "reason": "broken"})
        assert adjusted.is_success
        await until(lambda: (stock.state.on_hand, stock.state.pool) == (26, 26), "the adjustment")
        # The limit is live: the SDK's reservation of 3 for one member is refused.
        held = await stock.reserve("m1", 3, channel="web", ttl_ms=60_000)
        with pytest.raises(OpRejected) as limited:
            await held.acked()
        assert limited.value.code == "purchase_limit_exceeded"
    seen = [await watcher.recv_type(frames.Event) for _ in range(4)]
    assert [e.kind for e in seen] == [rules.RESTOCK, rules.QUOTA, rules.LIMIT, rules.ADJUST]
    assert seen[-1].data["reason"] == "broken" and seen[0].data["on_hand"] == 30
    assert [e.cursor.offset for e in seen] == [1, 2, 3, 4]
