"""Scripts return after SCRIPT FLUSH and restarts; outages are BackendUnavailable; fsync acks wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from protocol import frames
from protocol.errors import BackendUnavailable
from syncd.embedded import EmbeddedRedis, bundled_binary
from syncd.store import OpOutcome, RedisStore

Devices = Callable[..., Any]


def add(seq: int, qty: int = 1, sku: str = "tea") -> frames.Op:
    return frames.Op(seq=seq, kind="cart.add", args={"member": "m1", "sku": sku, "qty": qty})


async def apply_retrying(store: RedisStore, client_id: str, op: frames.Op, attempts: int = 5) -> OpOutcome:
    """What the hub does on BackendUnavailable: retry the same op (same seq)."""
    for _ in range(attempts - 1):
        try:
            return await store.apply_op(client_id, op)
        except BackendUnavailable:
            continue
    return await store.apply_op(client_id, op)


async def waitaof_calls(url: str) -> int:
    client = Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_waitaof", {}).get("calls", 0))


async def test_scripts_are_reloaded_after_script_flush(
    device: Devices, redis_client: Redis | RedisCluster
) -> None:
    a = device("a")
    await a.add("tea", 1)
    await redis_client.script_flush()
    assert (await a.add("tea", 1)).result == {"qty": 2}
    await redis_client.script_flush()
    cursor, state = await a.store.snapshot("cart:m1")
    assert cursor.offset == 2 and state["lines"]["tea"]["qty"] == 2
    await redis_client.script_flush()
    assert await a.store.events_after("cart:m1", frames.Cursor(cursor.epoch, 1)) is not None


async def test_load_scripts_up_front(store: RedisStore, redis_client: Redis | RedisCluster) -> None:
    await redis_client.script_flush()
    await store.load_scripts()
    sha = store._scripts["cart_add"].sha
    exists = await redis_client.script_exists(sha)
    assert exists == [True]


async def test_state_and_scripts_survive_a_server_restart_in_a_new_epoch(redis_server: EmbeddedRedis) -> None:
    """A restarted primary has a new generation (it may have restarted with less than it acked): its topics
    keep their state and continue in a new epoch, so a cursor from before the restart gets a reset."""
    client = Redis.from_url(redis_server.url)
    store = RedisStore(client)
    try:
        await store.apply_op("a", add(1, 2))
        cursor, _ = await store.snapshot("cart:m1")
        redis_server.restart()  # graceful: the AOF is complete; the script cache is empty
        outcome = await apply_retrying(store, "a", add(2, 3))
        assert outcome.ok and outcome.result == {"qty": 5} and not outcome.dup
        assert outcome.event is not None and outcome.event.cursor.offset == 1
        assert outcome.event.cursor.epoch != cursor.epoch
        assert await store.events_after("cart:m1", cursor) is None
        assert await store.last_seq("a") == 2
    finally:
        await client.aclose()


async def test_dead_server_is_backend_unavailable_and_the_retry_applies_once(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    # appendfsync always: with everysec Redis may postpone an AOF write while an fsync is in progress and
    # lose the last acked op to a SIGKILL (docs/traps.md §1); this test is about the retry, not that window.
    redis_server = redis_server_factory(appendfsync="always")
    client = Redis.from_url(redis_server.url, socket_connect_timeout=2)
    store = RedisStore(client)
    try:
        await store.apply_op("a", add(1, 2))
        redis_server.kill()
        with pytest.raises(BackendUnavailable):
            await store.apply_op("a", add(2, 3))
        with pytest.raises(BackendUnavailable):
            await store.snapshot("cart:m1")
        redis_server.restart()
        outcome = await apply_retrying(store, "a", add(2, 3))
        again = await store.apply_op("a", add(2, 3))
        assert (outcome.result, again.result, again.dup) == ({"qty": 5}, {"qty": 5}, True)
    finally:
        await client.aclose()


async def test_fsync_durability_acks_after_waitaof(valkey_server: EmbeddedRedis) -> None:
    client = Redis.from_url(valkey_server.url)
    store = RedisStore(client, durability="fsync")
    try:
        await store.load_scripts()  # so no NOSCRIPT retry adds a WAITAOF to the count
        before = await waitaof_calls(valkey_server.url)
        outcome = await store.apply_op("a", add(1, 2))
        again = await store.apply_op("a", add(1, 2))
        assert outcome.ok and again.dup
        # Standalone: one WAITAOF per settle covers the member script's write too (same node, one AOF).
        assert await waitaof_calls(valkey_server.url) - before == 2
    finally:
        await client.aclose()


async def test_fsync_without_waitaof_support_is_backend_unavailable(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    no_aof = redis_server_factory(binary=bundled_binary(), appendonly=False)
    client = Redis.from_url(no_aof.url)
    try:
        with pytest.raises(BackendUnavailable):
            await RedisStore(client, durability="fsync").apply_op("a", add(1))
    finally:
        await client.aclose()
        no_aof.stop()


async def test_fsync_durability_on_a_cluster_waits_on_each_node_written(
    cluster_factory: Callable[[], list[EmbeddedRedis]],
) -> None:
    nodes = cluster_factory()
    client = RedisCluster(host=nodes[0].host, port=nodes[0].port)
    store = RedisStore(client, durability="fsync")
    try:
        await store.load_scripts()
        before = [await waitaof_calls(node.url) for node in nodes]
        for seq in range(1, 4):
            assert (await store.apply_op("pos-1", add(seq))).ok
        after = [await waitaof_calls(node.url) for node in nodes]
        assert sum(after) - sum(before) == 6  # member script + settle, for each op
        assert (await store.snapshot("cart:m1"))[1]["lines"]["tea"]["qty"] == 3
    finally:
        await client.aclose()
        for node in nodes:
            node.stop()


async def test_a_dead_primary_stops_only_the_ops_of_its_own_slots(
    cluster_factory: Callable[..., list[EmbeddedRedis]],
) -> None:
    # Ops of many clients share pipelines; on a cluster they must not share a pipeline across nodes, or one
    # dead primary would fail every op in flight, not just those of its slots.
    nodes = cluster_factory(extra_args=["--cluster-require-full-coverage", "no"])
    client = RedisCluster(host=nodes[0].host, port=nodes[0].port)
    store = RedisStore(client)
    try:
        await client.initialize()
        dead = nodes[2]

        def on_dead_node(key: str) -> bool:
            return client.get_node_from_key(key).port == dead.port

        members = [f"m{i}" for i in range(60)]
        cids = [f"pos-{i}" for i in range(200) if not on_dead_node(f"{{c:pos-{i}}}:seq")]
        live = [m for m in members if not on_dead_node(f"{{m:{m}}}:cart")][:12]
        gone = [m for m in members if on_dead_node(f"{{m:{m}}}:cart")][:4]
        assert len(live) == 12 and len(gone) == 4
        pairs = list(zip(cids, live + gone, strict=False))
        for cid, member in pairs:  # every member's cart exists, every client has settled one op
            assert (await store.apply_op(cid, frames.Op(seq=1, kind="cart.add", args=op_args(member)))).ok
        dead.stop()
        batches = await asyncio.gather(
            *(
                store.apply_ops(cid, [frames.Op(seq=2, kind="cart.add", args=op_args(member))], known_last=1)
                for cid, member in pairs
            )
        )
        for (_, member), batch in zip(pairs, batches, strict=True):
            if member in gone:
                assert isinstance(batch.error, BackendUnavailable), member
            else:
                assert batch.error is None and batch.outcomes[0].ok, (member, batch.error)
    finally:
        await client.aclose()
        for node in nodes:
            node.stop()


def op_args(member: str) -> dict[str, Any]:
    return {"member": member, "sku": "tea", "qty": 1}
