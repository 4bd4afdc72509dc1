"""The pipeliner: concurrent callers share pipelines, yet each gets exactly its own replies, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from syncd.embedded import EmbeddedRedis
from syncd.store.pipeliner import IN_FLIGHT, Pipeliner


async def test_each_caller_gets_its_own_replies_in_order_and_its_own_errors(
    redis_client: Redis | RedisCluster,
) -> None:
    pipeliner = Pipeliner(redis_client)
    await redis_client.set("{k}:text", "not a hash")

    async def caller(i: int) -> list[object]:
        key = f"{{k{i}}}:n"
        commands: list[tuple[object, ...]] = [("INCR", key), ("INCRBY", key, i), ("GET", key)]
        if i % 10 == 3:
            commands.insert(1, ("HSET", "{k}:text", "f", "v"))  # a command that fails on its own
        return await pipeliner.execute(commands)

    results = await asyncio.gather(*(caller(i) for i in range(60)))
    for i, replies in enumerate(results):
        if i % 10 == 3:
            assert isinstance(replies[1], rexc.ResponseError)
            del replies[1]
        assert replies == [1, 1 + i, str(1 + i).encode()]


async def test_concurrent_callers_share_at_most_in_flight_connections(
    standalone_server: EmbeddedRedis,
) -> None:
    shared = Redis.from_url(standalone_server.url, client_name="pipeliner-under-test")
    observer = Redis.from_url(standalone_server.url)
    try:
        pipeliner = Pipeliner(shared)
        await asyncio.gather(*(pipeliner.execute([("INCR", f"c{i}")]) for i in range(200)))
        clients = await observer.client_list()
        assert 1 <= sum(c["name"] == "pipeliner-under-test" for c in clients) <= IN_FLIGHT
        assert await observer.mget([f"c{i}" for i in range(200)]) == [b"1"] * 200
    finally:
        await shared.aclose()
        await observer.aclose()


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis_client: Redis | RedisCluster) -> None:
    pipeliner = Pipeliner(redis_client)
    tasks = [asyncio.create_task(pipeliner.execute([("INCR", f"{{x}}:{i}")])) for i in range(20)]
    tasks[5].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[5], asyncio.CancelledError)
    assert [r for i, r in enumerate(done) if i != 5] == [[1]] * 19


async def test_a_lost_server_fails_the_callers_of_that_moment_and_later_callers_get_through(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    server = redis_server_factory(appendonly=False)
    client = Redis.from_url(server.url, socket_connect_timeout=1)
    try:
        pipeliner = Pipeliner(client)
        assert await pipeliner.execute([("SET", "k", "1")]) == [True]
        server.stop()
        failures = await asyncio.gather(
            *(pipeliner.execute([("GET", "k")]) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(f, rexc.ConnectionError) for f in failures), failures
        server.start()
        assert await pipeliner.execute([("SET", "k", "2"), ("GET", "k")]) == [True, b"2"]
    finally:
        await client.aclose()
        server.stop()


async def test_callers_one_after_another_each_get_through(standalone_server: EmbeddedRedis) -> None:
    # No waiting for company: with nothing else under way, a caller's commands go out on their own, and a
    # flusher that ended (nothing left) is replaced by the next caller (else this would hang until the
    # suite's per-test timeout).
    client = Redis.from_url(standalone_server.url)
    try:
        pipeliner = Pipeliner(client)
        for n in range(3):
            assert await pipeliner.execute([("INCR", "lone")]) == [n + 1]
    finally:
        await client.aclose()
