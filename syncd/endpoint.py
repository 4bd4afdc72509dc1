"""The websocket endpoint: a thin driver of :class:`~protocol.connection.ServerProtocol` over Starlette.

It moves bytes and time between the socket and the protocol object, and hands each request to the
:class:`~syncd.hub.Hub`. Three tasks per connection: the reader (receive → protocol → hub, one request at a
time, so a client's ops are applied in order and a busy client is slowed by its own backlog), the writer (the
session's send queue → socket) and the timer (heartbeat and handshake deadlines). A client's fault ends its
own connection with a close code and one log line; nothing it sends can raise into the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol import frames
from protocol.codec import Limits
from protocol.connection import CloseRequested, FrameReceived, HelloReceived, ServerProtocol
from protocol.errors import CloseCode
from syncd.auth import AuthError
from syncd.hub import Hub, now_ms
from syncd.session import Session
from syncd.transport import RAW_SEND

log = logging.getLogger("syncd.endpoint")


async def endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    settings = hub.settings
    await websocket.accept()
    origin = websocket.headers.get("origin")
    if origin is not None and origin not in settings.allowed_origins:
        log.info("refused a connection from origin %r", origin[:100])
        await websocket.close(CloseCode.FORBIDDEN_ORIGIN, "origin not allowed")
        return
    proto = ServerProtocol(
        now_ms(),
        limits=Limits(max_frame=settings.max_frame),
        heartbeat_ms=settings.heartbeat_ms,
        max_batch=settings.max_batch,
    )
    conn = _Connection(websocket, hub, proto)
    await conn.run()


class _Connection:
    def __init__(self, websocket: WebSocket, hub: Hub, proto: ServerProtocol) -> None:
        self.ws = websocket
        self.hub = hub
        self.proto = proto
        self.session: Session | None = None
        self.closing: tuple[int, str] | None = None
        self._pre_session: list[bytes] = []
        self._done = asyncio.Event()

    async def run(self) -> None:
        timer = asyncio.create_task(self._timer())
        try:
            await self._read()
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            if self.session is not None:
                self.hub.close_session(self.session)

    # -- reader -----------------------------------------------------------------------------------------

    async def _read(self) -> None:
        writer: asyncio.Task[None] | None = None
        try:
            while self.closing is None:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None:
                    self._close(CloseCode.PROTOCOL_ERROR, "frames are binary messages")
                else:
                    self.proto.receive_data(data, now_ms())
                    await self._process()
                if self.session is None and self._pre_session:  # e.g. an err frame before the hello
                    pending, self._pre_session = self._pre_session, []
                    for frame in pending:
                        await self.ws.send_bytes(frame)
                if self.session is not None and writer is None:
                    writer = asyncio.create_task(self._write(self.session))
            # Closing: before a session exists there is no writer; flush directly.
            if writer is None:
                await self._flush_and_close(self._pre_session)
        except WebSocketDisconnect:
            return
        finally:
            if writer is not None:
                if self.closing is not None and self.session is not None:
                    self.session.close(*self.closing)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer, timeout=5)
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer

    async def _process(self) -> None:
        """Act on the protocol's events (acting may produce more, e.g. a refused hello), then pass its
        outgoing bytes on, in order.
        """
        while events := self.proto.events_received():
            for event in events:
                if isinstance(event, FrameReceived):
                    await self._request(event.frame)
                elif isinstance(event, HelloReceived):
                    await self._hello(event.hello)
                elif isinstance(event, CloseRequested):
                    self._emit()
                    self._close(event.code, event.reason)
                    return
                # StatsReceived: reported to metrics by a later release
        self._emit()

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
        raw_send = self.ws.scope.get("extensions", {}).get(RAW_SEND)
        self.session = self.hub.open_session(principal, raw_send)
        self.proto.accept(session=self.hub.new_session_id(), last_seq=last_seq, now_ms=now_ms())

    async def _request(self, frame: frames.Frame) -> None:
        session = self.session
        assert session is not None  # the protocol delivers requests only once open
        self._emit()  # keep order: anything the protocol queued goes before the answers
        if isinstance(frame, frames.Op):
            await self.hub.apply(session, (frame,))
        elif isinstance(frame, frames.OpBatch):
            await self.hub.apply(session, frame.ops)
        elif isinstance(frame, frames.Subscribe):
            await self.hub.subscribe(session, frame)
        elif isinstance(frame, frames.Unsubscribe):
            self.hub.unsubscribe(session, frame)
        # frames.Error from a client: nothing to answer (never an err for an err)

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

    async def _write(self, session: Session) -> None:
        if self._pre_session:
            for data in self._pre_session:
                await self.ws.send_bytes(data)
            self._pre_session.clear()
        while True:
            batch = await session.next_batch()
            for data in batch:
                await self.ws.send_bytes(data)
            if not batch and session.close_code is not None:
                self._close(session.close_code, session.close_reason)
                with contextlib.suppress(Exception):
                    await self.ws.close(session.close_code, session.close_reason[:123])
                return

    async def _flush_and_close(self, pending: list[bytes]) -> None:
        assert self.closing is not None
        with contextlib.suppress(Exception):
            for data in pending:
                await self.ws.send_bytes(data)
            await self.ws.close(self.closing[0], self.closing[1][:123])

    async def _timer(self) -> None:
        while True:
            deadline = self.proto.next_deadline()
            delay = 1.0 if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
            await asyncio.sleep(min(delay, 1.0))
            if deadline is not None and now_ms() >= deadline:
                self.proto.handle_timer(now_ms())
                for event in self.proto.events_received():
                    if isinstance(event, CloseRequested):
                        self._emit()
                        self._close(event.code, event.reason)
                        if self.session is not None:
                            self.session.close(event.code, event.reason)
                        else:
                            await self._flush_and_close(self._pre_session)
                        return
                self._emit()
            if self.session is not None and self.session.close_code is not None:
                return
