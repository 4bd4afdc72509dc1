"""The hub's websocket transport: uvicorn's sans-I/O websockets protocol plus one ASGI extension.

Fan-out writes the same event to many sockets. Through ASGI each write is a coroutine per connection that
frames the payload again (docs/traps.md §16: that path saturates near a third of what a broadcast can do).
Server frames are not masked and syncd sends no compressed or fragmented messages, so the bytes of one event's
websocket frame are identical for every connection: :func:`frame_header` builds them once, and the extension
``syncd.raw_send`` lets a session write them straight to its transport — no coroutine, no copy per socket.

The extension declines (returns ``False``) when the connection is not open or its transport is paused by
flow control; the session then falls back to its queue and the ordinary ASGI send, which waits for the
transport to drain. Where the server is not this protocol (Starlette's TestClient, another ASGI server) the
extension is absent and every frame takes the ordinary path.

Fairness and bounds (one connection must not starve the others, docs/traps.md §20). uvicorn's protocol
parses everything a read returned (up to 256 KiB) in one go and answers every ping at once, whatever the
peer reads. Here:

- received bytes wait in a small inbox and are parsed :data:`READ_CHUNK` at a time, in turns paced by the
  connection's :class:`~syncd.pacing.Pacer` (also offered to the endpoint as :data:`PACER`, which charges the
  decoding and serving of frames to it); every frame, control frames included, costs at least a minimum;
- reading pauses while a message waits for the application (once more bytes arrived behind it), while the
  inbox is full, and while outgoing data is above the transport's high-water mark: a peer that sends pings
  and never reads the pongs stops being read, instead of growing the hub's memory;
- closing never waits for the peer to drain: the close frame is written behind what is buffered, and the
  connection is aborted if the peer has not read it within the heartbeat timeout (``config.syncd_close_
  timeout_s``, set by ``syncd serve``; :data:`CLOSE_TIMEOUT_S_DEFAULT` otherwise) — the time after which
  the protocol counts a silent peer as gone, so a live client that reads late still finds the close code.

:class:`HubHttpProtocol` is uvicorn's HTTP/1.1 protocol with a deadline for the request line and headers: a
connection that sends nothing, or a request a byte at a time (slowloris), is closed when it passes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import InvalidState
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from protocol.errors import CloseCode
from syncd.pacing import Pacer

log = logging.getLogger("syncd.transport")

RAW_SEND: Final = "syncd.raw_send"
"""ASGI scope extension: ``scope["extensions"][RAW_SEND](framed: bytes) -> bool``."""
PACER: Final = "syncd.pacer"
"""ASGI scope extension: the connection's :class:`~syncd.pacing.Pacer`."""
READ_CHUNK: Final = 1024
"""Bytes parsed at a time: a turn checks its budget between chunks."""
INBOX_LIMIT: Final = 64 * 1024
"""Received bytes held unparsed before the connection stops being read."""
CLOSE_GRACE_S: Final = 2.0
"""How long the endpoint keeps writing to a closing connection that does not drain before it gives up."""
CLOSE_TIMEOUT_S_DEFAULT: Final = 10.0
"""How long a closed connection may take to read its close frame when the server's config names no time."""
HANDSHAKE_TIMEOUT_S_DEFAULT: Final = 10.0
"""The request-header deadline of :class:`HubHttpProtocol` when the server's config names none."""


