"""``store:<store>`` against real hub processes: a till follows its store's allotments, fed by every allot
(the ops HTTP API) and every sale (the till's own, made on another hub); no other store's till may read it."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest

from clients import SyncClient
from protocol import frames
from protocol.errors import ErrorCode
from syncd.embedded import EmbeddedRedis
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import WireClient, token, until

pytestmark = pytest.mark.e2e
OPS = {"Authorization": "Bearer " + token("ops-http", role="ops")}


async def test_a_till_follows_its_stores_allotments_fed_from_every_hub(
    redis_server: EmbeddedRedis, hub_factory: HubFactory, tmp_path: Path
) -> None:
    first, second = hub_factory(redis_server.url), hub_factory(redis_server.url)
    tok = token("pos-1", role="pos", store="s1")
    async with (
        SyncClient(first.url, token=tok, data_dir=tmp_path / "pos", client_id="pos-1") as till,
        httpx.AsyncClient(base_url=second.http, headers=OPS) as http,
    ):
        mine = till.store("s1")
        await till.wait_synced(timeout=20)
        assert mine.allotments == {}
        for sku, qty in (("A", 5), ("B", 2)):
            assert (await http.post(f"/ops/stock/{sku}/restock", json={"qty": 10})).is_success
            assert (await http.post(f"/ops/stock/{sku}/allot", json={"store": "s1", "qty": qty})).is_success
        assert (await http.post("/ops/stock/A/allot", json={"store": "s2", "qty": 1})).is_success
        await until(lambda: mine.allotments == {"A": 5, "B": 2}, "the allotments")
        stock = till.stock("A")
        await till.wait_synced(timeout=20)
        sold = await stock.sell("m1", 2, store="s1")
        await sold.acked()
        await until(lambda: mine.allotments == {"A": 3, "B": 2}, "the sale")
        assert mine.recalls == {}
    other = await WireClient.open(first.url, "pos-2", tok=token("pos-2", role="pos", store="s2"))
    await other.send(frames.Subscribe(id=1, topic="store:s1"))
    refused = await other.recv_type(frames.Error)
    assert (refused.code, refused.ref) == (ErrorCode.NOT_PERMITTED, 1)
    await other.send(frames.Subscribe(id=2, topic="store:s2"))
    snap = await other.recv_type(frames.Snapshot)
    assert snap.state == {"skus": {"A": {"allot": 1, "recall": 0, "to": None}}}
