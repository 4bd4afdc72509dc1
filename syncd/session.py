"""One client connection's state on the hub: its identity, its subscriptions and its send queue.

Everything sent to a client — acks, snapshots, events, errors — is either written to the socket at once, when
nothing is queued or being written and the transport accepts more (the common case: no task, no coroutine per
frame), or goes through one bounded queue drained by one writer. Frames so leave in the order they were
produced, and a slow client costs the hub memory up to the bound only — a bound in bytes, as one frame may
be a 1 MiB snapshot page or a 20-byte ack: past it the session is closed with ``SLOW_CONSUMER`` (4001,
"reconnect later") and its client resumes from its cursors. A client that takes nothing for a heartbeat
interval is closed the same way (:attr:`Session.writing_since` says since when a write waits), so a silent
non-reader does not hold its bytes until the bound. Fan-out never waits on a client.

A subscription remembers the last offset delivered. Live events are checked against it: an old offset is a
duplicate and dropped, the next offset is delivered, a later one reveals a hole and the session catches up
from the stream before delivering more. While a subscription is being (re)synchronised — snapshot or history
being read — live events are buffered and replayed once the read is done, so nothing falls between the two.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Final

from protocol import frames
from protocol.errors import CloseCode
from syncd.auth import Principal
from syncd.fanout import EventRun
from syncd.transport import frame_header


def _nothing() -> None:
    pass


MAX_BUFFERED: Final = 10_000
"""Live events held for one subscription while it synchronises; beyond it the session reconnects."""


@dataclasses.dataclass(slots=True)
class Subscription:
    topic: str
    request_id: int
    epoch: str = ""
    offset: int = 0
    buffer: list[tuple[frames.Cursor, bytes]] | None = dataclasses.field(default_factory=list)
    """Not ``None`` while synchronising: live events that arrived meanwhile."""


@dataclasses.dataclass(slots=True)
class RateLimit:
    """A token bucket: ``rate`` ops per second on average, bursts of ``burst``; time is passed in (ms)."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp_ms: int = 0

    def take(self, now_ms: int, n: int = 1) -> tuple[int, int | None]:
        """Take up to ``n`` tokens: ``(granted, None)`` when all were, else ``(granted, retry_after_ms)``
        — the milliseconds after which the next one will be there."""
        if self.tokens < 0:
            self.tokens, self.stamp_ms = self.burst, now_ms
        self.tokens = min(self.burst, self.tokens + (now_ms - self.stamp_ms) * self.rate / 1000)
        self.stamp_ms = now_ms
        granted = min(n, int(self.tokens))
        self.tokens -= granted
        if granted == n:
            return granted, None
        return granted, max(1, int((1 - self.tokens) * 1000 / self.rate) + 1)


