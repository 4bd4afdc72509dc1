"""The hub's Redis clients pack commands with hiredis, byte for byte as redis-py's own packer does."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from syncd.embedded import EmbeddedRedis
from syncd.redis_info import close_client, make_client, node_connector

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "c650166f6ab6cccc", 2, "{m:m1}:d:pos-1", "{m:m1}:cart", "pos-1", 2**53 - 1, 0, b"\x80", b""),
    ("SCRIPT LOAD", "return 1"),  # a subcommand given with its command: two arguments on the wire
    (b"CLIENT SETNAME", b"hub"),
    ("HSET", "k", "f", "thé vert", "n", -7, "x", 1.5),
    ("PING",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_packing_matches_redis_pys_own(command: tuple[Any, ...]) -> None:
    python_packed = b"".join(Connection().pack_command(*command))
    hub = make_client("redis://127.0.0.1:1/0")
    connection = hub.connection_pool.make_connection()  # type: ignore[union-attr]
    assert b"".join(connection.pack_command(*command)) == python_packed


async def test_standalone_and_pub_sub_clients_pack_in_c_and_work(redis_server: EmbeddedRedis) -> None:
    client = make_client(redis_server.url)
    pubsub_client = node_connector(redis_server.url, client)()
    try:
        for c in (client, pubsub_client):
            assert await c.execute_command("SCRIPT LOAD", "return 7")
            assert await c.eval("return ARGV[1] .. KEYS[1]", 1, "k", "thé") == "thék".encode()
            connection = await c.connection_pool.get_connection()
            assert type(connection).__name__.startswith("Hiredis")
            await c.connection_pool.release(connection)
    finally:
        await close_client(client)
        await pubsub_client.aclose()


async def test_cluster_clients_pack_in_c_on_every_node(valkey_cluster: list[EmbeddedRedis]) -> None:
    client = make_client(valkey_cluster[0].url, cluster=True)
    try:
        for i in range(30):  # keys spread over every primary
            await client.set(f"k{i}", i)
        assert [int(await client.get(f"k{i}")) for i in range(30)] == list(range(30))
        nodes = client.get_nodes()  # type: ignore[union-attr]
        assert len(nodes) >= 3
        assert all(node.connection_class.__name__.startswith("Hiredis") for node in nodes)
    finally:
        await close_client(client)
