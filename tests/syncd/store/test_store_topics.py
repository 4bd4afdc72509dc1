"""Snapshots, cursors and history: gap-free resume, or a reset when the history is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from protocol import frames
from protocol.errors import ProtocolError
from syncd.store import RedisStore
from syncd.store.redis_store import channel, member_slot
from tests.syncd.store.conftest import Device, flush

Devices = Callable[..., Any]


def replay(lines: dict[str, Any], events: list[frames.Event]) -> dict[str, Any]:
    """A subscriber's view: a snapshot's lines with the events' line changes applied in order."""
    out = dict(lines)
    for event in events:
        for sku, line in event.data["lines"].items():
            if line is None:
                out.pop(sku, None)
            else:
                out[sku] = line
    return out


async def test_snapshot_of_a_never_written_topic_creates_nothing(
    store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    for member in range(50):
        cursor, state = await store.snapshot(f"cart:never{member}")
        assert cursor == frames.Cursor(frames.EMPTY_EPOCH, 0) and state == {"lines": {}}
        assert await store.events_after(f"cart:never{member}", cursor) == []  # honoured: nothing missed
    assert await redis_client.dbsize() == 0


async def test_a_cursor_of_the_empty_history_resumes_from_the_first_write(
    device: Devices, store: RedisStore
) -> None:
    empty, _ = await store.snapshot("cart:m1")
    sent = [await device("a").add("tea", 1), await device("b").add("cake", 2)]
    events = await store.events_after("cart:m1", empty)
    assert events == [o.event for o in sent] and [e.cursor.offset for e in events] == [1, 2]
    assert replay({}, events) == (await store.snapshot("cart:m1"))[1]["lines"]
    assert await store.events_after("cart:m1", frames.Cursor(frames.EMPTY_EPOCH, 1)) is None  # no such state


async def test_a_cursor_of_the_empty_history_is_reset_when_the_history_did_not_start_empty(
    device: Devices, store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    # The topic's metadata lost while its lines survived (evicted, deleted by hand): the epoch minted next
    # starts from those lines, not from the empty cart the cursor names, so replaying it would miss them.
    a = device("a")
    empty, _ = await store.snapshot("cart:m1")
    await a.add("tea", 1)
    await redis_client.delete(f"{member_slot('m1')}:top:cart")
    assert await store.events_after("cart:m1", empty) is None  # lines and no history: not the empty state
    await a.add("cake", 1)  # mints a new epoch over a cart that holds a line
    assert await store.events_after("cart:m1", empty) is None
    await redis_client.delete(f"{member_slot('m1')}:top:cart")
    cursor, state = await store.snapshot("cart:m1")  # a snapshot of lines needs a real epoch
    assert cursor.epoch != frames.EMPTY_EPOCH and set(state["lines"]) == {"tea", "cake"}
    assert await store.events_after("cart:m1", empty) is None


async def test_after_a_total_loss_a_cursor_of_the_empty_history_resumes_from_the_new_history(
    device: Devices, store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    empty, _ = await store.snapshot("cart:m1")
    await device("a").add("tea", 1)
    await flush(redis_client)
    again = await device("b").add("cake", 1)  # a new epoch, over an empty cart again
    assert await store.events_after("cart:m1", empty) == [again.event]


async def test_events_after_returns_exactly_the_missed_events_in_order(
    device: Devices, store: RedisStore
) -> None:
    a, b = device("a"), device("b")
    await a.add("tea", 1)
    cursor, state = await store.snapshot("cart:m1")
    sent = [await a.add("tea", 2), await b.add("cake", 1), await a.remove("tea", ctx={"a": 2})]
    events = await store.events_after("cart:m1", cursor)
    assert events == [o.event for o in sent]
    assert [e.cursor.offset for e in events] == [2, 3, 4]
    assert [e.origin for e in events] == [frames.Origin("a", 2), frames.Origin("b", 1), frames.Origin("a", 3)]
    assert replay(state["lines"], events) == (await store.snapshot("cart:m1"))[1]["lines"]


async def test_events_after_pages_by_limit(device: Devices, store: RedisStore) -> None:
    a = device("a")
    cursor, _ = await store.snapshot("cart:m1")
    for _ in range(7):
        await a.add("tea", 1)
    pages = []
    while page := await store.events_after("cart:m1", cursor, limit=3):
        pages.append([e.cursor.offset for e in page])
        cursor = page[-1].cursor
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]


async def test_cursor_of_another_epoch_or_ahead_of_the_topic_needs_a_reset(
    device: Devices, store: RedisStore
) -> None:
    await device("a").add("tea", 1)
    cursor, _ = await store.snapshot("cart:m1")
    assert await store.events_after("cart:m1", frames.Cursor("someother", 0)) is None
    assert await store.events_after("cart:m1", frames.Cursor(cursor.epoch, 2)) is None
    assert await store.events_after("cart:m2", frames.Cursor(cursor.epoch, 0)) is None  # unknown topic


async def test_cursor_before_the_trimmed_history_needs_a_reset(
    device: Devices, redis_client: Redis | RedisCluster
) -> None:
    store = RedisStore(redis_client, log_maxlen=5)
    a = device("a")
    a.store = store
    for _ in range(10):
        await a.add("tea", 1)
    cursor, _ = await store.snapshot("cart:m1")
    assert cursor.offset == 10
    assert await store.events_after("cart:m1", frames.Cursor(cursor.epoch, 4)) is None
    kept = await store.events_after("cart:m1", frames.Cursor(cursor.epoch, 5))
    assert kept is not None and [e.cursor.offset for e in kept] == [6, 7, 8, 9, 10]


async def test_total_data_loss_mints_a_new_epoch_so_old_cursors_reset(
    device: Devices, store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    await device("a").add("tea", 1)
    old, _ = await store.snapshot("cart:m1")
    if isinstance(redis_client, RedisCluster):
        await redis_client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        await redis_client.flushall()
    outcome = await device("b").add("cake", 1)  # the first write after the loss creates the topic anew
    assert outcome.event is not None
    new = outcome.event.cursor
    assert new.epoch != old.epoch and new.offset == 1
    assert await store.events_after("cart:m1", old) is None
    assert await store.events_after("cart:m1", frames.Cursor(new.epoch, 0)) == [outcome.event]


async def test_lost_topic_meta_with_a_stale_stream_starts_a_clean_history(
    device: Devices, store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    a = device("a")
    for _ in range(3):
        await a.add("tea", 1)
    old, _ = await store.snapshot("cart:m1")
    await redis_client.delete(f"{member_slot('m1')}:top:cart")
    outcome = await a.add("tea", 1)
    assert outcome.event is not None and outcome.event.cursor.offset == 1
    assert outcome.event.cursor.epoch != old.epoch
    events = await store.events_after("cart:m1", frames.Cursor(outcome.event.cursor.epoch, 0))
    assert events == [outcome.event]


async def test_snapshot_and_cursor_are_atomic_under_concurrent_writes(
    device: Devices, store: RedisStore
) -> None:
    writers = [device(f"w{i}") for i in range(4)]

    async def write(d: Any) -> None:
        for i in range(15):
            await d.add(f"sku{i % 3}", 1)

    async def snapshots() -> list[tuple[frames.Cursor, dict[str, Any]]]:
        taken = []
        for _ in range(15):
            taken.append(await store.snapshot("cart:m1"))
            await asyncio.sleep(0)
        return taken

    taking = asyncio.create_task(snapshots())
    await asyncio.gather(*(write(d) for d in writers))
    taken = await taking
    final_cursor, final = await store.snapshot("cart:m1")
    assert final_cursor.offset == 60
    for cursor, state in taken:
        events = await store.events_after("cart:m1", cursor, limit=100)
        assert events is not None
        assert [e.cursor.offset for e in events] == list(range(cursor.offset + 1, 61))
        assert replay(state["lines"], events) == final["lines"]


async def test_unknown_topic_is_a_protocol_error(store: RedisStore) -> None:
    with pytest.raises(ProtocolError):
        await store.snapshot("nope:1")
    with pytest.raises(ProtocolError):
        await store.events_after("cart:a b", frames.Cursor("e", 0))


async def test_event_is_published_with_the_bytes_of_the_stream_entry(
    request: pytest.FixtureRequest, store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    if isinstance(redis_client, RedisCluster):  # PUBLISH reaches every node: listen on each of them
        urls = [node.url for node in request.getfixturevalue("valkey_cluster")]
    else:
        urls = [request.getfixturevalue("standalone_server").url]
    listeners = [Redis.from_url(url) for url in urls]
    pubsubs = [listener.pubsub(ignore_subscribe_messages=True) for listener in listeners]
    try:
        for pubsub in pubsubs:
            await pubsub.subscribe(channel("cart:m1"))
        op = frames.Op(seq=1, kind="cart.add", args={"member": "m1", "sku": "tea", "qty": 1})
        outcome = await store.apply_op("a", op)
        cursor, _ = await store.snapshot("cart:m1")
        (event,) = await store.events_after("cart:m1", frames.Cursor(cursor.epoch, 0)) or []
        for pubsub in pubsubs:
            message = None
            for _ in range(3):  # get_message returns None for the (ignored) subscribe confirmation
                message = message or await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
            assert message is not None and message["data"] == outcome.event_frame
            assert msgspec.msgpack.decode(message["data"], type=frames.Event) == event
    finally:
        for pubsub in pubsubs:
            await pubsub.aclose()
        for listener in listeners:
            await listener.aclose()


async def test_history_older_than_the_retention_age_is_dropped_and_such_a_cursor_gets_a_reset(
    redis_client: Redis | RedisCluster,
) -> None:
    store = RedisStore(redis_client, log_max_age_s=1)
    a = Device(store, "a")
    start, _ = await store.snapshot("cart:m1")
    for _ in range(3):
        await a.add("tea", 1)
    middle, _ = await store.snapshot("cart:m1")
    await asyncio.sleep(1.1)  # the retention is an age: it has to pass
    fresh = await a.add("tea", 1)
    assert await store.events_after("cart:m1", start) is None  # its first needed event aged out
    assert await store.events_after("cart:m1", middle) == [fresh.event]  # the recent tail is kept


async def test_an_expired_backlog_longer_than_one_writes_trim_is_dropped_over_the_next_writes(
    redis_client: Redis | RedisCluster,
) -> None:
    # A write drops at most 8 expired entries, and reads the stream only while its first entry may be expired
    # (the topic remembers that entry's commit time): the backlog goes in steps, then writes stop trimming.
    store = RedisStore(redis_client, log_max_age_s=1)
    a = Device(store, "a")
    for _ in range(20):
        await a.add("tea", 1)
    log_key = f"{member_slot('m1')}:log:cart"
    assert await redis_client.xlen(log_key) == 20
    await asyncio.sleep(1.1)
    lengths = []
    for _ in range(4):
        await a.add("tea", 1)
        lengths.append(await redis_client.xlen(log_key))
    assert lengths == [13, 6, 3, 4]
    first = await redis_client.xrange(log_key, count=1)
    assert first[0][0] == b"21-0"  # the first write after the pause heads the stream
