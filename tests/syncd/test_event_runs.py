"""Events that reach a hub together are written to each subscriber together: one write per connection.

When several events of a topic arrive from the fan-out in one read (a burst, or a hub catching up after a
pause), :class:`~syncd.fanout.EventRun` holds them with their websocket frames joined once, and a session
whose subscription expects exactly the run's first offset writes the whole run with one ``raw_send``. Every
other case — a hole, another epoch, a subscription synchronising, a transport that declines — falls back to
the event-by-event rules, so offsets, order and the send queue's byte bound hold as for single events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from protocol import codec, frames
from protocol.errors import CloseCode
from syncd.auth import Principal, Role
from syncd.embedded import EmbeddedRedis
from syncd.fanout import EventRun, Fanout, runs_of
from syncd.session import RateLimit, Session, Subscription
from syncd.store.redis_store import channel
from syncd.transport import frame_header

TOPIC = "cart:m1"
_DECODER = codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS)


class Wire:
    """The transport's fast path: records each write, or declines while ``paused``."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.paused = False

    def __call__(self, framed: bytes) -> bool:
        if self.paused:
            return False
        self.writes.append(framed)
        return True


def new_session(wire: Wire, gaps: list[Subscription], max_queue_bytes: int = 64 * 1024) -> Session:
    principal = Principal("app-1", "app", Role.APP, frozenset({"m1"}), None, 2**40)
    session = Session(
        principal,
        max_queue_bytes=max_queue_bytes,
        rate=RateLimit(rate=100, burst=100),
        on_gap=lambda _session, sub: gaps.append(sub),
    )
    session.raw_send = wire
    sub = session.subscriptions[TOPIC] = Subscription(TOPIC, request_id=1)
    session.synchronised(sub, "e1", 5)
    return session


def event(offset: int, epoch: str = "e1", pad: int = 0) -> tuple[frames.Cursor, bytes]:
    cursor = frames.Cursor(epoch, offset)
    frame = frames.Event(
        topic=TOPIC, cursor=cursor, kind="cart.add", data={"p": "x" * pad}, origin=None, at=0
    )
    return cursor, codec.encode(frame)


def run(*offsets: int) -> EventRun:
    (only,) = runs_of([event(offset) for offset in offsets], max_bytes=1 << 20)
    return only


def offsets_in(data: bytes) -> list[int]:
    """The offsets of the websocket frames written in ``data`` (unmasked binary frames, as the hub sends)."""
    found = []
    while data:
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        decoded = _DECODER.decode(data[start : start + length])
        assert isinstance(decoded, frames.Event)
        found.append(decoded.cursor.offset)
        data = data[start + length :]
    return found


def test_a_run_that_continues_the_subscription_is_one_write_of_every_frame_in_order() -> None:
    wire, gaps = Wire(), []
    session = new_session(wire, gaps)
    session.deliver_run(TOPIC, run(6, 7, 8))
    assert len(wire.writes) == 1
    assert offsets_in(wire.writes[0]) == [6, 7, 8]
    assert session.subscriptions[TOPIC].offset == 8
    session.deliver_run(TOPIC, run(9, 10))
    assert [offsets_in(w) for w in wire.writes] == [[6, 7, 8], [9, 10]]


def test_a_run_with_offsets_already_delivered_or_past_a_hole_follows_the_event_rules() -> None:
    wire, gaps = Wire(), []
    session = new_session(wire, gaps)
    session.deliver_run(TOPIC, run(5, 6, 7))  # 5 was covered: dropped, 6 and 7 delivered
    assert [offset for w in wire.writes for offset in offsets_in(w)] == [6, 7]
    assert not gaps
    session.deliver_run(TOPIC, run(9, 10))  # 8 never arrived: a hole, resynchronised, nothing written
    assert [offset for w in wire.writes for offset in offsets_in(w)] == [6, 7]
    assert gaps == [session.subscriptions[TOPIC]]


