"""The websocket endpoint: a thin driver of :class:`~protocol.connection.ServerProtocol` over Starlette.

It moves bytes and time between the socket and the protocol object, and hands each request to the
:class:`~syncd.hub.Hub`. Three tasks per connection: the reader (receive → protocol → hub, one request at a
time, so a client's ops are applied in order and a busy client is slowed by its own backlog), the writer (the
session's send queue → socket) and the timer (heartbeat and handshake deadlines). A client's fault ends its
own connection with a close code and one log line; nothing it sends can raise into the event loop.

The work a connection causes is charged to its :class:`~syncd.pacing.Pacer` (the transport's, shared through
:data:`~syncd.transport.PACER`): decoding each frame as measured, each op at :data:`~syncd.pacing.OP_COST_S`.
A connection over its share waits before its next frame is read or its next ops are applied, so a flood
slows its sender, not the hub. Connections are admitted under the caps of :mod:`syncd.admission`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol import codec, frames
from protocol.codec import Limits
from protocol.connection import (
    CloseRequested,
    FrameReceived,
    HelloReceived,
    Refused,
    ServerProtocol,
    StatsReceived,
)
from protocol.errors import CloseCode
from syncd.auth import AuthError
from syncd.hub import Hub, now_ms
from syncd.pacing import OP_COST_S, Pacer
from syncd.session import Session
from syncd.transport import CLOSE_GRACE_S, PACER, RAW_SEND

log = logging.getLogger("syncd.endpoint")


async def endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    settings = hub.settings
    await websocket.accept()
    origin = websocket.headers.get("origin")
    if not settings.origin_allowed(origin):
        log.info("refused a connection from origin %r", (origin or "")[:100])
        await websocket.close(CloseCode.FORBIDDEN_ORIGIN, "origin not allowed")
        return
    address = websocket.client.host if websocket.client is not None else ""
    if not hub.admission.enter_pending(address):
        log.debug("refused a connection: too many awaiting hello from %s", address)
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "too many connections awaiting hello")
        return
    proto = ServerProtocol(
        now_ms(),
        limits=Limits(max_frame=settings.max_frame),
        heartbeat_ms=settings.heartbeat_ms,
        handshake_timeout_ms=settings.handshake_timeout_ms,
        max_batch=settings.max_batch,
    )
    conn = _Connection(websocket, hub, proto, address)
    await conn.run()


MAX_WAITING = 64
"""Request frames queued on one connection before the reader stops reading (back-pressure on the client)."""
ABNORMAL_CLOSE = 1006
"""What a connection that ended without a close frame is logged and counted as (RFC 6455 §7.1.5)."""
COALESCE_MAX = 1024
"""Ops from consecutive waiting frames applied as one store batch."""


class _Connection:
    """One websocket: the reader (this ASGI task), a worker that serves requests in order, the session's
    writer, and a tick from the hub's shared ticker (heartbeats, handshake timeout, token expiry)."""

    def __init__(self, websocket: WebSocket, hub: Hub, proto: ServerProtocol, address: str) -> None:
        self.ws = websocket
        self.hub = hub
        self.proto = proto
        self.pacer: Pacer = websocket.scope.get("extensions", {}).get(PACER) or Pacer()
        self._pending_address: str | None = address
        """Counted by the admission caps until the hello is accepted."""
        self._forcing = False
        self.session: Session | None = None
        self.closing: tuple[int, str] | None = None
        self._pre_session: list[bytes] = []
        self._requests: list[frames.Frame | Refused] = []  # at most MAX_WAITING: cheaper than a deque
        self._room: asyncio.Event | None = None  # made when the reader first has to wait
        self._worker: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._peer_code = ABNORMAL_CLOSE
        """The close code the client sent, when it closed first (for the log and metrics)."""

    async def run(self) -> None:
        self.hub.ticker.add(self)
        try:
            await self._read()
        finally:
            self.hub.ticker.discard(self)
            if self._worker is not None:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
            if self._pending_address is not None:
                self.hub.admission.leave_pending(self._pending_address)
            if self.session is not None:
                code = self.session.close_code or (self.closing[0] if self.closing else self._peer_code)
                self.hub.close_session(self.session, code)
                self.hub.admission.close_client(self.session.principal.client_id)

    # -- reader -----------------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while self.closing is None:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    self._peer_code = message.get("code", ABNORMAL_CLOSE)
                    return
                data = message.get("bytes")
                if data is None:
                    self._close(CloseCode.PROTOCOL_ERROR, "frames are binary messages")
                else:
                    started = self.pacer.start_turn()
                    self.proto.receive_data(data, now_ms())
                    self.pacer.charge(started, frames=1)
                    await self._process()
                    await self._pace()
                if self.session is None and self._pre_session:  # e.g. an err frame before the hello
                    pending, self._pre_session = self._pre_session, []
                    for frame in pending:
                        await self.ws.send_bytes(frame)
                while len(self._requests) >= MAX_WAITING and self.closing is None:
                    if self._room is None:
                        self._room = asyncio.Event()
                    self._room.clear()
                    await self._room.wait()
            # Closing: before a session exists there is no writer; flush directly.
            if self.session is None:
                await self._flush_and_close(self._pre_session)
        except WebSocketDisconnect as exc:
            self._peer_code = exc.code
            return
        finally:
            if self.session is not None and self.closing is not None:
                self.session.close(*self.closing)  # the writer flushes, then closes the websocket
                writer = self._writer
                if writer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(writer), timeout=5)
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._writer

    async def _pace(self) -> None:
        """Wait while this connection is over its share of the hub's time."""
        delay = self.pacer.delay()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _process(self) -> None:
        """Act on the protocol's events (acting may produce more, e.g. a refused hello), then pass its
        outgoing bytes on, in order.
        """
        while events := self.proto.events_received():
            for event in events:
                if isinstance(event, FrameReceived | Refused):
                    self._emit()  # keep order: anything the protocol queued goes before the answers
                    self._enqueue(event.frame if isinstance(event, FrameReceived) else event)
                elif isinstance(event, HelloReceived):
                    await self._hello(event.hello)
                elif isinstance(event, CloseRequested):
                    self._emit()
                    self._close(event.code, event.reason)
                    return
                elif isinstance(event, StatsReceived) and self.session is not None:
                    self.hub.telemetry.received(self.session.principal, event.stats)
        self._emit()

    # -- worker: requests in arrival order, waiting ops coalesced ------------------------------------------

    def _made_room(self) -> None:
        if self._room is not None:
            self._room.set()

    def _enqueue(self, frame: frames.Frame | Refused) -> None:
        if isinstance(frame, frames.Error):
            return  # an err from a client needs no answer (never an err for an err)
        self._requests.append(frame)
        if self._worker is None:
            self._worker = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        """Serve waiting requests in order; exits when none is left (a connection costs no task at rest).

        Consecutive op frames are applied as one batch: under load a device's ops then share Redis
        pipelines instead of paying two round trips each, and a reply still answers each op in order.
        """
        session = self.session
        assert session is not None  # the protocol delivers requests only once open
        try:
            while self._requests and session.close_code is None:
                frame = self._requests.pop(0)
                if isinstance(frame, frames.Op | frames.OpBatch):
                    ops = _ops_of(frame)
                    while self._requests and len(ops) < COALESCE_MAX:
                        following = self._requests[0]
                        if not isinstance(following, frames.Op | frames.OpBatch):
                            break
                        self._requests.pop(0)
                        ops.extend(_ops_of(following))
                    self._made_room()
                    await self.hub.apply(session, ops)
                    self.pacer.charge_cost(len(ops) * OP_COST_S)
                    await self._pace()
                elif isinstance(frame, frames.Subscribe):
                    self._made_room()
                    await self.hub.subscribe(session, frame)
                elif isinstance(frame, frames.Unsubscribe):
                    self.hub.unsubscribe(session, frame)
                elif isinstance(frame, Refused):  # after the replies to the requests before it (§7.2)
                    if frame.error.about == frames.ABOUT_OP:
                        self.hub.refused(session.principal, frame.error.code, frame.error.ref or 0)
                    session.send(codec.encode(frame.error))
                self._made_room()
        except Exception:
            # A bug or a failure nobody mapped: the session's state is unknown (a subscription half set up,
            # ops neither acked nor refused). Left open, the connection would keep answering heartbeats and
            # serve nothing; closed with 1011, its client reconnects, resumes from its cursors and resends
            # its outbox (same seqs: safe).
            log.exception("serving client %s failed; closing its connection", session.principal.client_id)
            session.close(CloseCode.INTERNAL_ERROR, "internal error; reconnect")
        finally:
            self._worker = None
            self._made_room()

    async def _hello(self, hello: frames.Hello) -> None:
        try:
            principal = self.hub.authenticate(hello)
            last_seq = await self.hub.store.last_seq(principal.client_id)
        except AuthError as exc:
            log.info("refused client %s: %s", hello.client_id, exc.reason)
            self.proto.refuse(exc.close_code, exc.reason)
            return
        except Exception as exc:
            log.warning("handshake of %s failed: %s", hello.client_id, exc)
            self.proto.refuse(CloseCode.BACKEND_UNAVAILABLE, "hub cannot reach its store")
            return
        if not self.hub.admission.open_client(principal.client_id):
            log.info("refused client %s: it has too many connections", principal.client_id)
            self.proto.refuse(CloseCode.TRY_AGAIN_LATER, "too many connections for this client_id")
            return
        if self._pending_address is not None:
            self.hub.admission.leave_pending(self._pending_address)
            self._pending_address = None
        raw_send = self.ws.scope.get("extensions", {}).get(RAW_SEND)
        self.session = self.hub.open_session(principal, last_seq, raw_send, hello)
        self.session.on_ready = self._start_writer
        for data in self._pre_session:  # anything refused before the hello goes first
            self.session.send(data)
        self._pre_session.clear()
        self.proto.accept(session=self.hub.new_session_id(), last_seq=last_seq, now_ms=now_ms())

    def _emit(self) -> None:
        for data in self.proto.data_to_send():
            if self.session is not None:
                self.session.send(data)
            else:
                self._pre_session.append(data)

    def _close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            if code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                log.info("closing a connection: %d %s", code, reason)

    # -- writer and timer ---------------------------------------------------------------------------------

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        """Write what the session queued, then end: the next frame starts a new writer (no idle task)."""
        session = self.session
        assert session is not None
        try:
            while batch := session.take_batch():
                for data in batch:
                    await self.ws.send_bytes(data)
                session.batch_sent()
            if session.close_code is not None:
                self._close(session.close_code, session.close_reason)
                with contextlib.suppress(Exception):
                    await self.ws.close(session.close_code, session.close_reason[:123])
        finally:
            self._writer = None

    async def _flush_and_close(self, pending: list[bytes]) -> None:
        """Send what is pending, for as long as the peer reads it, then close (never waiting for a drain)."""
        assert self.closing is not None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_GRACE_S):
                for data in pending:
                    await self.ws.send_bytes(data)
        with contextlib.suppress(Exception):
            await self.ws.close(self.closing[0], self.closing[1][:123])

    async def _force_close(self, code: int, reason: str) -> None:
        """Close a session whose writer is stuck on a peer that does not read: the queue is abandoned."""
        self._close(code, reason)
        writer = self._writer
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:123])

    def _check_writer(self, session: Session) -> None:
        """A client that takes nothing for a heartbeat interval is a slow consumer (4001), as is one whose
        queue overflowed; either way, a writer stuck on it must not keep the connection (and its memory)."""
        since = session.writing_since
        if since is None or self._forcing:
            return
        stuck_s = time.monotonic() - since
        if session.close_code is None and stuck_s * 1000 > self.hub.settings.heartbeat_ms:
            log.info("closing the session of %s: it reads nothing", session.principal.client_id)
            session.close(CloseCode.SLOW_CONSUMER, "client does not read")
        if session.close_code is not None and stuck_s > CLOSE_GRACE_S:
            self._forcing = True
            self.hub.spawn(self._force_close(session.close_code, session.close_reason))

    def tick(self, now: int) -> None:
        """Called by the hub's ticker about once a second: protocol deadlines and token expiry."""
        deadline = self.proto.next_deadline()
        if deadline is not None and now >= deadline:
            self.proto.handle_timer(now)
            for event in self.proto.events_received():
                if isinstance(event, CloseRequested):
                    self._emit()
                    self._close(event.code, event.reason)
                    if self.session is not None:
                        self.session.close(event.code, event.reason)
                    else:
                        self.hub.spawn(self._flush_and_close(self._pre_session))
                    return
            self._emit()
        session = self.session
        if session is not None:
            self._check_writer(session)
        expires_ms = (session.principal.expires_at + self.hub.verifier.leeway_s) * 1000 if session else 0
        if session is not None and session.close_code is None and now >= expires_ms:  # the handshake's leeway
            log.info("closing the session of %s: its token expired", session.principal.client_id)
            session.close(CloseCode.TOKEN_EXPIRED, "token expired")


def _ops_of(frame: frames.Op | frames.OpBatch) -> list[frames.Op]:
    return [frame] if isinstance(frame, frames.Op) else list(frame.ops)
