"""The peer: python-socketio's ``AsyncServer`` with ``AsyncRedisManager``, on uvicorn.

``python -m benchmarks.peer --port P --redis-url U``. The equivalent of the hub's write: the ``op`` event runs
one EVALSHA of :data:`benchmarks.relay.RELAY_LUA` (HINCRBY + XADD, no PUBLISH), emits the event to the topic's
room — the Redis manager publishes it, and every server process delivers it to its local room members — and
answers with a Socket.IO ack. ``sub`` joins the room. JSON payloads (Socket.IO's default encoding).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis
import socketio  # type: ignore[import-untyped]
import uvicorn
from redis.asyncio import Redis

from benchmarks.relay import RELAY_LUA, relay_command


def build(redis_url: str) -> socketio.ASGIApp:
    sha = redis.Redis.from_url(redis_url).script_load(RELAY_LUA)
    store = Redis.from_url(redis_url)
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url), cors_allowed_origins=[]
    )

    @sio.on("sub")  # type: ignore[untyped-decorator]
    async def sub(sid: str, topic: str) -> bool:
        await sio.enter_room(sid, topic)
        return True

    @sio.on("op")  # type: ignore[untyped-decorator]
    async def op(sid: str, frame: dict[str, Any]) -> dict[str, Any]:
        args = frame["args"]
        member = args["member"]
        topic = "cart:" + member
        at = time.time_ns() // 1_000_000
        qty, offset = await store.execute_command(  # type: ignore[no-untyped-call]
            *relay_command(sha, frame, at, "")
        )
        event = {
            "topic": topic,
            "cursor": ["e0", offset],
            "kind": "cart.add",
            "data": {"lines": {args["sku"]: {"qty": qty}}},
            "at": at,
            "origin": [frame["c"], frame["seq"]],
        }
        await sio.emit("ev", event, room=topic)
        return {"seq": frame["seq"], "ok": True, "result": {"qty": qty}}

    return socketio.ASGIApp(sio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build(args.redis_url),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