class Session:
    """State of one connection. Methods called by fan-out never block and never raise."""

    def __init__(
        self,
        principal: Principal,
        *,
        max_queue_bytes: int,
        rate: RateLimit,
        on_gap: Callable[[Session, Subscription], None],
    ) -> None:
        self.principal = principal
        self.subscriptions: dict[str, Subscription] = {}
        self.known_last: int | None = None
        """The client's watermark as this connection last saw it settled (lets fresh ops skip a check)."""
        self.rate = rate
        self._on_gap = on_gap
        # A list and a lazily made Event, not a deque and an Event: each of those allocates a block of its
        # own, and thousands of idle connections pay for it (benchmarks `conns`).
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._max_queue_bytes = max_queue_bytes
        self._room: asyncio.Event | None = None
        self.on_ready: Callable[[], None] = _nothing
        """Called when there is something to write (or a close to perform) and no batch is being written:
        the connection then starts its writer, so an idle connection holds no writer task."""
        self._writing = False
        self.writing_since: float | None = None
        """When the batch being written was taken (``time.monotonic()``), while one is being written."""
        self.raw_send: Callable[[bytes], bool] | None = None
        """The transport's fast path (:data:`syncd.transport.RAW_SEND`), when the server offers it."""
        self.close_code: int | None = None
        self.close_reason = ""
        self.clock_offset_ms = 0
        """The hub's clock minus the client's, as its hello showed (dates the client's ops for the log)."""

    # -- the send queue --------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one encoded frame: written at once when nothing is queued or being written (an ack to a
        device that waits for it, typically), else queued for the writer; a session whose client does not
        keep up is ended."""
        self._send(data, None)

    def _send(self, data: bytes, framed: bytes | None) -> None:
        if self.close_code is not None:
            return
        raw_send = self.raw_send
        if raw_send is None or self._queue or self._writing:
            self._enqueue(data)  # frames ahead of this one, or no fast path: the writer sends it in turn
        elif not raw_send(framed if framed is not None else frame_header(len(data)) + data):
            self._enqueue(data)  # the transport is paused or closing

    def _enqueue(self, data: bytes) -> None:
        if self._queued_bytes >= self._max_queue_bytes:
            self.close(CloseCode.SLOW_CONSUMER, "send queue overflow")
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        if not self._writing:
            self.on_ready()

    def close(self, code: int, reason: str = "") -> None:
        """Ask the writer to flush what is queued, then close the websocket with ``code``."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self._made_room()
            self.on_ready()

    def send_event(self, data: bytes, framed: bytes) -> None:
        """Queue an event, or write its pre-framed bytes at once when nothing is queued or being written
        (so frames still leave in order)."""
        self._send(data, framed)

    def take_batch(self) -> list[bytes]:
        """Everything queued, for the writer; ``[]`` when nothing is (then a closing session is closed).

        Until :meth:`batch_sent`, the session knows a write is in flight and keeps later frames behind it.
        """
        if self.close_code == CloseCode.SLOW_CONSUMER:
            self._queue.clear()  # what it could not take, it will fetch again from its cursors
        batch, self._queue = self._queue, []
        self._queued_bytes = 0
        self._made_room()
        self._writing = bool(batch)
        self.writing_since = time.monotonic() if batch else None
        return batch

    def _made_room(self) -> None:
        if self._room is not None:
            self._room.set()

    def batch_sent(self) -> None:
        self._writing = False
        self.writing_since = None

    async def room(self) -> None:
        """Wait until at most half the send queue is in use, or the session is closing.

        For bulk sends (a resume replaying its missed events): queued in one go, a backlog longer than the
        queue would trip the slow-consumer bound however fast the client reads, and its client, resuming
        again from the same cursor, would be cut off again, forever. Paced by the writer instead, it costs
        at most the queue's bound; a client that stops reading stalls the replay until it is closed (by the
        live events that keep overflowing its queue or buffer, or by its heartbeat).
        """
        while self._queued_bytes > self._max_queue_bytes // 2 and self.close_code is None:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    # -- subscriptions ------------------------------------------------------------------------------------

    def deliver(self, topic: str, cursor: frames.Cursor, frame: bytes, framed: bytes | None = None) -> None:
        sub = self.subscriptions.get(topic)
        if sub is None:
            return
        if sub.buffer is not None:
            if len(sub.buffer) >= MAX_BUFFERED:
                self.close(CloseCode.SLOW_CONSUMER, "too many events while synchronising")
            else:
                sub.buffer.append((cursor, frame))
            return
        if cursor.epoch != sub.epoch or cursor.offset > sub.offset + 1:
            # A hole, or the topic's history was rebuilt: synchronise before delivering more.
            sub.buffer = [(cursor, frame)]
            self._on_gap(self, sub)
        elif cursor.offset == sub.offset + 1:
            sub.offset = cursor.offset
            if framed is None:
                self.send(frame)
            else:
                self.send_event(frame, framed)
        # else: an offset already delivered (snapshot or history covered it)

    def deliver_run(self, topic: str, run: EventRun) -> None:
        """Several consecutive events at once (:class:`~syncd.fanout.EventRun`): one write of all their
        frames when the subscription expects exactly the run's first offset and nothing is queued; else each
        event by the rules of :meth:`deliver`."""
        sub = self.subscriptions.get(topic)
        if sub is None:
            return
        if sub.buffer is None and run.first == sub.offset + 1 and run.epoch == sub.epoch:
            if self.close_code is not None:
                return
            sub.offset = run.last
            raw_send = self.raw_send
            if raw_send is None or self._queue or self._writing or not raw_send(run.framed):
                for _, frame, _ in run.events:
                    self._enqueue(frame)
                    if self.close_code is not None:
                        return
            return
        for cursor, frame, framed in run.events:
            self.deliver(topic, cursor, frame, framed)

    def resynchronise(self, sub: Subscription) -> None:
        """Check ``sub`` against the stream now, as if a live event had shown a hole: its shard may have a new
        history (syncd/generations.py). A subscription already synchronising is left to finish."""
        if sub.buffer is None and sub.epoch:
            sub.buffer = []
            self._on_gap(self, sub)

    def synchronised(self, sub: Subscription, epoch: str, offset: int) -> None:
        """The snapshot/history up to ``(epoch, offset)`` is queued: replay the buffered live events."""
        buffered, sub.buffer = sub.buffer or [], None
        sub.epoch, sub.offset = epoch, offset
        for cursor, frame in buffered:
            self.deliver(sub.topic, cursor, frame)

    def fanout_lost(self) -> None:
        self.close(CloseCode.BACKEND_UNAVAILABLE, "hub lost its event stream; resume from your cursors")
