"""Live events that arrive while a subscription is being synchronised, made deterministic.

The hub joins the fan-out *before* it reads a snapshot or the history (docs/traps.md §7), so an event
committed during the read reaches the session live as well as (maybe) through the read. Each test holds the
read at one exact moment (:class:`tests.syncd.hubkit.Pauses`), commits events then, and checks that the
client gets every event once, in offset order, after the snapshot or history that does not cover it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from protocol import frames
from protocol.errors import CloseCode
from syncd.fanout import EventRun
from syncd.hub import Hub
from syncd.session import Session
from tests.syncd.conftest import MakeDevice
from tests.syncd.hubkit import Device, Pauses, op


class Tap:
    """Wraps a session's ``deliver`` (and ``deliver_run``, event by event): records the offsets fan-out
    hands it, and loses the first delivery of the offsets in ``lose`` (as a pub/sub message lost in flight
    would be)."""

    def __init__(self, session: Session, lose: Iterable[int] = ()) -> None:
        self.seen: list[int] = []
        self.lose = set(lose)
        self.changed = asyncio.Event()
        inner = session.deliver

        def deliver(topic: str, cursor: frames.Cursor, frame: bytes, framed: bytes | None = None) -> None:
            self.seen.append(cursor.offset)
            self.changed.set()
            if cursor.offset in self.lose:
                self.lose.discard(cursor.offset)
                return
            inner(topic, cursor, frame, framed)

        def deliver_run(topic: str, run: EventRun) -> None:  # a run is its events, each one seen (or lost)
            for cursor, frame, framed in run.events:
                deliver(topic, cursor, frame, framed)

        session.deliver = deliver  # type: ignore[method-assign]
        session.deliver_run = deliver_run  # type: ignore[method-assign]

    async def until_seen(self, *offsets: int) -> None:
        while not set(offsets) <= set(self.seen):
            self.changed.clear()
            await self.changed.wait()


def session_of(hub: Hub, client_id: str) -> Session:
    return next(s for s in hub.sessions if s.principal.client_id == client_id)


async def write(writer: Device, *seqs: int) -> None:
    """Commit ops ``seqs`` (one cart line each) and wait for their acks."""
    writer.send(frames.OpBatch(ops=[op(seq, sku=f"SKU-{seq}") for seq in seqs]))
    for _ in seqs:
        await writer.next(frames.Ack)


async def events(reader: Device, count: int) -> list[int]:
    """The offsets of the first ``count`` events the reader got, in order (for events sent by a task of
    their own, which a barrier cannot order)."""
    await reader.wait(lambda: sum(isinstance(f, frames.Event) for f in reader.frames) >= count)
    return [e.cursor.offset for e in reader.taken(frames.Event)]


async def sent_so_far(reader: Device) -> list[int]:
    """The offsets of every event the hub sent the reader before answering one more request of its.

    The hub serves a connection's requests in order and its answers share one queue with the events, so
    the answer to a refused ``sub`` comes after everything sent before it: a failing test fails here at
    once instead of waiting for an event that never comes.
    """
    reader.send(frames.Subscribe(id=99, topic="cart:not-mine"))
    await reader.next(frames.Error)
    return [e.cursor.offset for e in reader.taken(frames.Event)]


async def pair(device: MakeDevice) -> tuple[Device, Device]:
    writer, reader = device("app-w"), device("app-r")
    await writer.open()
    await reader.open()
    return writer, reader


def cursor_of(snap: frames.Snapshot) -> frames.Cursor:
    assert snap.cursor is not None
    return snap.cursor


async def test_events_committed_after_the_snapshot_was_read_follow_it_once_each(
    device: MakeDevice, hub: Hub
) -> None:
    writer, reader = await pair(device)
    await write(writer, 1, 2)
    tap = Tap(session_of(hub, "app-r"))
    pauses = Pauses(hub.store)
    pauses.hold("snapshot", after=True)  # the snapshot at offset 2 is read, not sent yet
    reader.send(frames.Subscribe(id=1, topic="cart:m1"))
    await pauses.reached.wait()
    await write(writer, 3, 4, 5)
    await tap.until_seen(3, 4, 5)  # buffered live while the snapshot waits
    pauses.release()
    snap = await reader.next(frames.Snapshot)
    assert cursor_of(snap).offset == 2
    assert await sent_so_far(reader) == [3, 4, 5]


async def test_events_committed_before_the_snapshot_is_read_are_in_it_and_not_sent_again(
    device: MakeDevice, hub: Hub
) -> None:
    writer, reader = await pair(device)
    await write(writer, 1)
    tap = Tap(session_of(hub, "app-r"))
    pauses = Pauses(hub.store)
    pauses.hold("snapshot")  # subscribed to the fan-out, the snapshot not read yet
    reader.send(frames.Subscribe(id=1, topic="cart:m1"))
    await pauses.reached.wait()
    await write(writer, 2, 3)
    await tap.until_seen(2, 3)  # live, and also in the snapshot about to be read
    pauses.release()
    snap = await reader.next(frames.Snapshot)
    assert cursor_of(snap).offset == 3
    assert await sent_so_far(reader) == []
    await write(writer, 4)
    assert await events(reader, 1) == [4]


async def test_events_committed_while_the_history_is_read_follow_it_once_each(
    device: MakeDevice, hub: Hub
) -> None:
    writer, reader = await pair(device)
    await write(writer, 1, 2, 3)
    reader.send(frames.Subscribe(id=1, topic="cart:m1"))
    epoch = cursor_of(await reader.next(frames.Snapshot)).epoch
    reader.send(frames.Unsubscribe(topic="cart:m1"))
    tap = Tap(session_of(hub, "app-r"))
    pauses = Pauses(hub.store)
    pauses.hold("events_after", after=True)  # events 2 and 3 are read, not sent yet
    reader.send(frames.Subscribe(id=2, topic="cart:m1", cursor=frames.Cursor(epoch, 1)))
    await pauses.reached.wait()
    await write(writer, 4, 5)
    await tap.until_seen(4, 5)
    pauses.release()
    snap = await reader.next(frames.Snapshot)
    assert snap.state is None and cursor_of(snap).offset == 1
    assert await sent_so_far(reader) == [2, 3, 4, 5]


async def test_a_hole_in_live_events_is_filled_from_the_stream_while_later_events_wait(
    device: MakeDevice, hub: Hub
) -> None:
    """Event 2 is lost in flight: the session must not deliver 3 past the hole, fetch 2 from the stream,
    and deliver the events that arrive during that read after it — each once, in order."""
    writer, reader = await pair(device)
    reader.send(frames.Subscribe(id=1, topic="cart:m1"))
    await reader.next(frames.Snapshot)
    tap = Tap(session_of(hub, "app-r"), lose={2})
    await write(writer, 1)
    assert await events(reader, 1) == [1]
    pauses = Pauses(hub.store)
    pauses.hold("events_after", after=True)  # the resync's read of the stream
    await write(writer, 2, 3)  # 2 is lost, 3 reveals the hole
    await tap.until_seen(2, 3)
    assert await sent_so_far(reader) == []  # nothing past the hole
    await pauses.reached.wait()
    await write(writer, 4, 5)
    await tap.until_seen(4, 5)
    assert await sent_so_far(reader) == []  # still nothing: 4 and 5 wait behind the hole
    pauses.release()
    assert await events(reader, 4) == [2, 3, 4, 5]


async def test_a_failed_resync_ends_the_session_so_its_client_resumes(
    device: MakeDevice, hub: Hub, hub_redis: Any
) -> None:
    writer, reader = await pair(device)
    reader.send(frames.Subscribe(id=1, topic="cart:m1"))
    await reader.next(frames.Snapshot)
    Tap(session_of(hub, "app-r"), lose={1})
    pauses = Pauses(hub.store)
    pauses.hold("events_after")
    await write(writer, 1, 2)
    await pauses.reached.wait()
    hub_redis.stop()
    pauses.release()
    assert await reader.wire.closed() == CloseCode.BACKEND_UNAVAILABLE
