"""A primary and its replica, as a failover sees them: acks that wait for the replica, timeouts that turn a
frozen server into ``unavailable``, client failures of any class mapped the same way, and the shard
generation that gives every topic a new epoch once a replica is promoted (docs/traps.md §4b, §4c).

The servers are real (a primary and a ``--replicaof`` replica); a failover is what Redis does to promote a
replica (``REPLICAOF NO ONE``); a frozen server is a SIGSTOPped process.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from protocol import frames
from protocol.errors import BackendUnavailable
from syncd.embedded import EmbeddedRedis
from syncd.redis_info import make_client
from syncd.store import RedisStore
from tests.syncd.store.test_store_recovery import add, apply_retrying

HANG_GUARD_S = 60
"""Bounds a test that would otherwise hang forever without the fix; never a timing assertion."""


@pytest.fixture
def pair(redis_server_factory: Callable[..., EmbeddedRedis]) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    primary = redis_server_factory(extra_args=["--repl-diskless-sync-delay", "0"])  # sync at once, not in 5 s
    replica = redis_server_factory(extra_args=["--replicaof", primary.host, str(primary.port)])
    yield primary, replica
    for server in (replica, primary):
        server.kill()  # nothing to keep; a graceful stop of a pair can wait out its 10 s timeout
        server.stop()


async def wait_in_sync(primary: EmbeddedRedis) -> None:
    """Until the primary reports its replica online and the replica confirms a write."""
    client = Redis.from_url(primary.url)
    try:
        for _ in range(HANG_GUARD_S * 20):
            if (await client.info("replication")).get("slave0", {}).get("state") == "online":
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the replica never came online")
        # "online" is said once the primary has sent its snapshot; the replica may still be loading it and
        # confirms nothing meanwhile. Ready means: a write the replica has confirmed.
        await client.set("replica-ready", 1)
        for _ in range(HANG_GUARD_S):
            if await client.execute_command("WAIT", 1, 1000) >= 1:
                return
        raise TimeoutError("the replica never confirmed a write")
    finally:
        await client.aclose()


@pytest.fixture
async def on_primary(pair: tuple[EmbeddedRedis, EmbeddedRedis]) -> AsyncIterator[Any]:
    """``on_primary(**store_kwargs)``: a store on the pair's primary (timeout 1 s), closed at the end."""
    clients: list[Any] = []
    await wait_in_sync(pair[0])

    def make(server: EmbeddedRedis | None = None, **kwargs: Any) -> RedisStore:
        client = make_client((server or pair[0]).url, timeout_s=1.0)
        clients.append(client)
        return RedisStore(client, **kwargs)

    yield make
    for client in clients:
        await client.aclose()


async def test_replicas_durability_acks_once_the_replica_holds_the_op(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], on_primary: Any
) -> None:
    store = on_primary(durability="replicas", fsync_timeout_ms=300)
    outcome = await store.apply_op("a", add(1, 2))
    assert outcome.ok and outcome.result == {"qty": 2}
    replica = Redis.from_url(pair[1].url)
    try:  # WAIT returned: the replica holds the op and the watermark, in this order of the stream
        assert await replica.execute_command("HGET", "{c:a}:seq", "last") == b"1"
    finally:
        await replica.aclose()


async def test_replicas_durability_never_acks_what_no_replica_confirmed(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], on_primary: Any
) -> None:
    store = on_primary(durability="replicas", fsync_timeout_ms=300)
    await store.apply_op("a", add(1, 2))
    assert pair[1].pid is not None
    os.kill(pair[1].pid, signal.SIGSTOP)  # the replica cannot confirm anything
    try:
        with pytest.raises(BackendUnavailable, match="replicas confirmed"):
            await store.apply_op("a", add(2, 3))  # applied on the primary: its outcome is unknown
    finally:
        os.kill(pair[1].pid, signal.SIGCONT)
    outcome = await apply_retrying(store, "a", add(2, 3))  # the client's retry: same seq
    assert (outcome.ok, outcome.dup, outcome.result) == (True, True, {"qty": 5})


