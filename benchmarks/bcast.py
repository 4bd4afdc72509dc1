"""The broadcast floor: a bare relay on ``websockets.broadcast``, the least a Python hub can do for fan-out.

``python -m benchmarks.bcast --port P [--redis-url U]`` speaks the floor's frames (:mod:`benchmarks.floor`)
but keeps nothing in Redis (``--redis-url`` is accepted and ignored, so :class:`~benchmarks.systems.System`
starts it like the others): an ``op`` bumps a line held in a dict, its event — the floor's shape, encoded once
with msgspec — goes to every subscriber of the topic with ``websockets.broadcast`` (written to each transport
without awaiting any), then the op is acked. No store, no pub/sub hop, no auth, no checks: what is left of a
fan-out when everything but encoding once and writing to every socket is taken away. Beside the floor it
shows what the Redis round trip costs; beside the hub, what the hub's own Python costs per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import msgspec
from websockets.asyncio.server import broadcast, serve

from benchmarks.floor import Topics, frames_handler

_encode = msgspec.msgpack.Encoder().encode


async def run(port: int, pad: int = 0) -> None:
    topics: Topics = {}
    lines: dict[tuple[str, str], int] = {}
    offsets: dict[str, int] = {}

    async def apply(frame: dict[str, Any]) -> int:
        args = frame["args"]
        topic = "cart:" + args["member"]
        line = (topic, args["sku"])
        qty = lines[line] = lines.get(line, 0) + args["qty"]
        offset = offsets[topic] = offsets.get(topic, 0) + 1
        event = {
            "t": "ev",
            "topic": topic,
            "cursor": ["e0", offset],
            "kind": "cart.add",
            "data": {"lines": {args["sku"]: {"qty": qty}}, **({"pad": "x" * pad} if pad else {})},
            "at": time.time_ns() // 1_000_000,
            "origin": [frame["c"], frame["seq"]],
        }
        subscribers = topics.get(topic)
        if subscribers:
            broadcast(subscribers, _encode(event))
        return qty

    handler = frames_handler(topics, apply)
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=65_536) as server:
        print("ready", flush=True)
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="", help="ignored: the broadcast floor keeps nothing in Redis")
    parser.add_argument(
        "--pad", type=int, default=0, help="bytes of filler in each event (by hand: what event size costs)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.port, args.pad))


if __name__ == "__main__":
    main()
