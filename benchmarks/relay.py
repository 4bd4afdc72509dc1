"""What the floor and the peer do for a write: one Lua call, the "equivalent write" of the hub's ``cart.add``.

The script bumps the line (HINCRBY), bumps the topic offset, appends the event to the topic's stream (XADD,
trimmed like the hub's) and, for the floor, PUBLISHes the same bytes for the fan-out. No dedup, no checks, no
version vectors: this is the least any design with the hub's storage shape must do per write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

RELAY_LUA: Final = """
-- KEYS: 1 line hash, 2 topic meta, 3 topic stream
-- ARGV: 1 sku, 2 qty, 3 client id, 4 seq, 5 topic, 6 commit time (ms), 7 stream maxlen, 8 channel or ''
local qty = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
local off = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local lines = {}
lines[ARGV[1]] = {qty = qty}
local ev = cmsgpack.pack({t = 'ev', topic = ARGV[5], cursor = {'e0', off}, kind = 'cart.add',
    data = {lines = lines}, at = tonumber(ARGV[6]), origin = {ARGV[3], tonumber(ARGV[4])}})
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], string.format('%d-0', off), 'ev', ev)
if ARGV[8] ~= '' then
    redis.call('PUBLISH', ARGV[8], ev)
end
return {qty, off}
"""

STREAM_MAXLEN: Final = 10_000
"""The hub's default ``history_maxlen``."""


def relay_command(sha: str, frame: Mapping[str, Any], at_ms: int, channel: str) -> tuple[Any, ...]:
    """The EVALSHA of :data:`RELAY_LUA` for one ``op`` frame (``channel`` ``''``: no PUBLISH)."""
    args = frame["args"]
    member = args["member"]
    return (
        "EVALSHA",
        sha,
        3,
        *relay_keys(member),
        args["sku"],
        args["qty"],
        frame["c"],
        frame["seq"],
        "cart:" + member,
        at_ms,
        STREAM_MAXLEN,
        channel,
    )


def relay_keys(member: str) -> tuple[str, str, str]:
    slot = f"{{m:{member}}}"
    return f"{slot}:cart", f"{slot}:top", f"{slot}:log"
