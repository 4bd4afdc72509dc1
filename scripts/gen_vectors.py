"""Write the protocol test vectors, tests/vectors/frames.json (PROTOCOL.md §Test vectors).

    python scripts/gen_vectors.py          # (re)write the file
    python scripts/gen_vectors.py --check  # exit 1 if the file is not what this script writes

Each vector is ``{name, direction, hex, frame}`` for a valid frame, ``{name, direction, hex, frame,
encodes_to}`` for a valid frame whose bytes are not the ones the reference encoder writes (an integer where a
float is due, ``t`` after other keys, a wider integer than needed: receivers accept them, senders need not
write them), or ``{name, direction, hex, error}`` for an invalid one. ``direction`` is who sends it:
``"client"`` frames are decoded as a hub does (client frames only, ``SERVER_LIMITS``), ``"server"`` frames as
a client does (hub frames only, ``CLIENT_LIMITS``).

The expectations are written here by hand, not read back from the implementation: a valid vector's ``hex``
is its ``frame`` map encoded by a generic MessagePack encoder (keys in the order written, which is the
order of the struct fields), and an invalid vector's ``error`` is the code the spec requires. The script
refuses to write a vector the implementation disagrees with, and tests/protocol/test_vectors.py checks the
checked-in file both ways. Output is deterministic: no clock, no randomness.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from protocol import cart, codec, frames  # noqa: E402
from protocol.errors import ErrorCode, ProtocolError  # noqa: E402

OUT = ROOT / "tests" / "vectors" / "frames.json"
DECODERS = {
    "client": codec.FrameDecoder(frames.CLIENT_FRAMES, codec.SERVER_LIMITS),
    "server": codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS),
}

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in Unix milliseconds
HLC0 = T0 << 10  # a hybrid-logical-clock timestamp: ms * 1024 + counter
TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJwb3Mtc2gwMS0zIiwicm9sZSI6InBvcyIsInN0b3JlIjoic2gwMSIsImV4cCI6MTc2NzIyOTIwMH0"
    ".c2lnbmF0dXJlLW5vdC1jaGVja2VkLWluLXZlY3RvcnM"
)
LINE = {
    "qty": 3,
    "attrs": {"size": "M"},
    "vv": {"app-m42-a": 3, "pos-sh01-3": 6},
    "dots": [["app-m42-a", 3, "a", 1, HLC0 + 1], ["pos-sh01-3", 6, "a", 2, HLC0 + 2048, {"size": "M"}]],
}

VALID: list[tuple[str, str, dict[str, Any]]] = [
    # --- client → hub
    (
        "hello, required fields only",
        "client",
        {"t": "hello", "versions": [1], "token": TOKEN, "client_id": "pos-sh01-3"},
    ),
    (
        "hello, every field",
        "client",
        {
            "t": "hello",
            "versions": [1, 2],
            "token": TOKEN,
            "client_id": "pos-sh01-3",
            "ts": T0,
            "agent": "syncd-python/0.1.0 (pos)",
        },
    ),
    ("sub, fresh: asks for a snapshot", "client", {"t": "sub", "id": 1, "topic": "cart:m42"}),
    (
        "sub, resuming after a cursor",
        "client",
        {"t": "sub", "id": 2, "topic": "stock:SKU-1", "cursor": ["e7f3", 41]},
    ),
    ("unsub", "client", {"t": "unsub", "topic": "stock:SKU-1"}),
    (
        "op, required fields only",
        "client",
        {"t": "op", "seq": 1, "kind": "cart.clear", "args": {"member": "m42"}},
    ),
    (
        "op, every field",
        "client",
        {
            "t": "op",
            "seq": 7,
            "kind": "cart.add",
            "args": {"member": "m42", "sku": "SKU-1", "qty": 2},
            "ctx": {"app-m42-a": 3, "~": 2},
            "hlc": HLC0 + 5,
            "ts": T0 + 5,
        },
    ),
    (
        "ops, a batch of two",
        "client",
        {
            "t": "ops",
            "ops": [
                {
                    "t": "op",
                    "seq": 8,
                    "kind": "cart.set",
                    "args": {"member": "m42", "sku": "SKU-1", "qty": 0},
                    "ctx": {"app-m42-a": 3, "pos-sh01-3": 7},
                    "hlc": HLC0 + 9,
                },
                {"t": "op", "seq": 9, "kind": "cart.remove", "args": {"member": "m42", "sku": "SKU-2"}},
            ],
        },
    ),
    ("ping from a client, no stats", "client", {"t": "ping", "ts": T0 + 15_000}),
    (
        "ping from a client, with stats",
        "client",
        {"t": "ping", "ts": T0 + 30_000, "stats": {"outbox": 3.0, "outbox_age_ms": 1250.5}},
    ),
    (
        "ping from a client, with a latency report",
        "client",
        {
            "t": "ping",
            "ts": T0 + 31_000,
            "stats": {
                "outbox": 0.0,
                "outbox_age_ms": 0.0,
                "sync_ms_le_25": 7.0,
                "sync_ms_le_50": 2.0,
                "sync_ms_le_inf": 1.0,
                "sync_ms_count": 10.0,
                "sync_ms_sum": 12_345.5,
                "sync_ms_p50": 21.0,
                "sync_ms_p95": 48.0,
                "sync_ms_p99": 12_000.0,
            },
        },
    ),
    ("pong from a client", "client", {"t": "pong", "echo_ts": T0 + 45_000, "ts": T0 + 45_012}),
    (
        "err from a client",
        "client",
        {"t": "err", "code": "unknown_frame", "message": "unknown frame tag 'x'"},
    ),
    # --- hub → client
    (
        "welcome",
        "server",
        {
            "t": "welcome",
            "version": 1,
            "session": "s-01HZX3",
            "hub_time": T0 + 40,
            "echo_ts": T0,
            "last_seq": 6,
            "heartbeat_ms": 15_000,
            "max_frame": 65_536,
            "max_batch": 256,
        },
    ),
    (
        "snap, fresh, with state",
        "server",
        {
            "t": "snap",
            "id": 1,
            "topic": "cart:m42",
            "cursor": ["e7f3", 12],
            "state": {"lines": {"SKU-1": LINE}},
        },
    ),
    (
        "snap, resuming: no state, missed events follow",
        "server",
        {"t": "snap", "id": 2, "topic": "stock:SKU-1", "cursor": ["e7f3", 41]},
    ),
    (
        "snap, reset: history gone, replace the state",
        "server",
        {
            "t": "snap",
            "id": 2,
            "topic": "stock:SKU-1",
            "cursor": ["a001", 3],
            "state": {"sku": "SKU-1", "atp": {"app": 40, "pos": 12}},
            "reset": True,
        },
    ),
    (
        "snap of a topic never written: the empty epoch, nothing stored",
        "server",
        {"t": "snap", "id": 5, "topic": "cart:m77", "cursor": ["-", 0], "state": {"lines": {}}},
    ),
    (
        "snap in pages: a page before the last (more, no cursor)",
        "server",
        {"t": "snap", "id": 3, "topic": "cart:m42", "state": {"lines": {"SKU-1": LINE}}, "more": True},
    ),
    (
        "snap in pages: the last page, with the cursor",
        "server",
        {
            "t": "snap",
            "id": 3,
            "topic": "cart:m42",
            "cursor": ["e7f3", 12],
            "state": {"lines": {"SKU-2": LINE}},
            "reset": True,
        },
    ),
    (
        "ev, required fields only",
        "server",
        {
            "t": "ev",
            "topic": "catalog",
            "cursor": ["c1", 1],
            "kind": "catalog.price",
            "data": {"sku": "SKU-1", "price": 1999},
            "at": T0 + 50,
        },
    ),
    (
        "ev, with origin and conflict",
        "server",
        {
            "t": "ev",
            "topic": "cart:m42",
            "cursor": ["e7f3", 13],
            "kind": "cart.set",
            "data": {
                "lines": {
                    "SKU-1": {
                        "qty": 5,
                        "vv": {"app-m42-a": 4, "pos-sh01-3": 8},
                        "dots": [["app-m42-a", 4, "s", 2, HLC0 + 7], ["pos-sh01-3", 8, "s", 5, HLC0 + 9]],
                    },
                    "SKU-2": None,
                }
            },
            "at": T0 + 60,
            "origin": ["pos-sh01-3", 8],
            "conflict": {"sku": "SKU-1", "winner": ["pos-sh01-3", 8, 5], "losers": [["app-m42-a", 4, 2]]},
        },
    ),
    ("ack, required fields only", "server", {"t": "ack", "seq": 1, "ok": True}),
    ("ack, applied, with result", "server", {"t": "ack", "seq": 7, "ok": True, "result": {"qty": 3}}),
    (
        "ack, rejection",
        "server",
        {
            "t": "ack",
            "seq": 10,
            "ok": False,
            "code": "limit_exceeded",
            "message": "a cart holds at most 200 lines",
        },
    ),
    (
        "ack, rejection: the cart would grow past its size bound",
        "server",
        {
            "t": "ack",
            "seq": 12,
            "ok": False,
            "code": "too_large",
            "message": "a cart holds at most 1048576 bytes (encoded)",
        },
    ),
    (
        "op, stock.reserve held until the brand's daily clearing time (resolved by the hub)",
        "client",
        {
            "t": "op",
            "seq": 13,
            "kind": "stock.reserve",
            "args": {"member": "m42", "sku": "SKU-1", "channel": "web", "qty": 1, "until": "clearing"},
        },
    ),
    (
        "ack, stock.reserve applied: the reservation id and its expiry",
        "server",
        {"t": "ack", "seq": 13, "ok": True, "result": {"rid": "app-1/13", "until": 1764979200000}},
    ),
    (
        "ack, rejection: the member is at their purchase limit for the SKU",
        "server",
        {
            "t": "ack",
            "seq": 14,
            "ok": False,
            "code": "purchase_limit_exceeded",
            "message": "the member is at their purchase limit for this SKU",
        },
    ),
    (
        "ack, rejection: a till's sale beyond its store's allotment",
        "server",
        {
            "t": "ack",
            "seq": 15,
            "ok": False,
            "code": "allotment_exceeded",
            "message": "the store's allotment holds fewer units",
        },
    ),
    (
        "ev, stock: available to promise per channel after a reservation",
        "server",
        {
            "t": "ev",
            "topic": "stock:SKU-1",
            "cursor": ["e1", 8],
            "kind": "stock.reserve",
            "data": {"on_hand": 50, "pool": 41, "sold": 0, "atp": {"*": 41, "web": 12}, "allot": {"s1": 5}},
            "at": 1764979200000,
            "origin": ["app-1", 13],
        },
    ),
    (
        "ack, replay of a rejected op: every field",
        "server",
        {
            "t": "ack",
            "seq": 11,
            "ok": False,
            "result": {"available": 1},
            "code": "insufficient_stock",
            "message": "1 available",
            "dup": True,
        },
    ),
    (
        "ack, replay of an applied op",
        "server",
        {"t": "ack", "seq": 7, "ok": True, "result": {"qty": 3}, "dup": True},
    ),
    ("err, required fields only", "server", {"t": "err", "code": "internal"}),
    (
        "err, seq_gap with ref",
        "server",
        {"t": "err", "code": "seq_gap", "message": "seq 12 after 10: expected 11", "ref": 12},
    ),
    (
        "err, rate_limited: every field",
        "server",
        {
            "t": "err",
            "code": "rate_limited",
            "message": "20 ops/s",
            "ref": 13,
            "retry_after_ms": 2000,
            "about": "op",
        },
    ),
    (
        "err answering a sub: a topic kind the hub does not serve yet",
        "server",
        {
            "t": "err",
            "code": "unsupported_topic",
            "message": "points topics are not served yet",
            "ref": 2147483649,
            "about": "sub",
        },
    ),
    ("ping from a hub", "server", {"t": "ping", "ts": T0 + 45_000}),
    ("pong from a hub", "server", {"t": "pong", "echo_ts": T0 + 15_000, "ts": T0 + 15_021}),
]


# Valid bytes the reference encoder would write differently: (name, direction, hex, frame). The frame is what
# a receiver must decode; encoding it gives the canonical bytes (``encodes_to``).
LENIENT: list[tuple[str, str, bytes, dict[str, Any]]] = [
    (
        "ping stats: integers where floats are due",
        "client",
        bytes.fromhex(
            "83a174a470696e67a274730ba5737461747382a66f7574626f7803ad6f7574626f785f6167655f6d73cd04e2"
        ),
        {"t": "ping", "ts": 11, "stats": {"outbox": 3.0, "outbox_age_ms": 1250.0}},
    ),
    (
        "the tag after the other keys",
        "client",
        bytes.fromhex("82a27473cf0000019b76dae298a174a470696e67"),
        {"t": "ping", "ts": T0 + 15_000},
    ),
    (
        "an integer in a wider encoding than needed (uint64 seq)",
        "client",
        bytes.fromhex(
            "84a174a26f70a3736571cf0000000000000001a46b696e64aa636172742e636c656172a46172677381a66d656d626572a36d3432"
        ),
        {"t": "op", "seq": 1, "kind": "cart.clear", "args": {"member": "m42"}},
    ),
]


def enc(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def fixmap(*pairs: bytes) -> bytes:
    return bytes([0x80 | len(pairs) // 2]) + b"".join(pairs)


PING = enc({"t": "ping", "ts": 1})
OP_HEAD = enc("t") + enc("op") + enc("seq") + enc(1) + enc("kind") + enc("cart.add") + enc("args")


def op_args(raw: bytes) -> bytes:
    """``{"t": "op", "seq": 1, "kind": "cart.add", "args": <raw>}``."""
    return b"\x84" + OP_HEAD + raw


def padded_ping(size: int) -> bytes:
    """A ``ping`` of exactly ``size`` bytes, padded with bin16 values under an unknown key."""
    n = -(-size // 8200)
    head = b"\x83" + PING[1:] + enc("pad") + b"\xdc" + n.to_bytes(2, "big")
    left = size - len(head) - 3 * n
    sizes = [left // n + (1 if i < left % n else 0) for i in range(n)]
    return head + b"".join(b"\xc5" + s.to_bytes(2, "big") + bytes(s) for s in sizes)


INVALID: list[tuple[str, str, bytes, ErrorCode]] = [
    (
        "frame larger than max_frame (65537 bytes to a hub)",
        "client",
        padded_ping(65_537),
        ErrorCode.FRAME_TOO_LARGE,
    ),
    ("empty message", "client", b"", ErrorCode.MALFORMED),
    (
        "truncated: map declares 2 entries, holds 1",
        "client",
        b"\x82" + enc("t") + enc("ping"),
        ErrorCode.MALFORMED,
    ),
    ("trailing byte after the frame", "client", PING + b"\xc0", ErrorCode.MALFORMED),
    ("reserved byte 0xc1", "client", b"\x83" + PING[1:] + enc("x") + b"\xc1", ErrorCode.MALFORMED),
    ("a lone reserved byte 0xc1: malformed before not a map", "client", b"\xc1", ErrorCode.MALFORMED),
    ("a truncated array: malformed before not a map", "client", b"\x92\x01", ErrorCode.MALFORMED),
    (
        "invalid UTF-8 under an unknown key",
        "client",
        b"\x83" + PING[1:] + enc("x") + b"\xa2\xff\xfe",
        ErrorCode.MALFORMED,
    ),
    (
        "invalid UTF-8 under an unknown key before an ill-typed field",
        "client",
        b"\x83" + enc("t") + enc("ping") + enc("ts") + enc("1") + enc("x") + b"\xa2\xff\xfe",
        ErrorCode.MALFORMED,
    ),
    (
        "an array as a map key",
        "client",
        b"\x83" + PING[1:] + enc("x") + b"\x81\x90\x01",
        ErrorCode.MALFORMED,
    ),
    (
        "invalid UTF-8 in a string field",
        "client",
        b"\x84"
        + enc("t")
        + enc("op")
        + enc("seq")
        + enc(1)
        + enc("kind")
        + b"\xa8cart.ad\xff"
        + enc("args")
        + b"\x80",
        ErrorCode.MALFORMED,
    ),
    ("not a map: an array", "client", enc(["ping", 1]), ErrorCode.BAD_FRAME),
    (
        "extension type (fixext1) under an unknown key",
        "client",
        b"\x83" + PING[1:] + enc("x") + b"\xd4\x01\x00",
        ErrorCode.BAD_FRAME,
    ),
    (
        "an extension type before a string over max_str: the first in byte order",
        "client",
        b"\x83" + PING[1:] + enc("x") + b"\x92\xd4\x01\x00\xdb\xff\xff\xff\xff",
        ErrorCode.BAD_FRAME,
    ),
    (
        "an ops element without its tag",
        "client",
        enc({"t": "ops", "ops": [{"seq": 1, "kind": "cart.clear", "args": {"member": "m42"}}]}),
        ErrorCode.BAD_FRAME,
    ),
    ("no tag", "client", enc({"ts": 1}), ErrorCode.BAD_FRAME),
    (
        "missing required field (op without args)",
        "client",
        enc({"t": "op", "seq": 1, "kind": "cart.add"}),
        ErrorCode.BAD_FRAME,
    ),
    (
        "ill-typed field (seq as a string)",
        "client",
        enc({"t": "op", "seq": "1", "kind": "cart.add", "args": {}}),
        ErrorCode.BAD_FRAME,
    ),
    (
        "field out of range (seq 0)",
        "client",
        enc({"t": "op", "seq": 0, "kind": "cart.add", "args": {}}),
        ErrorCode.BAD_FRAME,
    ),
    (
        "client_id outside its alphabet",
        "client",
        enc({"t": "hello", "versions": [1], "token": "", "client_id": "pos 1"}),
        ErrorCode.BAD_FRAME,
    ),
    (
        "nil for a field that is not optional",
        "server",
        enc({"t": "ack", "seq": 1, "ok": True, "message": None}),
        ErrorCode.BAD_FRAME,
    ),
    (
        "snap without a cursor that is not a page",
        "server",
        enc({"t": "snap", "id": 1, "topic": "cart:m42", "state": {"lines": {}}}),
        ErrorCode.BAD_FRAME,
    ),
    (
        "snap page (more) with a cursor",
        "server",
        enc({"t": "snap", "id": 1, "topic": "cart:m42", "cursor": ["e", 1], "state": {}, "more": True}),
        ErrorCode.BAD_FRAME,
    ),
    ("unknown tag", "client", enc({"t": "subscribe", "id": 1, "topic": "catalog"}), ErrorCode.UNKNOWN_FRAME),
    (
        "a hub's tag sent by a client",
        "client",
        enc({"t": "ack", "seq": 1, "ok": True}),
        ErrorCode.UNKNOWN_FRAME,
    ),
    (
        "a client's tag sent by a hub",
        "server",
        enc({"t": "op", "seq": 1, "kind": "cart.clear", "args": {}}),
        ErrorCode.UNKNOWN_FRAME,
    ),
    ("nested 9 deep", "client", op_args(b"\x81\xa1a" + b"\x91" * 6 + b"\x80"), ErrorCode.TOO_DEEP),
    (
        "str16 of 8193 bytes (declared)",
        "client",
        b"\x83" + PING[1:] + enc("x") + b"\xda\x20\x01",
        ErrorCode.TOO_LONG,
    ),
    (
        "str32 declaring 4 GiB",
        "server",
        b"\x83" + PING[1:] + enc("x") + b"\xdb\xff\xff\xff\xff",
        ErrorCode.TOO_LONG,
    ),
    ("array16 of 1025 elements (declared)", "client", op_args(b"\x81\xa1a\xdc\x04\x01"), ErrorCode.TOO_LONG),
    ("map32 declaring 2**32-1 entries", "client", b"\xdf\xff\xff\xff\xff" + PING[1:], ErrorCode.TOO_LONG),
    (
        "16385 entries in one frame (4 in the frame, 1 in args, 17 + 16363 in arrays)",
        "client",
        op_args(
            b"\x81\xa1a\xdc\x00\x11" + (b"\xdc\x03\xe8" + bytes(1000)) * 16 + b"\xdc\x01\x6b" + bytes(363)
        ),
        ErrorCode.TOO_LONG,
    ),
]


def cart_line_problems(frame: dict[str, Any]) -> list[str]:
    """Cart lines in a snapshot or event that the cart rules (protocol/cart.py) would not produce: qty,
    attrs and vv must be those the dots give, and the dots in canonical order."""
    if not str(frame.get("topic", "")).startswith("cart:"):
        return []
    holder = frame.get("state") if frame["t"] == "snap" else frame.get("data")
    problems: list[str] = []
    for sku, line in ((holder or {}).get("lines") or {}).items():
        if line is None:
            continue
        dots = line["dots"]
        derived = {"qty": cart.line_qty(line), "vv": cart.line_vv(line), "attrs": cart.line_attrs(line)}
        if {"qty": line["qty"], "vv": line["vv"], "attrs": line.get("attrs", {})} != derived:
            problems.append(f"line {sku} is not what its dots give: {derived}")
        if dots != sorted(dots, key=cart.dot_order) or ("attrs" in line and not line["attrs"]):
            problems.append(f"line {sku}: dots out of canonical order, or empty attrs not omitted")
    return problems


def build() -> list[dict[str, Any]]:
    """Every vector, checked against the implementation; raises SystemExit on a disagreement."""
    vectors: list[dict[str, Any]] = []
    problems: list[str] = []
    for name, direction, frame in VALID:
        data = enc(frame)
        try:
            decoded = DECODERS[direction].decode(data)
        except ProtocolError as exc:
            problems.append(f"{name}: refused with {exc}")
            continue
        if msgspec.to_builtins(decoded) != frame or codec.encode(decoded) != data:
            problems.append(f"{name}: does not round-trip as written (field order, defaults?)")
        problems += [f"{name}: {p}" for p in cart_line_problems(frame)]
        vectors.append({"name": name, "direction": direction, "hex": data.hex(), "frame": frame})
    for name, direction, data, frame in LENIENT:
        try:
            decoded = DECODERS[direction].decode(data)
        except ProtocolError as exc:
            problems.append(f"{name}: refused with {exc}")
            continue
        canonical = codec.encode(decoded)
        if msgspec.to_builtins(decoded) != frame or canonical != enc(frame) or canonical == data:
            problems.append(f"{name}: does not decode to its frame, or is the canonical encoding")
        vectors.append(
            {
                "name": name,
                "direction": direction,
                "hex": data.hex(),
                "frame": frame,
                "encodes_to": canonical.hex(),
            }
        )
    for name, direction, data, code in INVALID:
        try:
            DECODERS[direction].decode(data)
        except ProtocolError as exc:
            if exc.code is not code:
                problems.append(f"{name}: refused with {exc.code}, expected {code}")
        else:
            problems.append(f"{name}: accepted, expected {code}")
        vectors.append({"name": name, "direction": direction, "hex": data.hex(), "error": str(code)})
    names = [v["name"] for v in vectors]
    problems += [f"duplicate name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise SystemExit("the implementation disagrees with these vectors:\n  " + "\n  ".join(problems))
    return vectors


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python scripts/gen_vectors.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
