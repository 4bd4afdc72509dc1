"""A hub without sockets, for tests: the real endpoint, hub, store and fan-out over a real Redis.

* :class:`Wire` is the ASGI side of one websocket: the endpoint reads what a test queues and writes into
  lists the test reads. No server, no port, no timing: the test decides when each byte arrives.
* :class:`Device` drives a :class:`~protocol.connection.ClientProtocol` over a wire, the way the SDK does,
  so the frames the hub sees are the ones a real client would send.
* :class:`ManualTicker` replaces the hub's once-a-second ticker: :meth:`ManualTicker.advance` runs the
  deadlines (handshake, heartbeat, token expiry) as if that much time had passed.
* :class:`Pauses` holds one store read (``snapshot``, ``events_after``) at the moment a test names, so a test
  can commit events exactly while a subscription is being synchronised: the snapshot/live race, made
  deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from types import SimpleNamespace
from typing import Any, TypeVar

from starlette.websockets import WebSocket

from protocol import frames
from protocol.connection import ClientProtocol, FrameReceived, Opened
from syncd.endpoint import endpoint
from syncd.hub import Hub, Ticking, now_ms

F = TypeVar("F", bound=frames.Frame)
SECRET = "hubkit-secret-" + "k" * 40


class Wire:
    """One websocket as the endpoint sees it through ASGI: ``receive`` and ``send``."""

    def __init__(self, hub: Hub, headers: dict[str, str] | None = None) -> None:
        self._incoming: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self._incoming.put_nowait({"type": "websocket.connect"})
        self.received: list[bytes] = []
        """Binary messages the hub sent, in order."""
        self.close_code: int | None = None
        self.close_reason = ""
        self.changed = asyncio.Event()
        scope = {
            "type": "websocket",
            "path": "/ws",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "app": SimpleNamespace(state=SimpleNamespace(hub=hub)),
            "extensions": {},
        }
        self.task = asyncio.create_task(endpoint(WebSocket(scope, self._receive, self._send)))

    async def _receive(self) -> MutableMapping[str, Any]:
        return await self._incoming.get()

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "websocket.send":
            self.received.append(message["bytes"])
        elif message["type"] == "websocket.close":
            self.close_code, self.close_reason = message.get("code", 1000), message.get("reason", "")
            self.disconnect()  # the server's side of the closing handshake, as uvicorn reports it
        self.changed.set()

    def put(self, data: bytes | str) -> None:
        """A message from the client."""
        key = "bytes" if isinstance(data, bytes) else "text"
        self._incoming.put_nowait({"type": "websocket.receive", key: data})

    def disconnect(self) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": 1006})

    async def until(self, condition: Callable[[], object]) -> None:
        """Wait until ``condition()`` holds after something the hub sent; the suite's timeout ends a test
        that never gets there."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    async def closed(self) -> int:
        """The close code, once the hub has closed the websocket."""
        await self.until(lambda: self.close_code is not None)
        assert self.close_code is not None
        return self.close_code

    async def ended(self) -> None:
        """The endpoint has returned (every task it started is done)."""
        await self.task


class Device:
    """One client over a :class:`Wire`: a ``ClientProtocol`` whose frames go to the hub, and the frames
    the hub sent, decoded, in order."""

    def __init__(self, hub: Hub, client_id: str, token: str, headers: dict[str, str] | None = None) -> None:
        self.proto = ClientProtocol(client_id, token, now_ms())
        self.wire = Wire(hub, headers)
        self._read = 0
        self.frames: list[frames.Frame] = []

    def _flush(self) -> None:
        for data in self.proto.data_to_send():
            self.wire.put(data)

    def hello(self) -> None:
        self.proto.connect(now_ms())
        self._flush()

    async def open(self) -> frames.Welcome:
        self.hello()
        welcome = await self.next(frames.Welcome)
        return welcome

    def send(self, frame: frames.Frame) -> None:
        self.proto.send(frame, now_ms())
        self._flush()

    def _decode_new(self) -> None:
        while self._read < len(self.wire.received):
            self.proto.receive_data(self.wire.received[self._read], now_ms())
            self._read += 1
            for event in self.proto.events_received():
                if isinstance(event, FrameReceived):
                    self.frames.append(event.frame)
                elif isinstance(event, Opened):
                    self.frames.append(event.welcome)

    async def wait(self, condition: Callable[[], object]) -> None:
        def decoded() -> object:
            self._decode_new()
            return condition()

        await self.wire.until(decoded)

    async def next(self, kind: type[F]) -> F:
        """The first frame of ``kind`` not taken yet (earlier frames of other kinds stay)."""
        await self.wait(lambda: any(isinstance(f, kind) for f in self.frames))
        index = next(i for i, f in enumerate(self.frames) if isinstance(f, kind))
        frame = self.frames.pop(index)
        assert isinstance(frame, kind)
        return frame

    def taken(self, kind: type[frames.Frame]) -> list[Any]:
        """The frames of ``kind`` received so far, removed from :attr:`frames`."""
        self._decode_new()
        picked = [f for f in self.frames if isinstance(f, kind)]
        self.frames = [f for f in self.frames if not isinstance(f, kind)]
        return picked

    async def close(self) -> None:
        """The client goes away; returns when the hub has cleaned up after it."""
        if not self.wire.task.done():
            self.wire.disconnect()
        with contextlib.suppress(Exception):
            await self.wire.ended()


class ManualTicker:
    """The hub's ticker with time in the test's hands: members tick when the test says so."""

    def __init__(self) -> None:
        self.members: set[Ticking] = set()

    def add(self, member: Ticking) -> None:
        self.members.add(member)

    def discard(self, member: Ticking) -> None:
        self.members.discard(member)

    def advance(self, ms: int) -> None:
        """Tick every member as if ``ms`` milliseconds had passed since now."""
        now = now_ms() + ms
        for member in list(self.members):
            member.tick(now)

    async def close(self) -> None:
        self.members.clear()


class Pauses:
    """Holds a store read of the hub's: ``hold("snapshot", after=False)`` makes the next ``snapshot`` wait
    (before it reads, or, with ``after=True``, once it has read) until :meth:`release`."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.reached = asyncio.Event()
        self._go = asyncio.Event()

    def hold(self, name: str, *, after: bool = False) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(self._store, name)
        self.reached.clear()
        self._go.clear()

        async def held(*args: Any, **kwargs: Any) -> Any:
            setattr(self._store, name, original)  # once: the next read goes through
            if after:
                result = await original(*args, **kwargs)
            self.reached.set()
            await self._go.wait()
            return result if after else await original(*args, **kwargs)

        setattr(self._store, name, held)

    def release(self) -> None:
        self._go.set()


def op(seq: int, member: str = "m1", sku: str = "SKU-1", qty: int = 1) -> frames.Op:
    """A ``cart.add`` op of ``member``'s cart."""
    return frames.Op(seq=seq, kind="cart.add", args={"member": member, "sku": sku, "qty": qty}, hlc=1)
