"""Python clients of the three systems, with one interface, for the load generators.

Each speaks its server's real wire protocol over a real websocket (``websockets``, no compression):

* ``syncd`` — the hub's protocol v1: ``hello`` with a token minted by :func:`syncd.auth.mint_token`, ``sub``
  answered by ``snap``, ``op`` frames ``cart.add`` with increasing ``seq``, ``ack``/``ev`` back (PROTOCOL.md);
* ``floor`` — the floor's MessagePack frames (:mod:`benchmarks.floor`); ``bcast``, the broadcast floor
  (:mod:`benchmarks.bcast`), speaks them too;
* ``peer`` — Engine.IO 4 / Socket.IO 5 packets as text frames, spoken directly (a client library would make
  the load generator the bottleneck): ``40`` connect, ``42<id>["op", {...}]`` answered by ``43<id>[...]``.

Incoming messages are only partly decoded (the tag, the ack's seq, the event's origin): the load generator
must not be what limits the measurement.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final, Literal

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from protocol import codec, frames
from protocol.codec import CLIENT_LIMITS, FrameDecoder
from syncd.auth import mint_token

Dialect = Literal["syncd", "floor", "peer", "bcast"]
DIALECTS: Final[tuple[Dialect, ...]] = ("syncd", "floor", "peer", "bcast")
FLOOR_FRAMES: Final[frozenset[Dialect]] = frozenset({"floor", "bcast"})
"""Systems speaking the floor's MessagePack frames (the broadcast floor, :mod:`benchmarks.bcast`, too)."""
TOKEN_SECRET: Final = "bench-secret-" + "b" * 40
"""``SYNCD_TOKEN_SECRET`` of the hub the benchmark starts."""
HEARTBEAT_PING_S: Final = 10.0


class Reply(msgspec.Struct):
    """What a load generator needs of any incoming msgpack message (the rest is skipped, not built)."""

    t: str = ""
    seq: int = 0
    ok: bool = True
    code: str | None = None
    ref: int | None = None
    origin: tuple[str, int] | None = None


_reply = msgspec.msgpack.Decoder(Reply).decode
_encode = msgspec.msgpack.Encoder().encode


def syncd_token(client_id: str, member: str) -> str:
    """An ``app`` token for one device acting for one member (an hour is longer than any run)."""
    return mint_token(TOKEN_SECRET, client_id=client_id, members=[member])


def syncd_hello(client_id: str, member: str) -> bytes:
    hello = frames.Hello(
        versions=[1],
        token=syncd_token(client_id, member),
        client_id=client_id,
        ts=time.time_ns() // 1_000_000,
        agent="syncd-bench",
    )
    return codec.encode(hello)


def syncd_sub(topic: str, request_id: int = 1) -> bytes:
    return codec.encode(frames.Subscribe(id=request_id, topic=topic))


def syncd_reserve(seq: int, sku: str, member: str, ttl_ms: int = 600_000) -> bytes:
    """``stock.reserve`` of 1 unit through the ``app`` channel (an ``app`` token's own when it names none)."""
    args = {"member": member, "sku": sku, "channel": "app", "qty": 1, "ttl_ms": ttl_ms}
    return codec.encode(frames.Op(seq=seq, kind="stock.reserve", args=args))


def syncd_ping() -> bytes:
    return codec.encode(frames.Ping(ts=0))


def floor_sub(topic: str) -> bytes:
    return _encode({"t": "sub", "topic": topic})


def peer_sub(topic: str) -> str:
    return "420" + json.dumps(["sub", topic])


