"""Allotments shrink only with the store's acknowledgement, against real hub processes: ops ask (a recall or a
rebalance over the HTTP API), nothing moves while the store's till is offline, and once it reconnects the till
answers after replaying its offline sales: exactly the units asked move, never below zero, never twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from clients import SyncClient
from protocol import frames
from protocol import stock as rules
from protocol.errors import ErrorCode
from syncd.embedded import EmbeddedRedis
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import WireClient, token, until

pytestmark = pytest.mark.e2e
SKU = "RB-1"
OPS = {"Authorization": "Bearer " + token("ops-http", role="ops")}


async def test_a_rebalance_waits_for_the_offline_source_till_then_moves_exactly_once(
    redis_server: EmbeddedRedis, hub_factory: HubFactory, tmp_path: Path
) -> None:
    first, second = hub_factory(redis_server.url), hub_factory(redis_server.url)
    till_token, other_token = token("pos-s1", role="pos", store="s1"), token("pos-s2", role="pos", store="s2")
    async with (
        httpx.AsyncClient(base_url=second.http, headers=OPS) as http,
        SyncClient(first.url, token=till_token, data_dir=tmp_path / "s1", client_id="pos-s1") as till,
        SyncClient(second.url, token=other_token, data_dir=tmp_path / "s2", client_id="pos-s2") as other,
    ):

        async def state() -> dict[str, Any]:
            got: dict[str, Any] = (await http.get(f"/ops/stock/{SKU}")).json()
            return got

        assert (await http.post(f"/ops/stock/{SKU}/restock", json={"qty": 20})).is_success
        for store, qty in (("s1", 8), ("s2", 2)):
            assert (await http.post(f"/ops/stock/{SKU}/allot", json={"store": store, "qty": qty})).is_success
        mine, stock, theirs = till.store("s1"), till.stock(SKU), other.store("s2")
        await till.wait_synced(timeout=20)
        await other.wait_synced(timeout=20)
        await until(lambda: theirs.allotments == {SKU: 2}, "s2's allotment")

        await till.go_offline()
        for _ in range(3):
            await stock.sell("m1", 1, store="s1")  # offline, within the allotment: 5 left as the till knows
        ask = await http.post(f"/ops/stock/{SKU}/rebalance", json={"from": "s1", "to": "s2", "qty": 4})
        assert ask.is_success
        asked = await state()
        assert asked["allot"] == {"s1": 8, "s2": 2} and asked["recall"] == {"s1": {"qty": 4, "to": "s2"}}
        assert mine.recalls == {}  # the till is offline: it has not seen it, and nothing moved

        # An ops token cannot answer for the store: the escrow leaves only with the store's own till.
        ops_ws = await WireClient.open(first.url, "ops-ws", tok=token("ops-ws", role="ops"))
        await ops_ws.op(rules.YIELD, {"member": "ops", "sku": SKU, "store": "s1", "qty": 4, "to": "s2"})
        refused = await ops_ws.recv_type(frames.Ack)
        assert (refused.ok, refused.code) == (False, ErrorCode.NOT_PERMITTED)
        assert (await state())["allot"] == {"s1": 8, "s2": 2}

        await till.go_online()  # replays its 3 sales, sees the recall, yields 4 after them
        await until(lambda: theirs.allotments == {SKU: 6}, "the units at s2")
        await till.wait_synced(timeout=20)
        done = await state()
        assert (done["allot"], done["recall"], done["sold"], done["on_hand"]) == (
            {"s1": 1, "s2": 6},
            {},
            3,
            17,
        )
        await until(lambda: mine.allotments == {SKU: 1} and mine.recalls == {}, "s1's topic")

        # Asking more than the store has: it gives what it has, never below zero; the rest stays asked.
        ask = await http.post(f"/ops/stock/{SKU}/recall", json={"store": "s1", "qty": 10})
        assert ask.is_success
        await until(lambda: SKU in mine.allotments and mine.allotments[SKU] == 0, "s1 giving its last unit")
        await till.go_offline()
        await till.go_online()  # a reconnect, replay of anything unacked: nothing moves twice
        await till.wait_synced(timeout=20)
        final = await state()
        assert final["allot"] == {"s1": 0, "s2": 6} and final["pool"] == 11
        assert final["recall"] == {"s1": {"qty": 9, "to": None}}
        assert final["on_hand"] == final["pool"] + sum(final["allot"].values())


async def test_a_recall_seen_before_a_restart_is_answered_on_the_next_sync(
    redis_server: EmbeddedRedis, hub_factory: HubFactory, tmp_path: Path
) -> None:
    hub = hub_factory(redis_server.url)
    tok = token("pos-s1", role="pos", store="s1")
    async with httpx.AsyncClient(base_url=hub.http, headers=OPS) as http:
        for path, body in (("restock", {"qty": 10}), ("allot", {"store": "s1", "qty": 5})):
            assert (await http.post(f"/ops/stock/{SKU}/{path}", json=body)).is_success
        async with SyncClient(hub.url, token=tok, data_dir=tmp_path / "s1", client_id="pos-s1") as till:
            mine = till.store("s1", answer_recalls=False)  # sees it, does not answer (as a till that died)
            await till.wait_synced(timeout=20)
            assert (await http.post(f"/ops/stock/{SKU}/recall", json={"store": "s1", "qty": 2})).is_success
            await until(lambda: SKU in mine.recalls, "the recall")
        async with SyncClient(hub.url, token=tok, data_dir=tmp_path / "s1", client_id="pos-s1") as till:
            mine = till.store("s1")  # restarted: the cached recall, a resume with nothing new
            await until(lambda: mine.allotments.get(SKU) == 3 and mine.recalls == {}, "the answer")
        state = (await http.get(f"/ops/stock/{SKU}")).json()
        assert (state["allot"], state["pool"], state["recall"]) == ({"s1": 3}, 7, {})