def frame_header(length: int) -> bytes:
    """The header of one unmasked, final, binary websocket frame of ``length`` bytes (RFC 6455 §5.2)."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return b"\x82\x7e" + length.to_bytes(2, "big")
    return b"\x82\x7f" + length.to_bytes(8, "big")


class _Inbox:
    """What uvicorn's ``asyncio.Queue`` of ASGI messages does for its one reader, in a list and one future.

    An ``asyncio.Queue`` is three deques and an ``asyncio.Event`` (a fourth): about 3 KiB per connection,
    held by every idle one (benchmarks `conns`). The queue never holds more than a message and a disconnect
    (reading pauses while a message waits), so a list is all it needs.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("the websocket's messages have one reader at a time")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Flag:
    """``asyncio.Event``'s ``set``/``clear``/``is_set``/``wait``, with its list of waiters made only when
    someone waits (the event's deque is another ~760 bytes per idle connection)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            waiters, self._waiters = self._waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


def forget_request(conn: ServerProtocol) -> bool:
    """Let go of the handshake's request that ``conn``'s parser holds for the connection's lifetime.

    websockets' server parser reads the request into a local variable, then parses frames in the same
    generator, so the request (its headers parsed into a dict and a list, ~2 KiB) lives as long as the
    connection. Once the request is parsed and the parser waits for the first frame with nothing buffered,
    a fresh frame parser is in exactly the same state: it replaces the old one. Otherwise (a frame already
    under way) nothing changes. Returns whether the parser was replaced.
    """
    innermost: Any = conn.parser
    while innermost.gi_yieldfrom is not None:
        innermost = innermost.gi_yieldfrom
    if innermost.gi_code is not StreamReader.at_eof.__code__ or conn.reader.buffer:
        return False
    parser = Protocol.parse(conn)
    next(parser)  # runs to the same wait: for the first byte of a frame
    conn.parser = parser
    return True


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's protocol, paced (see the module docstring), with :data:`RAW_SEND` and :data:`PACER` in every
    websocket scope.

    Memory per idle connection (benchmarks `conns`): uvicorn's ``asyncio.Queue`` and ``asyncio.Event`` are
    replaced by :class:`_Inbox` and :class:`_Flag`, and the handshake's request and response (their headers
    parsed into dicts and lists) are dropped once the handshake is answered.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        self.pacer = Pacer()
        self._inbox = bytearray()
        self._turn_handle: asyncio.Handle | None = None
        self._frames = 0

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The ASGI task that reads the scope is created but has not run yet.
        extensions: dict[str, Any] = self.scope["extensions"]
        extensions[RAW_SEND] = self.raw_send
        extensions[PACER] = self.pacer
        forget_request(self.conn)

    # -- reading, in paced turns ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._inbox += data
        self._sync_reading()
        if self._turn_handle is None and self._may_parse() and self.pacer.delay() <= 0:
            self._turn()  # the turn a call_soon would run next, without a trip through the loop's queue
        else:
            self._schedule()

    def _schedule(self) -> None:
        if self._turn_handle is not None or not self._may_parse():
            return
        delay = self.pacer.delay()
        self._turn_handle = (
            self.loop.call_later(delay, self._turn) if delay > 0 else self.loop.call_soon(self._turn)
        )

    def _may_parse(self) -> bool:
        return (
            bool(self._inbox)
            and not self.read_paused
            and self.writable.is_set()
            and not self.transport.is_closing()
        )

    def _turn(self) -> None:
        """Parse what is waiting, a chunk at a time, until the turn is over or parsing must pause."""
        self._turn_handle = None
        started = self.pacer.start_turn()
        self._frames = 0
        while self._may_parse():
            chunk = bytes(self._inbox[:READ_CHUNK])
            del self._inbox[:READ_CHUNK]
            super().data_received(chunk)
            if self.pacer.turn_over():
                break
        self.pacer.charge(started, self._frames)
        if self.transport.is_closing():
            self._inbox.clear()
        self._sync_reading()
        self._schedule()

    def _sync_reading(self) -> None:
        """Read from the socket only while there is room for what it brings and the peer takes our data.

        While a message waits for the application (``read_paused``) the socket is left open for one more
        read and paused only once bytes wait in the inbox: a device that sends its next frame after the
        answer (one op in flight) then costs no pause and resume (two ``epoll_ctl`` calls) per frame, and
        what the hub holds unparsed stays bounded as before (the inbox, one read beyond it).
        """
        if self.transport.is_closing():
            return
        if (
            (self.read_paused and self._inbox)
            or len(self._inbox) >= INBOX_LIMIT
            or not self.writable.is_set()
        ):
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def send_receive_event_to_app(self) -> None:
        if not self.read_paused and not self.close_sent:
            # uvicorn pauses the transport here, and resumes it as the application takes the message;
            # _sync_reading pauses it instead if more bytes arrive meanwhile.
            self.read_paused = True
        super().send_receive_event_to_app()

    def handle_text(self, event: Any) -> None:
        """Refuse a text message at its first frame: the protocol is binary messages only (PROTOCOL.md §2).

        Here rather than in the endpoint because uvicorn decodes text before the app sees it, and answers
        invalid UTF-8 with a traceback logged at ERROR: any peer could flood the log with its own mistake.
        """
        self._frames += 1
        self.curr_msg_data_type = "text"  # its continuation frames, if any, are dropped with the connection
        self.frames = []
        if not self.close_sent:
            log.debug("closing a connection that sent a text message (1002)")
            self.conn.send_close(CloseCode.PROTOCOL_ERROR, "frames are binary messages")
            self.handle_parser_exception()

    def handle_bytes(self, event: Any) -> None:
        self._frames += 1
        super().handle_bytes(event)

    def handle_ping(self) -> None:
        self._frames += 1
        super().handle_ping()

    def handle_pong(self, event: Any) -> None:
        self._frames += 1
        super().handle_pong(event)

    async def receive(self) -> Any:
        message = await super().receive()
        self._sync_reading()
        self._schedule()
        return message

    def pause_writing(self) -> None:
        super().pause_writing()
        self._sync_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._sync_reading()
        self._schedule()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._turn_handle is not None:
            self._turn_handle.cancel()
            self._turn_handle = None
        self._inbox.clear()
        super().connection_lost(exc)

    # -- closing without waiting for the peer -------------------------------------------------------------

    async def send(self, message: Any) -> None:
        if (
            message["type"] == "websocket.close"
            and self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
        ):
            if self.disconnected:
                raise ClientDisconnected()
            self._close_now(message.get("code", CloseCode.NORMAL), message.get("reason") or "")
            return
        await super().send(message)
        if message["type"] == "websocket.accept":  # answered: uvicorn reads neither again
            self.request = self.response = None  # type: ignore[assignment]

    def _close_now(self, code: int, reason: str) -> None:
        """uvicorn's close, without first waiting for the transport to drain (it may never): the close frame
        goes behind what is buffered, and the connection is aborted if the peer has not read it in time."""
        if self.transport.is_closing():
            return
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            raise ClientDisconnected() from None
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.read_paused = False  # read the peer's close reply
        self._sync_reading()
        self.close_timer = self.loop.call_later(self._close_timeout_s(), self._abort)

    def _close_timeout_s(self) -> float:
        timeout: float = getattr(self.config, "syncd_close_timeout_s", CLOSE_TIMEOUT_S_DEFAULT)
        return timeout

    async def run_asgi(self) -> None:
        await super().run_asgi()
        # uvicorn then closes the transport, which waits for its buffer to drain: bound that wait.
        if not self.disconnected and self.close_timer is None:
            self.close_timer = self.loop.call_later(self._close_timeout_s(), self._abort)

    def _abort(self) -> None:
        self.close_timer = None
        if not self.disconnected:
            log.debug("aborting a connection whose peer does not read")
            self.transport.abort()

    def shutdown(self) -> None:
        """Close an open websocket with 1001 ``going_away`` when the server stops (PROTOCOL.md §5.2), where
        uvicorn would send 1012; anything else (a close already sent, no handshake yet) as uvicorn does."""
        if not self.handshake_complete or self.close_sent or self.disconnected:
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CloseCode.GOING_AWAY})
        self.conn.send_close(CloseCode.GOING_AWAY, "hub shutting down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def raw_send(self, framed: bytes) -> bool:
        """Write one pre-framed message now, if the connection is open and its transport accepts more."""
        if self.disconnected or self.close_sent or not self.handshake_complete or not self.writable.is_set():
            return False
        self.transport.write(framed)
        return True


class HubHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for a connection's first request line and headers.

    Without it a connection that sends nothing, or a request a byte at a time, is held open for ever (each
    costs a socket and a protocol object; hundreds of them are a denial of service). The deadline is
    ``config.syncd_handshake_timeout_s`` (set by ``syncd serve`` from ``SYNCD_HANDSHAKE_TIMEOUT_MS``); past
    it the connection is aborted. Once a request is complete uvicorn's own timers apply, and an upgraded
    websocket has the protocol's ``hello`` deadline (the same setting).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        timeout = getattr(self.config, "syncd_handshake_timeout_s", HANDSHAKE_TIMEOUT_S_DEFAULT)
        self._header_timer = self.loop.call_later(timeout, self._header_timeout)

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_timer is not None and self.cycle is not None:  # a whole request line and headers
            self._stop_header_timer()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._stop_header_timer()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        log.debug("closing a connection that sent no complete request in time")
        self.transport.abort()