async def test_script_durability_does_not_wait(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], on_primary: Any
) -> None:
    store = on_primary()
    assert pair[1].pid is not None
    os.kill(pair[1].pid, signal.SIGSTOP)
    try:
        assert (await store.apply_op("a", add(1, 2))).ok
    finally:
        os.kill(pair[1].pid, signal.SIGCONT)


async def test_a_frozen_primary_is_unavailable_not_a_late_ack(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], on_primary: Any
) -> None:
    store = on_primary()
    await store.apply_op("a", add(1, 2))
    assert pair[0].pid is not None
    os.kill(pair[0].pid, signal.SIGSTOP)
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(BackendUnavailable):
                await store.apply_op("a", add(2, 3))
            with pytest.raises(BackendUnavailable):
                await store.snapshot("cart:m1")
    finally:
        os.kill(pair[0].pid, signal.SIGCONT)


async def test_any_client_failure_is_unavailable(on_primary: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the cluster client raised in a failover: ``AttributeError`` from a connection it had closed."""
    store = on_primary()
    await store.apply_op("a", add(1, 2))

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    monkeypatch.setattr(store._client, "execute_command", broken)
    with pytest.raises(BackendUnavailable):
        await store.snapshot("cart:m1")
    with pytest.raises(BackendUnavailable):
        await store.events_after("cart:m1", frames.Cursor("e", 0))
    with pytest.raises(BackendUnavailable):
        await store.last_seq("a")


async def test_a_promoted_replica_gives_every_topic_a_new_epoch(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], on_primary: Any
) -> None:
    """After a failover the new primary may lack the old one's last events and would hand their offsets to
    other events: every cursor of before must get a reset, never a history."""
    old = on_primary(durability="replicas", fsync_timeout_ms=1000)
    await old.apply_op("a", add(1, 2))
    await old.apply_op("a", add(2, 1, sku="jam"))
    before, _ = await old.snapshot("cart:m1")
    promoted = Redis.from_url(pair[1].url)
    try:
        await promoted.execute_command("REPLICAOF", "NO", "ONE")
    finally:
        await promoted.aclose()
    new = on_primary(pair[1])
    assert await new.events_after("cart:m1", before) is None
    assert await new.events_after("cart:m1", frames.Cursor(before.epoch, 1)) is None
    outcome = await new.apply_op("a", add(3, 1))
    assert outcome.event is not None
    assert outcome.event.cursor == frames.Cursor(outcome.event.cursor.epoch, 1)
    assert outcome.event.cursor.epoch != before.epoch
    after, state = await new.snapshot("cart:m1")
    assert after == outcome.event.cursor  # the state kept, under the new epoch
    assert state["lines"]["tea"]["qty"] == 3 and state["lines"]["jam"]["qty"] == 1
    assert await new.events_after("cart:m1", after) == []


async def test_a_snapshot_alone_starts_the_new_epoch(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], on_primary: Any
) -> None:
    old = on_primary(durability="replicas", fsync_timeout_ms=1000)
    await old.apply_op("a", add(1, 2))
    before, _ = await old.snapshot("cart:m1")
    promoted = Redis.from_url(pair[1].url)
    try:
        await promoted.execute_command("REPLICAOF", "NO", "ONE")
    finally:
        await promoted.aclose()
    new = on_primary(pair[1])
    cursor, state = await new.snapshot("cart:m1")
    assert cursor.epoch != before.epoch and cursor.offset == 0 and state["lines"]["tea"]["qty"] == 2
    outcome = await new.apply_op("a", add(2, 1))  # continues the snapshot's epoch
    assert outcome.event is not None and outcome.event.cursor == frames.Cursor(cursor.epoch, 1)
    assert [e.cursor for e in await new.events_after("cart:m1", cursor) or []] == [outcome.event.cursor]
