"""Fan-out: one Redis pub/sub connection per hub process, shared by every session it serves.

Every op script appends its event to the topic's stream *and* publishes the same encoded ``ev`` frame on the
topic's channel (:func:`syncd.store.redis_store.channel`). The stream is the record; pub/sub is the fast
path that brings a change applied through any hub process to the sessions of every other one. A hub
subscribes to a channel while at least one of its sessions holds the topic, and hands each message's bytes,
unchanged, to those sessions: an event is encoded once, by the script, whatever the number of subscribers.

Gap-freeness does not rest on pub/sub. :meth:`Fanout.join` returns only once Redis has confirmed the
subscription, so a snapshot or history read taken *after* it cannot miss an event: anything committed later
is published to us (docs/traps.md §7). Each session checks offsets itself and fetches any hole from the
stream.
When the pub/sub connection drops, messages may have been lost in between: every listener is told
(:meth:`Listener.fanout_lost`) and ends its session with a "reconnect" close code, so its client resumes from
its cursors — the one recovery path that is exercised anyway by every reconnect.

While Redis is away the fan-out reconnects with jittered exponential backoff (:func:`retry_delays`: a
uniform draw in the upper half of ``min(max, initial × 2^attempt)``, so hub processes do not knock in step
and an outage costs Redis a handful of connection attempts, not two a second per hub). It logs the loss
once (WARNING) and the return once (INFO, with the attempts and the time it took); each attempt in between is
a DEBUG line and a count in :attr:`Fanout.stats`, which ``/healthz`` shows.

Control channels (:meth:`Fanout.control`) carry hub-to-hub messages on the same connection, e.g. revocations
(:mod:`syncd.revocation`): their handler gets each message, and their ``on_subscribed`` runs each time Redis
confirms the subscription, so the receiver can re-read what it may have missed while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Final, Protocol

import msgspec

from protocol import frames
from syncd.transport import frame_header

log = logging.getLogger("syncd.fanout")


class Listener(Protocol):
    """A session's side of the fan-out. Both methods run on the event loop and must not block.

    A listener may also have ``deliver_run(topic, run: EventRun)``: then a run of several events is handed to
    it at once (:class:`EventRun`); without it, each event of the run goes to ``deliver`` in order."""

    def deliver(self, topic: str, cursor: frames.Cursor, frame: bytes, framed: bytes) -> None: ...

    def fanout_lost(self) -> None: ...


MAX_RUN_BYTES: Final = 16 * 1024
"""The most framed bytes joined into one run: what one write may add to a connection's transport buffer
past its flow-control check (a single event larger than this is a run of its own)."""


class EventRun:
    """Consecutive events of one topic (same epoch, offsets following each other) that reached this hub
    together, with their websocket frames joined once: ``framed`` is written to every subscriber that
    expects offset :attr:`first` with one write, however many subscribers and events there are."""

    __slots__ = ("epoch", "events", "first", "framed", "last")

    def __init__(self, events: list[tuple[frames.Cursor, bytes, bytes]]) -> None:
        self.events = events
        """``(cursor, frame, framed)`` of each event, in order."""
        self.epoch = events[0][0].epoch
        self.first = events[0][0].offset
        self.last = events[-1][0].offset
        self.framed = events[0][2] if len(events) == 1 else b"".join([framed for _, _, framed in events])


def runs_of(events: list[tuple[frames.Cursor, bytes]], max_bytes: int = MAX_RUN_BYTES) -> list[EventRun]:
    """``events`` of one topic, in arrival order, cut into runs: a run ends where the next event is not the
    next offset of the same epoch, or where it would pass ``max_bytes`` of frames."""
    runs: list[EventRun] = []
    current: list[tuple[frames.Cursor, bytes, bytes]] = []
    size = 0
    for cursor, frame in events:
        framed = frame_header(len(frame)) + frame
        if current:
            last = current[-1][0]
            if (
                cursor.epoch != last.epoch
                or cursor.offset != last.offset + 1
                or size + len(framed) > max_bytes
            ):
                runs.append(EventRun(current))
                current, size = [], 0
        current.append((cursor, frame, framed))
        size += len(framed)
    if current:
        runs.append(EventRun(current))
    return runs


class _EventHead(msgspec.Struct, frozen=True):
    """The two fields fan-out needs from an ``ev`` frame; msgspec skips the rest without building it."""

    topic: str
    cursor: frames.Cursor


_head = msgspec.msgpack.Decoder(_EventHead)

HOLD_CHANNEL: Final = "syncd:fanout"
"""Held always: a subscribe-less pub/sub connection would end ``listen()`` at once."""
RETRY_INITIAL_S: Final = 0.5
RETRY_MAX_S: Final = 10.0
"""A hub notices Redis' return within this (plus a connect): long enough to spare a recovering Redis, short
enough that its clients, who were sent away with 4003 and reconnect with their own backoff, find it ready."""


def retry_delays(
    initial_s: float = RETRY_INITIAL_S, max_s: float = RETRY_MAX_S, rng: random.Random | None = None
) -> Iterator[float]:
    """Delays before reconnect attempts 1, 2, …: uniform in ``[c/2, c]`` with ``c = min(max_s, initial_s ×
    2^n)``. Equal jitter rather than full: a server's reconnect must not spin at zero delay either."""
    draw = rng.uniform if rng is not None else random.uniform
    ceiling = initial_s
    while True:
        yield draw(ceiling / 2, ceiling)
        ceiling = min(max_s, ceiling * 2)


