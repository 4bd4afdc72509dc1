"""The fan-out over a real Redis: join returns once Redis confirmed the subscription, events reach the
listeners of their topic only, a connection loss is told to every listener, and a topic joined while the
connection is being made is subscribed too.

The one seam is :class:`Paused`: it wraps ``connect()`` so a test can hold the pub/sub's first ``SUBSCRIBE``
(the one that re-subscribes every held topic) and join a topic exactly then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from protocol import codec, frames
from syncd.embedded import EmbeddedRedis
from syncd.fanout import Fanout
from syncd.store.redis_store import channel


class Listener:
    """A session's side of the fan-out: records what it is handed."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.lost = 0
        self.changed = asyncio.Event()

    async def until(self, condition: Callable[[], object]) -> None:
        """Wait until ``condition()`` holds; the suite's timeout ends a test that never gets there."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    def deliver(self, topic: str, cursor: frames.Cursor, frame: bytes, framed: bytes) -> None:
        assert framed.endswith(frame)  # the websocket frame wraps the script's bytes unchanged
        self.events.append((topic, cursor.offset))
        self.changed.set()

    def fanout_lost(self) -> None:
        self.lost += 1
        self.changed.set()


class Paused:
    """``connect()`` for the fan-out whose pub/sub holds its first ``subscribe`` until :attr:`go` is set."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.holding = asyncio.Event()
        self.go = asyncio.Event()
        self.go.set()
        self.clients: list[Redis] = []

    def __call__(self) -> Any:
        client = Redis.from_url(self.url)
        self.clients.append(client)
        make_pubsub = client.pubsub

        def pubsub() -> Any:
            ps = make_pubsub()
            subscribe = ps.subscribe

            async def held_subscribe(*channels: str) -> None:
                if not self.go.is_set():
                    self.holding.set()
                    await self.go.wait()
                await subscribe(*channels)

            setattr(ps, "subscribe", held_subscribe)  # noqa: B010  (mypy: a method is replaced)
            return ps

        setattr(client, "pubsub", pubsub)  # noqa: B010
        return client


def event(topic: str, offset: int) -> bytes:
    frame = frames.Event(
        topic=topic, cursor=frames.Cursor("e1", offset), kind="cart.add", data={}, origin=None, at=0
    )
    return codec.encode(frame)


@pytest.fixture
def server(redis_server_factory: Any) -> Iterator[EmbeddedRedis]:
    srv = redis_server_factory(appendonly=False)
    yield srv
    srv.stop()


@pytest.fixture
async def publisher(server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url)
    yield client
    await client.aclose()


async def test_join_returns_once_subscribed_and_events_reach_their_topics_listeners_only(
    server: EmbeddedRedis, publisher: Redis
) -> None:
    fanout = Fanout(Paused(server.url), channel)
    await fanout.start()
    try:
        a, b = Listener(), Listener()
        await fanout.join("cart:m1", a)
        await fanout.join("cart:m2", b)
        await publisher.publish(channel("cart:m1"), event("cart:m1", 1))
        await publisher.publish(channel("cart:m2"), event("cart:m2", 7))
        await a.until(lambda: a.events)
        await b.until(lambda: b.events)
        assert a.events == [("cart:m1", 1)]
        assert b.events == [("cart:m2", 7)]
        assert fanout.topics == 2
    finally:
        await fanout.close()


async def test_a_topic_left_by_its_last_listener_is_no_longer_delivered(
    server: EmbeddedRedis, publisher: Redis
) -> None:
    fanout = Fanout(Paused(server.url), channel)
    await fanout.start()
    try:
        gone, stays = Listener(), Listener()
        await fanout.join("cart:m1", gone)
        await fanout.join("cart:m2", stays)
        fanout.leave("cart:m1", gone)
        assert fanout.topics == 1
        for _ in range(1000):  # the UNSUBSCRIBE is sent by a task of its own
            if not (await publisher.pubsub_numsub(channel("cart:m1")))[0][1]:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the fan-out kept the channel of a topic nobody holds")
        await publisher.publish(channel("cart:m1"), event("cart:m1", 1))
        await publisher.publish(channel("cart:m2"), event("cart:m2", 1))
        await stays.until(lambda: stays.events)
        assert gone.events == []
    finally:
        await fanout.close()


async def test_an_undecodable_message_is_dropped_and_later_events_still_flow(
    server: EmbeddedRedis, publisher: Redis
) -> None:
    fanout = Fanout(Paused(server.url), channel)
    await fanout.start()
    try:
        listener = Listener()
        await fanout.join("cart:m1", listener)
        await publisher.publish(channel("cart:m1"), b"\xc1 not msgpack")
        await publisher.publish(channel("cart:m1"), event("cart:m1", 1))
        await listener.until(lambda: listener.events)
        assert listener.events == [("cart:m1", 1)]
    finally:
        await fanout.close()


async def test_a_topic_joined_while_the_connection_is_being_made_is_subscribed_too(
    server: EmbeddedRedis, publisher: Redis
) -> None:
    """The connection re-subscribes the topics held when it began; one joined during that SUBSCRIBE must
    still be subscribed, or its join never returns and its session never sees a live event."""
    connect = Paused(server.url)
    connect.go.clear()
    fanout = Fanout(connect, channel)
    await fanout.start()
    try:
        await connect.holding.wait()  # the fan-out's SUBSCRIBE of what it holds is in flight
        late = Listener()
        joining = asyncio.create_task(fanout.join("cart:m9", late))
        await asyncio.sleep(0)  # the join has registered the topic and waits for its confirmation
        connect.go.set()
        await joining
        await publisher.publish(channel("cart:m9"), event("cart:m9", 1))
        await late.until(lambda: late.events)
        assert late.events == [("cart:m9", 1)]
    finally:
        await fanout.close()


async def test_losing_the_connection_tells_every_listener_and_a_rejoin_after_reconnect_works(
    server: EmbeddedRedis, publisher: Redis
) -> None:
    connect = Paused(server.url)
    fanout = Fanout(connect, channel, retry_delays=lambda: iter(lambda: 0.01, None))
    await fanout.start()
    try:
        a, b = Listener(), Listener()
        await fanout.join("cart:m1", a)
        await fanout.join("cart:m2", b)
        await publisher.client_kill_filter(_type="pubsub")
        await a.until(lambda: a.lost)
        await b.until(lambda: b.lost)
        await fanout.join("cart:m1", a)  # already held: waits for the new connection's confirmation
        assert fanout.stats.connected and fanout.stats.outages == 1 and len(connect.clients) == 2
        await publisher.publish(channel("cart:m1"), event("cart:m1", 3))
        await a.until(lambda: a.events)
        assert a.events == [("cart:m1", 3)]
    finally:
        await fanout.close()
