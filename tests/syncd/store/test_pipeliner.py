"""The pipeliner: concurrent callers share pipelines, yet each gets exactly its own replies, in order."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from syncd.embedded import EmbeddedRedis
from syncd.store.pipeliner import IN_FLIGHT, LONE_QUANTUM, QUANTUM, Pipeliner, chunk_end


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


@pytest.fixture
async def standalone(standalone_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    """A client of the standalone server with no ``order`` list yet (where the tests' commands log)."""
    client = Redis.from_url(standalone_server.url)
    await client.delete("order")
    yield client
    await client.aclose()


async def _order(client: Redis) -> list[str]:
    """What the commands pushed to ``order``, in the order Redis ran them."""
    return [item.decode() for item in await client.lrange("order", 0, -1)]


async def test_a_caller_queued_behind_a_long_backlog_is_served_within_one_quantum(standalone: Redis) -> None:
    # One connection's run of ops (a flood: hundreds at once) and another's single op are queued at the same
    # moment. Served in arrival order, the single op would run after the whole run; served round-robin, it
    # runs within the first turn. Redis's own record of the order (RPUSH) is the evidence, not a clock.
    pipeliner = Pipeliner(standalone)
    backlog = pipeliner.execute([("RPUSH", "order", f"a{i}") for i in range(300)])
    single = pipeliner.execute([("RPUSH", "order", "b")])
    await asyncio.gather(backlog, single)
    order = await _order(standalone)
    assert order.index("b") <= QUANTUM
    assert [item for item in order if item != "b"] == [f"a{i}" for i in range(300)]


async def test_a_short_request_goes_whole_ahead_of_a_long_one_queued_before_it(standalone: Redis) -> None:
    # A device's few ops are a short request: sent whole in the next pipeline, before any turn of the long
    # one (a flood's run) that was queued first.
    pipeliner = Pipeliner(standalone)
    long = pipeliner.execute([("RPUSH", "order", f"a{i}") for i in range(100)])
    short = pipeliner.execute([("RPUSH", "order", f"b{i}") for i in range(QUANTUM)])
    await asyncio.gather(long, short)
    order = await _order(standalone)
    assert order[:QUANTUM] == [f"b{i}" for i in range(QUANTUM)]


async def test_a_caller_arriving_while_backlogs_are_served_waits_for_a_turn_of_them(
    standalone: Redis,
) -> None:
    pipeliner = Pipeliner(standalone)
    flood = [
        asyncio.create_task(pipeliner.execute([("RPUSH", "order", f"{name}{i}") for i in range(200)]))
        for name in "xyz"
    ]
    before = 0
    while before < 3 * QUANTUM:  # until the flood is under way, in turns
        before = len(await _order(standalone))
    assert before < 500  # most of it still to come
    await pipeliner.execute([("RPUSH", "order", "late")])
    # Ahead of it: at most the turns under way when it arrived (one pipeline of backlog, one of first turns).
    assert (await _order(standalone)).index("late") - before <= 4 * QUANTUM
    await asyncio.gather(*flood)


async def test_backlogs_of_several_callers_are_served_in_turns_each_in_its_own_order(
    standalone: Redis,
) -> None:
    pipeliner = Pipeliner(standalone)
    count = 5 * QUANTUM + 3
    results = await asyncio.gather(
        *(pipeliner.execute([("RPUSH", "order", f"{name}{i}") for i in range(count)]) for name in "xyz")
    )
    order = await _order(standalone)
    for name in "xyz":
        assert [o for o in order if o[0] == name] == [f"{name}{i}" for i in range(count)]
    runs = [len(list(run)) for _, run in itertools.groupby(order, key=lambda o: o[0])]
    assert max(runs) <= QUANTUM  # nobody ran a whole backlog while the others waited
    # Each caller's replies are its own, in order, however its commands were split into turns.
    assert [len(r) for r in results] == [count] * 3
    for replies in results:
        assert replies == sorted(replies)


async def test_a_lone_caller_is_served_in_large_turns(standalone: Redis) -> None:
    # Nobody else waits: a device replaying its outbox is not slowed to the turns that share Redis fairly.
    pipeliner = Pipeliner(standalone)
    replies = await pipeliner.execute([("INCR", "n")] * (LONE_QUANTUM + 1))
    assert replies == list(range(1, LONE_QUANTUM + 2))


def test_a_turn_never_ends_between_the_writes_and_the_wait_that_follows_them() -> None:
    # WAIT/WAITAOF confirm the writes made earlier *on their connection*: a turn that ended just before
    # the wait would send it alone, on whatever connection, confirming nothing of the writes.
    assert chunk_end(total=10, start=0, quantum=8, tail=0) == 8
    assert chunk_end(total=9, start=0, quantum=8, tail=1) == 9  # the wait goes with the last write
    assert chunk_end(total=10, start=0, quantum=8, tail=1) == 8  # two commands left: a write and the wait
    assert chunk_end(total=10, start=8, quantum=8, tail=1) == 10
    assert chunk_end(total=3, start=0, quantum=8, tail=1) == 3


async def test_a_long_request_cancelled_between_turns_stops_and_leaves_the_others_theirs(
    standalone: Redis,
) -> None:
    pipeliner = Pipeliner(standalone)
    cancelled = asyncio.create_task(pipeliner.execute([("RPUSH", "order", f"a{i}") for i in range(200)]))
    other = asyncio.create_task(pipeliner.execute([("RPUSH", "order", f"b{i}") for i in range(50)]))
    while "a0" not in await _order(standalone):  # its first turn has run
        pass
    cancelled.cancel()
    replies = await other
    assert len(replies) == 50
    order = await _order(standalone)
    mine = [o for o in order if o[0] == "a"]
    assert mine == [f"a{i}" for i in range(len(mine))]  # what ran of it is a prefix, in order
    assert len(mine) < 200  # and the rest was never sent
    assert [o for o in order if o[0] == "b"] == [f"b{i}" for i in range(50)]
