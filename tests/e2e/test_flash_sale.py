"""A flash sale through real hub processes: 200 shoppers on 2 hubs reserve 1 unit each of a SKU with 50
units, over one Redis and over a 3-primary cluster. Exactly 50 succeed, the rest get insufficient_stock, and
no bucket goes below zero. Expired holds return exactly once with three hubs, one of them killed."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from protocol import frames
from protocol import stock as rules
from syncd.embedded import EmbeddedRedis
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, WireClient, token

pytestmark = pytest.mark.e2e
SKU = "FLASH-1"
SHOPPERS = 200
UNITS = 50


async def shop(url: str, sku: str, i: int) -> frames.Ack:
    client = await WireClient.open(url, f"shopper-{i}", tok=token(f"shopper-{i}", channel="web"))
    await client.op(
        rules.RESERVE, {"member": f"m{i}", "sku": sku, "channel": "web", "qty": 1, "ttl_ms": 600_000}
    )
    ack = await client.recv_type(frames.Ack, timeout=60)
    await client.close()
    return ack


async def flash_sale(hubs: list[HubProcess], redis: Redis | RedisCluster, sku: str) -> None:
    """Restock ``UNITS``, let ``SHOPPERS`` reserve one each across ``hubs``; check acks, Redis and events."""
    ops = await WireClient.open(hubs[0].url, "ops-1", tok=token("ops-1", role="ops"))
    await ops.op(rules.RESTOCK, {"member": "ops", "sku": sku, "qty": UNITS})
    assert (await ops.recv_type(frames.Ack)).ok
    watcher = await WireClient.open(hubs[-1].url, "watcher", tok=token("watcher", channel="web"))
    await watcher.send(frames.Subscribe(id=1, topic=f"stock:{sku}"))
    snap = await watcher.recv_type(frames.Snapshot)
    assert snap.state is not None and snap.state["pool"] == UNITS

    acks = await asyncio.gather(*(shop(hubs[i % len(hubs)].url, sku, i) for i in range(SHOPPERS)))

    assert sum(a.ok for a in acks) == UNITS
    assert [a.code for a in acks if not a.ok] == ["insufficient_stock"] * (SHOPPERS - UNITS)
    rids = {a.result["rid"] for a in acks if a.ok and a.result is not None}
    assert len(rids) == UNITS
    state = {k.decode(): int(v) for k, v in (await redis.hgetall(f"{{sku:{sku}}}:stock")).items()}
    assert (state["on_hand"], state["pool"], state["held"], state["sold"]) == (UNITS, 0, UNITS, 0)
    assert await redis.hlen(f"{{sku:{sku}}}:holds") == UNITS
    # the watcher on another hub saw the pool fall one unit per event, never below zero, down to 0
    pools = []
    while not pools or pools[-1] != 0:
        ev = await watcher.recv_type(frames.Event, timeout=30)
        pools.append(ev.data["pool"])
    assert pools == list(range(UNITS - 1, -1, -1))


async def test_a_flash_sale_on_two_hubs_sells_exactly_the_stock(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    redis = Redis.from_url(redis_server.url)
    try:
        await flash_sale([hub_factory(redis_server.url), hub_factory(redis_server.url)], redis, SKU)
    finally:
        await redis.aclose()


async def test_the_same_flash_sale_on_a_three_primary_cluster(
    valkey_cluster: list[EmbeddedRedis], hub_factory: HubFactory
) -> None:
    # This cluster has no replicas: `auto` would be `replicas` and refuse every op (docs/scaling.md).
    hubs = [
        hub_factory(node.url, SYNCD_REDIS_CLUSTER="1", SYNCD_DURABILITY="script")
        for node in valkey_cluster[:2]
    ]
    redis = RedisCluster(host=valkey_cluster[0].host, port=valkey_cluster[0].port)
    try:
        await flash_sale(hubs, redis, "FLASH-C")
    finally:
        await redis.aclose()


async def test_admin_ops_need_an_ops_token_and_a_till_sells_only_for_its_store(hub: HubProcess) -> None:
    app = await WireClient.open(hub.url, "app-1", tok=token("app-1", channel="web"))
    await app.op(rules.RESTOCK, {"member": "m1", "sku": SKU, "qty": 5})
    assert (await app.recv_type(frames.Ack)).code == "not_permitted"
    till = await WireClient.open(hub.url, "pos-1", tok=token("pos-1", role="pos", store="s1"))
    await till.op(rules.SELL, {"member": "m1", "sku": SKU, "store": "s2", "qty": 1})
    assert (await till.recv_type(frames.Ack)).code == "not_permitted"
    await till.op(rules.SELL, {"member": "m1", "sku": SKU, "store": "s1", "qty": 1})
    assert (await till.recv_type(frames.Ack)).code == "allotment_exceeded"


async def test_expired_holds_return_exactly_once_with_three_hubs_one_killed(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    hubs = [hub_factory(redis_server.url) for _ in range(3)]
    ops = await WireClient.open(hubs[0].url, "ops-1", tok=token("ops-1", role="ops"))
    await ops.op(rules.RESTOCK, {"member": "ops", "sku": SKU, "qty": UNITS})
    assert (await ops.recv_type(frames.Ack)).ok
    shopper = await WireClient.open(hubs[1].url, "shopper", tok=token("shopper", channel="web"))
    for i in range(30):
        args = {"member": f"m{i}", "sku": SKU, "channel": "web", "qty": 1, "ttl_ms": 300}
        await shopper.op(rules.RESERVE, args)
        assert (await shopper.recv_type(frames.Ack)).ok
    watcher = await WireClient.open(hubs[2].url, "watcher", tok=token("watcher", channel="web"))
    await watcher.send(frames.Subscribe(id=1, topic=f"stock:{SKU}"))
    await watcher.recv_type(frames.Snapshot)
    hubs[0].kill()  # a sweeper killed whenever it is, mid-sweep or not
    redis = Redis.from_url(redis_server.url)
    try:
        pool = 0
        while pool != UNITS:
            ev = await watcher.recv_type(frames.Event, timeout=30)
            assert ev.kind == rules.EXPIRE and ev.origin is None
            pool = ev.data["pool"]
            assert pool <= UNITS
        state = {k.decode(): int(v) for k, v in (await redis.hgetall(f"{{sku:{SKU}}}:stock")).items()}
        assert (state["on_hand"], state["pool"], state["held"], state["t:web"]) == (UNITS, UNITS, 0, 0)
        assert await redis.hlen(f"{{sku:{SKU}}}:holds") == 0
        assert await redis.hlen(f"{{sku:{SKU}}}:bought") == 30
        assert set((await redis.hgetall(f"{{sku:{SKU}}}:bought")).values()) == {b"0"}
    finally:
        await redis.aclose()


class Burst:
    """What the shoppers of one burst did: ops handed to a hub, and those replayed on the next hub after their
    connection died before the ack (the ops that were in flight when a hub was killed)."""

    def __init__(self) -> None:
        self.sent = 0
        self.replayed = 0
        self.some_sent = asyncio.Event()


async def reserve_until_answered(urls: list[str], i: int, burst: Burst) -> frames.Ack:
    """Reserve through the first hub; when the connection dies before the ack, replay the same op (same
    client_id, same seq) through the next hub, as the SDK does."""
    op = frames.Op(
        seq=1,
        kind=rules.RESERVE,
        args={"member": f"m{i}", "sku": "KILL-1", "channel": "web", "qty": 1, "ttl_ms": 600_000},
    )
    sent = False
    for url in urls:
        try:
            client = await WireClient.open(url, f"shopper-{i}", tok=token(f"shopper-{i}", channel="web"))
            await client.send(op)
            burst.replayed += sent
            sent = True
            burst.sent += 1
            if burst.sent >= 20:
                burst.some_sent.set()
            return await client.recv_type(frames.Ack, timeout=30)
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            continue
    raise AssertionError(f"shopper {i} got no answer from any hub")


async def test_a_hub_killed_during_reservations_loses_no_acked_hold_and_doubles_none(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    first, second = hub_factory(redis_server.url), hub_factory(redis_server.url)
    ops = await WireClient.open(second.url, "ops-1", tok=token("ops-1", role="ops"))
    await ops.op(rules.RESTOCK, {"member": "ops", "sku": "KILL-1", "qty": UNITS})
    assert (await ops.recv_type(frames.Ack)).ok
    burst = Burst()

    async def kill_mid_burst() -> None:
        await burst.some_sent.wait()  # ops are on their way to the first hub: kill it under them
        first.kill()

    killer = asyncio.create_task(kill_mid_burst())
    shoppers = [first.url, second.url]
    acks = await asyncio.gather(*(reserve_until_answered(shoppers, i, burst) for i in range(120)))
    await killer
    # The kill must have caught ops in flight (sent, not yet acked), or this test proved nothing.
    assert burst.replayed > 0

    held = {a.result["rid"] for a in acks if a.ok and a.result is not None}
    assert len(held) == UNITS and sum(a.ok for a in acks) == UNITS
    assert {a.code for a in acks if not a.ok} == {"insufficient_stock"}
    redis = Redis.from_url(redis_server.url)
    try:
        state = {k.decode(): int(v) for k, v in (await redis.hgetall("{sku:KILL-1}:stock")).items()}
        holds = {k.decode() for k in await redis.hkeys("{sku:KILL-1}:holds")}
    finally:
        await redis.aclose()
    assert holds == held  # every acked hold is there, and nothing else
    assert (state["on_hand"], state["pool"], state["held"]) == (UNITS, 0, UNITS)
