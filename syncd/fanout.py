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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from protocol import frames
from syncd.transport import frame_header

log = logging.getLogger("syncd.fanout")


class Listener(Protocol):
    """A session's side of the fan-out. Both methods run on the event loop and must not block."""

    def deliver(self, topic: str, cursor: frames.Cursor, frame: bytes, framed: bytes) -> None: ...

    def fanout_lost(self) -> None: ...


class _EventHead(msgspec.Struct, frozen=True):
    """The two fields fan-out needs from an ``ev`` frame; msgspec skips the rest without building it."""

    topic: str
    cursor: frames.Cursor


_head = msgspec.msgpack.Decoder(_EventHead)


class Fanout:
    """Subscribes to the channels of the topics this process's sessions hold, and dispatches their events."""

    def __init__(
        self, connect: Callable[[], Any], channel: Callable[[str], str], *, retry_s: float = 0.5
    ) -> None:
        """``connect()`` makes a new ``redis.asyncio.Redis`` client; the fan-out owns and closes it."""
        self._connect = connect
        self._channel = channel
        self._retry_s = retry_s
        self._topics: dict[str, set[Listener]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._client: Any = None
        self._pubsub: Any = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="syncd-fanout")

    async def close(self) -> None:
        """Stop listening. Disconnecting first ends ``listen()`` with an error; a cancellation alone can be
        swallowed inside redis-py's read path, so it only follows."""
        self._closing = True
        task, self._task = self._task, None
        await self._drop_pubsub()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=5)

    @property
    def topics(self) -> int:
        return len(self._topics)

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
                task = asyncio.create_task(self._unsubscribe(topic))
                task.add_done_callback(_log_failure)

    async def _unsubscribe(self, topic: str) -> None:
        # A session may have joined the topic again since it was left: then keep the subscription.
        if topic not in self._topics and self._pubsub is not None:
            await self._pubsub.unsubscribe(self._channel(topic))

    async def _run(self) -> None:
        while not self._closing:
            try:
                self._client = self._connect()
                self._pubsub = self._client.pubsub()
                # A subscribe-less pub/sub connection would end listen() at once: hold one channel always.
                await self._pubsub.subscribe("syncd:fanout", *(self._channel(t) for t in self._topics))
                self._ready.set()
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the connection means the same
                if self._closing:
                    return
                log.warning("fan-out connection lost: %s; sessions will resume from their cursors", exc)
            self._ready.clear()
            await self._drop_pubsub()
            self._lose_all()
            await asyncio.sleep(self._retry_s)

    async def _listen(self) -> None:
        channel_prefix = self._channel("")
        async for message in self._pubsub.listen():
            kind = message["type"]
            name = message["channel"]
            name = name.decode() if isinstance(name, bytes) else name
            if kind == "message":
                self._dispatch(message["data"])
            elif kind == "subscribe" and name.startswith(channel_prefix):
                waiter = self._confirmed.pop(name[len(channel_prefix) :], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    def _dispatch(self, data: bytes) -> None:
        try:
            head = _head.decode(data)
        except msgspec.MsgspecError:
            log.error("dropping an undecodable event on the fan-out channel (%d bytes)", len(data))
            return
        listeners = self._topics.get(head.topic)
        if not listeners:
            return
        framed = frame_header(len(data)) + data  # the websocket frame, identical for every listener
        for listener in tuple(listeners):
            listener.deliver(head.topic, head.cursor, data, framed)

    def _lose_all(self) -> None:
        """Tell every listener its stream may have a hole; they reconnect and resume from their cursors."""
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
        log.warning("unsubscribe failed: %s", task.exception())
