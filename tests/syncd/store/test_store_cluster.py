"""The cart scenario on a 3-node Redis Cluster: every script's keys in one slot, members spread over nodes.

(Every other store test also runs on the cluster through the ``store`` fixture; this one checks the layout.)
"""

from __future__ import annotations

import re
from collections import defaultdict

import redis
from redis.asyncio.cluster import RedisCluster

from protocol import frames
from syncd.embedded import EmbeddedRedis
from syncd.store import RedisStore


def op(seq: int, kind: str, member: str, ctx: dict[str, int] | None = None, **args: object) -> frames.Op:
    return frames.Op(seq=seq, kind=kind, args={"member": member, **args}, ctx=ctx)


async def test_cart_scenario_spreads_members_over_nodes_with_each_member_in_one_slot(
    valkey_cluster: list[EmbeddedRedis],
) -> None:
    client = RedisCluster(host=valkey_cluster[0].host, port=valkey_cluster[0].port)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    store = RedisStore(client)
    members = [f"member{i}" for i in range(9)]
    try:
        for member in members:
            seq_a, seq_b = await store.last_seq("pos-a"), await store.last_seq("app-b")
            await store.apply_op("pos-a", op(seq_a + 1, "cart.add", member, sku="tea", qty=2))
            await store.apply_op("app-b", op(seq_b + 1, "cart.add", member, sku="tea", qty=1))
            await store.apply_op("app-b", op(seq_b + 2, "cart.add", member, sku="cake", qty=1))
            cleared = await store.apply_op(
                "pos-a", op(seq_a + 2, "cart.clear", member, ctx={"pos-a": seq_a + 1})
            )
            assert cleared.result == {"lines": 2}  # a's clear saw only its own add: b's lines stay
            cursor, state = await store.snapshot(f"cart:{member}")
            assert cursor.offset == 4
            assert {sku: line["qty"] for sku, line in state["lines"].items()} == {"tea": 1, "cake": 1}
    finally:
        await client.aclose()

    tags: dict[str, set[int]] = defaultdict(set)
    nodes_with_members = set()
    for node in valkey_cluster:
        direct = redis.Redis(host=node.host, port=node.port)
        try:
            for key in direct.scan_iter(count=1000):
                text = key.decode()
                tag = re.match(r"^\{([^}]+)\}:", text)
                assert tag is not None, f"key without hash tag: {text}"
                tags[tag.group(1)].add(int(direct.execute_command("CLUSTER", "KEYSLOT", text)))
                if tag.group(1).startswith("m:"):
                    nodes_with_members.add(node.port)
        finally:
            direct.close()
    assert set(tags) == {f"m:{m}" for m in members} | {"c:pos-a", "c:app-b"}
    assert all(len(slots) == 1 for slots in tags.values())
    assert len(nodes_with_members) >= 2
