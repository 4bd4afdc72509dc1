"""Fixtures for the store tests: servers (a standalone Redis and a 3-node Valkey cluster), clients, devices.

Servers come from ``redis_server_factory`` and the clusters from ``valkey_cluster``/``cluster_factory``
(tests/conftest.py, shared with the e2e tests), so every one is private, on a free port, and stopped at the
end of the session. The standalone server and the cluster are session-scoped and flushed before each test;
tests that kill or restart a server start their own.

``store`` is parametrized over both backends, so every cart rule runs on ``Redis`` and ``RedisCluster``.
``Device`` plays one client: it numbers its ops 1, 2, 3, … like the SDK, so tests read as scenarios.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from protocol import frames
from syncd.embedded import EmbeddedRedis, bundled_binary
from syncd.store import OpOutcome, RedisStore


@pytest.fixture(scope="session")
def standalone_server(redis_server_factory: Callable[..., EmbeddedRedis]) -> EmbeddedRedis:
    """The server ``syncd serve`` would pick on this machine, without persistence (the fast path)."""
    return redis_server_factory(appendonly=False)


async def flush(client: Redis | RedisCluster) -> None:
    """Empty every primary (keys only: script caches survive FLUSHALL)."""
    if isinstance(client, RedisCluster):
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.flushall()


@pytest.fixture(params=["standalone", "cluster"])
async def redis_client(
    request: pytest.FixtureRequest,
    standalone_server: EmbeddedRedis,
) -> AsyncIterator[Redis | RedisCluster]:
    """A fresh, empty database: a ``Redis`` on the standalone server, or a ``RedisCluster``."""
    client: Redis | RedisCluster
    if request.param == "cluster":
        nodes = request.getfixturevalue("valkey_cluster")
        client = RedisCluster(host=nodes[0].host, port=nodes[0].port)
    else:
        client = Redis.from_url(standalone_server.url)
    await flush(client)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis_client: Redis | RedisCluster) -> RedisStore:
    return RedisStore(redis_client)


class Device:
    """One client of the hub in a test: numbers its ops like the SDK and remembers their outcomes."""

    def __init__(self, store: RedisStore, client_id: str, member: str = "m1") -> None:
        self.store = store
        self.client_id = client_id
        self.member = member
        self.seq = 0

    def op(self, kind: str, *, ctx: dict[str, int] | None = None, hlc: int = 0, **args: Any) -> frames.Op:
        """The next op of this device (not sent)."""
        self.seq += 1
        return frames.Op(seq=self.seq, kind=kind, args={"member": self.member, **args}, ctx=ctx, hlc=hlc)

    async def send(self, op: frames.Op) -> OpOutcome:
        return await self.store.apply_op(self.client_id, op)

    async def add(self, sku: str, qty: int, *, hlc: int = 0, **args: Any) -> OpOutcome:
        return await self.send(self.op("cart.add", sku=sku, qty=qty, hlc=hlc, **args))

    async def set(self, sku: str, qty: int, ctx: dict[str, int], *, hlc: int = 0, **args: Any) -> OpOutcome:
        return await self.send(self.op("cart.set", sku=sku, qty=qty, ctx=ctx, hlc=hlc, **args))

    async def remove(self, sku: str, ctx: dict[str, int], *, hlc: int = 0) -> OpOutcome:
        return await self.send(self.op("cart.remove", sku=sku, ctx=ctx, hlc=hlc))

    async def clear(self, ctx: dict[str, int], *, hlc: int = 0) -> OpOutcome:
        return await self.send(self.op("cart.clear", ctx=ctx, hlc=hlc))

    async def lines(self) -> dict[str, Any]:
        """The member's cart lines in wire form, from a snapshot."""
        _, state = await self.store.snapshot(f"cart:{self.member}")
        result: dict[str, Any] = state["lines"]
        return result


@pytest.fixture
def device(store: RedisStore) -> Callable[..., Device]:
    """``device("pos-1")`` → a :class:`Device` on the test's store."""
    return lambda client_id, member="m1": Device(store, client_id, member)


@pytest.fixture
def valkey_server(redis_server_factory: Callable[..., EmbeddedRedis]) -> Iterator[EmbeddedRedis]:
    """A private Valkey (WAITAOF, AOF with appendfsync everysec) for one test."""
    server = redis_server_factory(binary=bundled_binary())
    yield server
    server.stop()
