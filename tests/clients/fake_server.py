"""A real websocket server in front of :class:`tests.clients.fakes.FakeHub`, for fast client tests.

Bytes go through :class:`protocol.connection.ServerProtocol` (handshake, limits, heartbeats) exactly as in
the hub; the hub's services are the sans-I/O fake (reference cart rules, dedup, cursors), so tests of the
asyncio client run in milliseconds without Redis. End-to-end tests against real hub processes are in
``tests/e2e/test_client_*.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from protocol import codec
from protocol.connection import (
    CloseRequested,
    FrameReceived,
    HelloReceived,
    Refused,
    ServerProtocol,
    StatsReceived,
)
from tests.clients.fakes import FakeHub, FakeSession


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class FakeHubServer:
    """``async with FakeHubServer() as server:`` → ``server.url``; ``server.hub`` is the fake hub."""

    def __init__(self, hub: FakeHub | None = None, *, heartbeat_ms: int = 15_000) -> None:
        self.hub = hub if hub is not None else FakeHub()
        self.heartbeat_ms = heartbeat_ms
        self._server: Server | None = None
        self._connections: dict[ServerConnection, asyncio.Event] = {}
        self.hellos: list[str] = []
        self._stats: asyncio.Queue[dict[str, float]] = asyncio.Queue()
        self.arrivals: list[tuple[str, dict[str, float] | None]] = []
        """What clients sent after their hello, in order: ``("stats", figures)`` or ``(frame type, None)``."""
        self.refuse_with: int | None = None

    async def __aenter__(self) -> FakeHubServer:
        self._server = await serve(self._handler, "127.0.0.1", 0, compression=None, max_size=2**20)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def drop_all(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every connection (the hub restarting)."""
        for ws in list(self._connections):
            with contextlib.suppress(Exception):
                await ws.close(code, reason)

    async def next_stats(self) -> dict[str, float]:
        """The statistics of the next client ping that carries some."""
        return await self._stats.get()

    def _wake_all(self) -> None:
        for event in self._connections.values():
            event.set()

    async def _handler(self, ws: ServerConnection) -> None:
        proto = ServerProtocol(
            now_ms(),
            heartbeat_ms=self.heartbeat_ms,
            max_batch=self.hub.max_batch,
            limits=codec.Limits(max_frame=self.hub.max_frame),
        )
        wake = asyncio.Event()
        self._connections[ws] = wake
        session: FakeSession | None = None
        writer = asyncio.create_task(self._writer(ws, proto, wake, lambda: session))
        try:
            async for message in ws:
                assert isinstance(message, bytes)
                proto.receive_data(message, now_ms())
                while events := proto.events_received():
                    for event in events:
                        if isinstance(event, HelloReceived):
                            self.hellos.append(event.hello.client_id)
                            if self.refuse_with is not None:
                                proto.refuse(self.refuse_with, "refused by the test")
                                continue
                            session, welcome = self.hub.connect(event.hello.client_id, now_ms())
                            proto.accept(session=welcome.session, last_seq=welcome.last_seq, now_ms=now_ms())
                        elif isinstance(event, FrameReceived) and session is not None:
                            self.arrivals.append((type(event.frame).__name__, None))
                            session.send(event.frame, now_ms())
                            self._wake_all()
                        elif isinstance(event, Refused) and session is not None:
                            session.out.append(event.error)  # after the replies to what came before
                        elif isinstance(event, CloseRequested):
                            await self._flush(ws, proto, session)
                            await ws.close(event.code, event.reason)
                            return
                        elif isinstance(event, StatsReceived):
                            self.arrivals.append(("stats", dict(event.stats)))
                            self._stats.put_nowait(dict(event.stats))
                await self._flush(ws, proto, session)
        except Exception:
            pass
        finally:
            writer.cancel()
            self._connections.pop(ws, None)
            if session is not None:
                session.close()

    async def _writer(
        self, ws: ServerConnection, proto: ServerProtocol, wake: asyncio.Event, session: Any
    ) -> None:
        while True:
            await wake.wait()
            wake.clear()
            await self._flush(ws, proto, session())

    async def _flush(self, ws: ServerConnection, proto: ServerProtocol, session: FakeSession | None) -> None:
        if session is not None:
            for frame in session.take():
                proto.send(frame)
        for data in proto.data_to_send():
            await ws.send(data)