def test_a_run_is_split_where_offsets_or_epochs_do_not_follow_and_at_the_byte_cap() -> None:
    events = [event(6), event(7), event(9), event(10, epoch="e2"), event(11, epoch="e2")]
    runs = runs_of(events, max_bytes=1 << 20)
    assert [[cursor.offset for cursor, _, _ in r.events] for r in runs] == [[6, 7], [9], [10, 11]]
    for r in runs:
        assert r.framed == b"".join(framed for _, _, framed in r.events)
        assert all(framed == frame_header(len(frame)) + frame for _, frame, framed in r.events)
    big = [event(offset, pad=300) for offset in range(6, 12)]
    size = len(frame_header(len(big[0][1])) + big[0][1])
    capped = runs_of(big, max_bytes=2 * size + size // 2)
    assert [len(r.events) for r in capped] == [2, 2, 2]


def test_a_run_refused_by_the_transport_is_queued_event_by_event_within_the_byte_bound() -> None:
    wire, gaps = Wire(), []
    session = new_session(wire, gaps, max_queue_bytes=1000)
    wire.paused = True
    session.deliver_run(TOPIC, run(6, 7))
    assert not wire.writes
    queued = session.take_batch()
    assert [offsets_in(frame_header(len(f)) + f) for f in queued] == [[6], [7]]
    session.batch_sent()
    big = runs_of([event(offset, pad=300) for offset in range(8, 14)], max_bytes=1 << 20)
    for r in big:
        session.deliver_run(TOPIC, r)
    assert session.close_code == CloseCode.SLOW_CONSUMER


def test_a_run_for_a_synchronising_subscription_is_buffered_and_replayed_once() -> None:
    wire, gaps = Wire(), []
    session = new_session(wire, gaps)
    sub = session.subscriptions[TOPIC]
    sub.buffer = []  # a snapshot is being read
    session.deliver_run(TOPIC, run(6, 7, 8))
    assert not wire.writes
    session.synchronised(sub, "e1", 6)  # the snapshot covered 6
    assert [offset for w in wire.writes for offset in offsets_in(w)] == [7, 8]


class RunListener:
    """A fan-out listener that takes runs: records each call's offsets."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.changed = asyncio.Event()

    def deliver(self, topic: str, cursor: frames.Cursor, frame: bytes, framed: bytes) -> None:
        self.calls.append([cursor.offset])
        self.changed.set()

    def deliver_run(self, topic: str, run: EventRun) -> None:
        assert run.framed == b"".join(framed for _, _, framed in run.events)
        self.calls.append([cursor.offset for cursor, _, _ in run.events])
        self.changed.set()

    def fanout_lost(self) -> None:
        pass

    async def until(self, count: int) -> None:
        while sum(len(call) for call in self.calls) < count:
            self.changed.clear()
            await self.changed.wait()


class EventListener(RunListener):
    """One that takes events one at a time only (no ``deliver_run``), like the fan-out's first listeners."""

    deliver_run = None  # type: ignore[assignment]


@pytest.fixture
def server(redis_server_factory: Any) -> Iterator[EmbeddedRedis]:
    srv = redis_server_factory(appendonly=False)
    yield srv
    srv.stop()


async def test_a_burst_published_at_once_reaches_every_kind_of_listener_once_and_in_order(
    server: EmbeddedRedis,
) -> None:
    fanout = Fanout(lambda: Redis.from_url(server.url), channel)
    publisher = Redis.from_url(server.url)
    await fanout.start()
    try:
        runs, singles = RunListener(), EventListener()
        await fanout.join(TOPIC, runs)
        await fanout.join(TOPIC, singles)
        async with publisher.pipeline(transaction=True) as pipe:
            for offset in range(1, 41):
                pipe.publish(channel(TOPIC), event(offset)[1])
            await pipe.execute()
        await runs.until(40)
        await singles.until(40)
        assert [offset for call in runs.calls for offset in call] == list(range(1, 41))
        assert singles.calls == [[offset] for offset in range(1, 41)]
    finally:
        await fanout.close()
        await publisher.aclose()
