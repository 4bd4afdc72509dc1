"""The SDK's stock handle against a real hub: a till sells offline only within its store's allotment, the SDK
refuses beyond it at the call site, and the replayed sales all fit; ops that need the hub are refused
offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients import OpRejected, SyncClient
from protocol import frames
from protocol import stock as rules
from tests.e2e.harness import HubProcess, WireClient, token

pytestmark = pytest.mark.e2e
SKU = "POS-1"


async def setup_stock(hub: HubProcess, *ops: tuple[str, dict[str, object]]) -> None:
    admin = await WireClient.open(hub.url, "ops-1", tok=token("ops-1", role="ops"))
    for kind, args in ops:
        await admin.op(kind, {"member": "ops", "sku": SKU, **args})
        assert (await admin.recv_type(frames.Ack)).ok, kind
    await admin.close()


async def test_a_till_sells_offline_within_its_allotment_and_the_replay_fits(
    hub: HubProcess, tmp_path: Path
) -> None:
    await setup_stock(hub, (rules.RESTOCK, {"qty": 10}), (rules.ALLOT, {"store": "s1", "qty": 3}))
    tok = token("pos-1", role="pos", store="s1")
    async with SyncClient(hub.url, token=tok, data_dir=tmp_path / "pos", client_id="pos-1") as client:
        stock = client.stock(SKU)
        await client.wait_synced(timeout=20)
        assert stock.allotment("s1") == 3 and stock.state.pool == 7
        await client.go_offline()
        first = await stock.sell("m1", 2, store="s1")
        with pytest.raises(OpRejected) as beyond:
            await stock.sell("m1", 2, store="s1")
        assert beyond.value.code == "allotment_exceeded"
        with pytest.raises(OpRejected) as offline:
            await stock.reserve("m1", 1, channel="pos", ttl_ms=60_000)
        assert offline.value.code == "unavailable"
        last = await stock.sell("m2", 1, store="s1")
        assert stock.allotment("s1") == 0 and stock.state.has_pending_writes
        await client.go_online()
        await client.wait_synced(timeout=20)
        assert await first.acked() == {} and await last.acked() == {}
        state = stock.state
        assert (state.on_hand, state.sold, state.allot, state.pool) == (7, 3, {"s1": 0}, 7)
        assert not state.has_pending_writes


async def test_a_reservation_through_the_sdk_counts_against_the_members_limit(
    hub: HubProcess, tmp_path: Path
) -> None:
    await setup_stock(hub, (rules.RESTOCK, {"qty": 10}), (rules.LIMIT, {"qty": 2}))
    tok = token("app-1", channel="web")
    async with SyncClient(hub.url, token=tok, data_dir=tmp_path / "app", client_id="app-1") as client:
        stock = client.stock(SKU)
        await client.wait_synced(timeout=20)
        held = await stock.reserve("m1", 2, channel="web", ttl_ms=60_000)
        result = await held.acked()
        assert result is not None and result["rid"] == "app-1/1"
        with pytest.raises(OpRejected) as limited:
            await (await stock.reserve("m1", 1, channel="web", ttl_ms=60_000)).acked()
        assert limited.value.code == "purchase_limit_exceeded"
        with pytest.raises(OpRejected) as other_channel:
            await (await stock.reserve("m2", 1, channel="app", ttl_ms=60_000)).acked()
        assert other_channel.value.code == "not_permitted"
        assert await (await stock.commit("m1", result["rid"])).acked() == {}
        # The ack may come before the event that shows the sale (PROTOCOL.md §7.2): the view shows it anyway.
        assert (stock.state.sold, stock.state.pool) == (2, 8)
        await client.wait_synced(timeout=20)
        assert (stock.state.sold, stock.state.pool) == (2, 8)
