"""The floor: the least a websocket relay over Redis can do.

``python -m benchmarks.floor --port P --redis-url U``:

* transport: a plain ``websockets`` server (no compression), one binary MessagePack map per message;
* write: ``{"t": "op", "c": client_id, "seq": n, "args": {"member", "sku", "qty"}}`` → one EVALSHA of
  :data:`benchmarks.relay.RELAY_LUA` (HINCRBY + XADD + PUBLISH) → ``{"t": "ack", "seq": n, "ok": true, ...}``;
* subscribe: ``{"t": "sub", "topic": T}`` → ``{"t": "snap", "topic": T}``;
* fan-out: one pub/sub connection (PSUBSCRIBE ``ev:*``); each message goes to the topic's local subscribers
  with ``websockets.broadcast`` (the bytes are written to every transport, encoded once, without awaiting).

No auth, no validation, no dedup, no ordering checks: a floor, not a product.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection, broadcast, serve

from benchmarks.relay import RELAY_LUA, relay_command

_decode = msgspec.msgpack.Decoder().decode
_encode = msgspec.msgpack.Encoder().encode


Topics = dict[str, set[ServerConnection]]
"""Each topic's local subscribers."""


def frames_handler(
    topics: Topics, apply: Callable[[dict[str, Any]], Awaitable[int]]
) -> Callable[[ServerConnection], Awaitable[None]]:
    """The connection handler of the floor's frames (shared with :mod:`benchmarks.bcast`): ``sub`` joins
    ``topics[T]`` and is answered by ``snap``; ``op`` is acked with the quantity ``apply(frame)`` returns."""

    async def handler(ws: ServerConnection) -> None:
        held: list[str] = []
        try:
            async for message in ws:
                frame: dict[str, Any] = _decode(message if isinstance(message, bytes) else message.encode())
                kind = frame.get("t")
                if kind == "op":
                    qty = await apply(frame)
                    await ws.send(
                        _encode({"t": "ack", "seq": frame["seq"], "ok": True, "result": {"qty": qty}})
                    )
                elif kind == "sub":
                    topic = frame["topic"]
                    topics.setdefault(topic, set()).add(ws)
                    held.append(topic)
                    await ws.send(_encode({"t": "snap", "topic": topic}))
        finally:
            for topic in held:
                subscribers = topics.get(topic)
                if subscribers is not None:
                    subscribers.discard(ws)

    return handler


async def run(port: int, redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    sha = await redis.script_load(RELAY_LUA)
    topics: Topics = {}

    async def apply(frame: dict[str, Any]) -> int:
        channel = "ev:cart:" + frame["args"]["member"]
        qty, _offset = await redis.execute_command(  # type: ignore[no-untyped-call]
            *relay_command(sha, frame, time.time_ns() // 1_000_000, channel)
        )
        return int(qty)

    handler = frames_handler(topics, apply)

    async def fanout() -> None:
        pubsub = Redis.from_url(redis_url).pubsub()
        await pubsub.psubscribe("ev:*")
        async for message in pubsub.listen():
            if message["type"] == "pmessage":
                subscribers = topics.get(message["channel"][3:].decode())
                if subscribers:
                    broadcast(subscribers, message["data"])

    fanout_task = asyncio.create_task(fanout())
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=65_536) as server:
        print("ready", flush=True)
        try:
            await server.serve_forever()
        finally:
            fanout_task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    asyncio.run(run(args.port, args.redis_url))


if __name__ == "__main__":
    main()