@dataclasses.dataclass(slots=True)
class FanoutStats:
    """What the fan-out's connection went through; counters only grow (metrics export them as such)."""

    connected: bool = False
    outages: int = 0
    """Times the connection was lost (or could not be made at start)."""
    reconnect_attempts: int = 0
    """Connection attempts that failed, over all outages."""
    down_since: float | None = None
    """``time.time()`` when the current outage began; ``None`` while connected."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class _Control:
    on_message: Callable[[bytes], None]
    on_subscribed: Callable[[], Coroutine[Any, Any, None]] | None


class Fanout:
    """Subscribes to the channels of the topics this process's sessions hold, and dispatches their events."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: Callable[[str], str],
        *,
        retry_delays: Callable[[], Iterator[float]] = retry_delays,
    ) -> None:
        """``connect()`` makes a new ``redis.asyncio.Redis`` client; the fan-out owns and closes it."""
        self._connect = connect
        self._channel = channel
        self._retry_delays = retry_delays
        self._controls: dict[str, _Control] = {}
        self._control_tasks: set[asyncio.Task[None]] = set()
        self.stats = FanoutStats()
        self._topics: dict[str, set[Listener]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._client: Any = None
        self._pubsub: Any = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: dict[str, list[tuple[frames.Cursor, bytes]]] = {}
        """Events read but not yet handed out, by topic: handed out together once the read is done."""
        self._flush_handle: asyncio.Handle | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="syncd-fanout")

    async def close(self) -> None:
        """Stop listening. Disconnecting first ends ``listen()`` with an error; a cancellation alone can be
        swallowed inside redis-py's read path, so it only follows."""
        self._closing = True
        if self._flush_handle is not None:  # events read but not handed out: nobody is listening any more
            self._flush_handle.cancel()
            self._flush_handle = None
        task, self._task = self._task, None
        await self._drop_pubsub()
        for control_task in list(self._control_tasks):
            control_task.cancel()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=5)

    @property
    def topics(self) -> int:
        return len(self._topics)

    def listeners(self) -> Iterator[tuple[str, int]]:
        """Each topic this process subscribes to and how many of its sessions listen (the stock panel)."""
        return ((topic, len(listeners)) for topic, listeners in self._topics.items())

    def control(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Hold ``channel`` on every connection: ``on_message(data)`` for each message, ``on_subscribed()``
        (a coroutine, failures logged) each time Redis confirms the subscription. Call before ``start``."""
        self._controls[channel] = _Control(on_message, on_subscribed)

    async def join(self, topic: str, listener: Listener) -> None:
        """Add ``listener`` to ``topic``; return once events of ``topic`` committed from now on reach it."""
        listeners = self._topics.get(topic)
        if listeners is None:
            listeners = self._topics[topic] = set()
            self._confirmed[topic] = asyncio.get_running_loop().create_future()
            if self._ready.is_set():
                # (Otherwise the connection is being made, and _run subscribes to every topic held.)
                await self._pubsub.subscribe(self._channel(topic))
        listeners.add(listener)
        confirmed = self._confirmed.get(topic)
        if confirmed is not None and not confirmed.done():
            await asyncio.shield(confirmed)

    def leave(self, topic: str, listener: Listener) -> None:
        listeners = self._topics.get(topic)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._topics[topic]
            self._confirmed.pop(topic, None)
            if self._ready.is_set():
                task = asyncio.create_task(self._unsubscribe(topic), name="unsubscribe")
                task.add_done_callback(_log_failure)

    async def _unsubscribe(self, topic: str) -> None:
        # A session may have joined the topic again since it was left: then keep the subscription.
        if topic not in self._topics and self._pubsub is not None:
            await self._pubsub.unsubscribe(self._channel(topic))

    async def _run(self) -> None:
        delays: Iterator[float] | None = None
        while not self._closing:
            try:
                self._client = self._connect()
                self._pubsub = self._client.pubsub()
                held = set(self._topics)
                await self._pubsub.subscribe(HOLD_CHANNEL, *self._controls, *map(self._channel, held))
                self._ready.set()  # from now on, join subscribes its topic itself
                late = [self._channel(t) for t in self._topics if t not in held]
                if late:  # joined during the SUBSCRIBE above: nobody else will (docs/traps.md §19)
                    await self._pubsub.subscribe(*late)
                self._connected()
                delays = None
                await self._listen()
                error = "the connection ended"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the connection means the same
                if self._closing:
                    return
                error = str(exc) or type(exc).__name__
            self._ready.clear()
            await self._drop_pubsub()
            self._lose_all()
            self._lost(error)
            if delays is None:
                delays = self._retry_delays()
            await asyncio.sleep(next(delays))

    def _connected(self) -> None:
        stats = self.stats
        if stats.down_since is not None:
            log.info(
                "fan-out connection restored after %d attempt(s) in %.1f s",
                stats.reconnect_attempts,
                time.time() - stats.down_since,
            )
        stats.connected, stats.down_since = True, None

    def _lost(self, error: str) -> None:
        stats = self.stats
        if stats.connected or stats.down_since is None:
            stats.outages += 1
            stats.down_since = time.time()
            log.warning("fan-out connection lost: %s; sessions will resume from their cursors", error)
        else:
            stats.reconnect_attempts += 1
            log.debug("fan-out reconnect attempt failed: %s", error)
        stats.connected = False

    async def _listen(self) -> None:
        channel_prefix = self._channel("")
        controls = self._controls
        async for message in self._pubsub.listen():
            kind = message["type"]
            name = message["channel"]
            name = name.decode() if isinstance(name, bytes) else name
            if kind == "message":
                control = controls.get(name)
                if control is None:
                    self._dispatch(message["data"])
                else:
                    control.on_message(message["data"])
            elif kind == "subscribe" and name.startswith(channel_prefix):
                waiter = self._confirmed.pop(name[len(channel_prefix) :], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif kind == "subscribe" and name in controls:
                on_subscribed = controls[name].on_subscribed
                if on_subscribed is not None:
                    task = asyncio.create_task(on_subscribed(), name=f"refresh of {name}")
                    self._control_tasks.add(task)
                    task.add_done_callback(self._control_tasks.discard)
                    task.add_done_callback(_log_failure)

    def _dispatch(self, data: bytes) -> None:
        """Hold the event until every message already read has been (:meth:`_flush`, soon after): events
        that arrive together then leave together, one write per subscriber for the lot."""
        try:
            head = _head.decode(data)
        except msgspec.MsgspecError:
            log.error("dropping an undecodable event on the fan-out channel (%d bytes)", len(data))
            return
        if head.topic not in self._topics:
            return
        pending = self._pending.get(head.topic)
        if pending is None:
            self._pending[head.topic] = [(head.cursor, data)]
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        else:
            pending.append((head.cursor, data))

    def _flush(self) -> None:
        """Hand every pending event to the listeners of its topic: the bytes of each event (and of each run of
        events) are framed once, whatever the number of listeners."""
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        for topic, events in pending.items():
            listeners = self._topics.get(topic)
            if not listeners:
                continue
            if len(events) == 1:
                cursor, data = events[0]
                framed = frame_header(len(data)) + data  # the websocket frame, identical for every listener
                for listener in tuple(listeners):
                    listener.deliver(topic, cursor, data, framed)
                continue
            for run in runs_of(events):
                for listener in tuple(listeners):
                    deliver_run = getattr(listener, "deliver_run", None)
                    if deliver_run is not None:
                        deliver_run(topic, run)
                    else:
                        for cursor, data, framed in run.events:
                            listener.deliver(topic, cursor, data, framed)

    def _lose_all(self) -> None:
        """Tell every listener its stream may have a hole; they reconnect and resume from their cursors."""
        if self._flush_handle is not None:  # what was read before the loss goes first
            self._flush_handle.cancel()
            self._flush()
        for topic, listeners in list(self._topics.items()):
            for listener in tuple(listeners):
                listener.fanout_lost()
            waiter = self._confirmed.get(topic)
            if waiter is None or waiter.done():
                self._confirmed[topic] = asyncio.get_running_loop().create_future()

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        with contextlib.suppress(Exception):
            if pubsub is not None:
                await pubsub.aclose()
        with contextlib.suppress(Exception):
            if client is not None:
                await client.aclose()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("fan-out %s failed: %s", task.get_name(), task.exception())