class Client:
    """One connected device. ``parse`` turns an incoming message into ``(kind, client_id, seq)``:

    ``("ack", "", seq)`` for an accepted op, ``("nack", code, seq)`` for a refused one, ``("ev", origin
    client, origin seq)`` for an event, ``("other", "", 0)`` for anything else.
    """

    def __init__(self, dialect: Dialect, ws: ClientConnection, client_id: str, seq: int = 0) -> None:
        self.dialect = dialect
        self.ws = ws
        self.client_id = client_id
        self.seq = seq

    @classmethod
    async def open(cls, dialect: Dialect, url: str, client_id: str, member: str) -> Client:
        ws = await connect(
            url, compression=None, max_size=2**22, ping_interval=None, open_timeout=60, close_timeout=2
        )
        seq = 0
        if dialect == "syncd":
            await ws.send(syncd_hello(client_id, member))
            decoder = FrameDecoder(frames.SERVER_FRAMES, CLIENT_LIMITS)
            welcome = decoder.decode(_as_bytes(await ws.recv()))
            if not isinstance(welcome, frames.Welcome):
                raise RuntimeError(f"hello of {client_id} answered with {welcome!r}")
            seq = welcome.last_seq
        elif dialect == "peer":
            opened = await ws.recv()
            if not isinstance(opened, str) or not opened.startswith("0"):
                raise RuntimeError(f"engine.io open expected, got {opened!r}")
            await ws.send("40")
            connected = await ws.recv()
            if not isinstance(connected, str) or not connected.startswith("40"):
                raise RuntimeError(f"socket.io connect refused: {connected!r}")
        return cls(dialect, ws, client_id, seq)

    async def subscribe(self, topic: str) -> None:
        """Subscribe and wait for the server's confirmation (``snap`` / the ack of ``sub``)."""
        if self.dialect == "syncd":
            await self.ws.send(syncd_sub(topic))
            expected: tuple[str, ...] = ("snap",)
        elif self.dialect in FLOOR_FRAMES:
            await self.ws.send(floor_sub(topic))
            expected = ("snap",)
        else:
            await self.ws.send(peer_sub(topic))
            expected = ("ack",)
        while True:
            message = await self.ws.recv()
            kind, _, _ = self.parse(message)
            if kind in expected:
                return
            if kind == "nack":
                raise RuntimeError(f"subscribe to {topic} refused: {message!r}")

    def op(self, member: str, sku: str, qty: int = 1) -> bytes | str:
        """The next op (``cart.add``) of this client, encoded; advances ``seq``."""
        self.seq += 1
        args = {"member": member, "sku": sku, "qty": qty}
        if self.dialect == "syncd":
            now = time.time_ns() // 1_000_000
            return codec.encode(frames.Op(seq=self.seq, kind="cart.add", args=args, hlc=now << 10, ts=now))
        frame = {"t": "op", "c": self.client_id, "seq": self.seq, "args": args}
        if self.dialect in FLOOR_FRAMES:
            return _encode(frame)
        return f"42{self.seq}" + json.dumps(["op", frame])

    def parse(self, message: bytes | str) -> tuple[str, str, int]:
        if isinstance(message, bytes):
            reply = _reply(message)
            if reply.t == "ev" and reply.origin is not None:
                return "ev", reply.origin[0], reply.origin[1]
            if reply.t == "ack":
                return ("ack", "", reply.seq) if reply.ok else ("nack", reply.code or "?", reply.seq)
            if reply.t == "err":
                return "nack", reply.code or "?", reply.ref or 0
            return reply.t, "", 0
        return _parse_peer(message)

    async def pong_if_ping(self, message: bytes | str) -> None:
        if message == "2":  # engine.io ping from the server: must be answered
            await self.ws.send("3")

    async def close(self) -> None:
        await self.ws.close()


def _parse_peer(message: str) -> tuple[str, str, int]:
    if message.startswith('42["ev"'):
        event: dict[str, Any] = json.loads(message[2:])[1]
        client, seq = event["origin"]
        return "ev", client, seq
    if message.startswith("43"):
        end = message.index("[")
        return "ack", "", int(message[2:end])
    if message.startswith("44"):
        return "nack", message[2:80], 0
    return "other", "", 0


def _as_bytes(message: bytes | str) -> bytes:
    if isinstance(message, str):
        raise RuntimeError(f"the hub sent a text message: {message[:80]!r}")
    return message
