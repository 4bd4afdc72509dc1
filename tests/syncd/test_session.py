"""A session's delivery of live events, without sockets: offsets, holes, epochs and the resync buffer.

The hub checks every live event against the offset its subscription last delivered: the next offset is
sent, an older one was already covered (by a snapshot or history) and is dropped, and anything else — a later
offset (a hole) or another epoch — must not be delivered until the session has caught up from the stream.
While a subscription synchronises, live events are buffered and replayed after the snapshot or history, so
an event committed during the read is neither lost nor sent twice.
"""

from __future__ import annotations

from protocol import codec, frames
from syncd.auth import Principal, Role
from syncd.session import RateLimit, Session, Subscription

TOPIC = "cart:m1"
_DECODER = codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS)


class Gaps:
    """The session's ``on_gap`` callback: records which subscriptions asked for a resync."""

    def __init__(self) -> None:
        self.subs: list[Subscription] = []

    def __call__(self, session: Session, sub: Subscription) -> None:
        self.subs.append(sub)


def new_session(gaps: Gaps) -> Session:
    principal = Principal("app-1", "app", Role.APP, frozenset({"m1"}), None, 2**40)
    return Session(principal, max_queue_bytes=64 * 1024, rate=RateLimit(rate=100, burst=100), on_gap=gaps)


def event(offset: int, epoch: str = "e1") -> tuple[frames.Cursor, bytes]:
    cursor = frames.Cursor(epoch, offset)
    frame = frames.Event(topic=TOPIC, cursor=cursor, kind="cart.add", data={}, origin=None, at=0)
    return cursor, codec.encode(frame)


def sent_offsets(session: Session) -> list[int]:
    """Offsets of the events the session queued for its client, in order."""
    decoded = [_DECODER.decode(data) for data in session.take_batch()]
    return [f.cursor.offset for f in decoded if isinstance(f, frames.Event)]


def live(session: Session, epoch: str = "e1", offset: int = 5) -> Subscription:
    """A subscription that has synchronised up to ``(epoch, offset)`` and receives live events."""
    sub = session.subscriptions[TOPIC] = Subscription(TOPIC, request_id=1)
    session.synchronised(sub, epoch, offset)
    return sub


def test_the_next_offset_is_delivered_and_older_ones_are_dropped_as_covered() -> None:
    gaps = Gaps()
    session = new_session(gaps)
    live(session)
    for offset in (4, 5, 6, 6, 7):
        session.deliver(TOPIC, *event(offset))
    assert sent_offsets(session) == [6, 7]
    assert gaps.subs == []


def test_a_later_offset_is_a_hole_held_back_until_the_gap_is_filled() -> None:
    gaps = Gaps()
    session = new_session(gaps)
    sub = live(session)
    session.deliver(TOPIC, *event(8))  # 6 and 7 never arrived live
    assert sent_offsets(session) == []  # not delivered past the hole
    assert gaps.subs == [sub]
    session.deliver(TOPIC, *event(9))  # buffered while the hole is being filled
    assert sent_offsets(session) == []
    # The hub has read 6 and 7 from the stream and sent them (not modelled here): offset 7 is covered.
    session.synchronised(sub, "e1", 7)
    assert sent_offsets(session) == [8, 9]


def test_another_epoch_is_not_delivered_but_resynchronised() -> None:
    gaps = Gaps()
    session = new_session(gaps)
    sub = live(session)
    session.deliver(TOPIC, *event(6, epoch="e2"))
    assert sent_offsets(session) == []
    assert gaps.subs == [sub]


def test_events_that_arrive_during_a_snapshot_read_are_sent_after_it_once_each() -> None:
    """The snapshot covers up to offset 6; live events 5..8 arrived while it was being read (5 and 6 were
    committed before the read, 7 and 8 after). Only 7 and 8 reach the client, after the snapshot."""
    gaps = Gaps()
    session = new_session(gaps)
    sub = session.subscriptions[TOPIC] = Subscription(TOPIC, request_id=1)  # buffering from the start
    for offset in (5, 6, 7, 8):
        session.deliver(TOPIC, *event(offset))
    assert sent_offsets(session) == []
    session.synchronised(sub, "e1", 6)
    assert sent_offsets(session) == [7, 8]
    assert gaps.subs == []
