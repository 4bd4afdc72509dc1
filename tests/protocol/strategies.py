"""Hypothesis strategies for the frames of protocol version 1.

Every strategy draws *valid* values: within the field bounds of :mod:`protocol.frames` and small enough to
pass the decoding limits of :mod:`protocol.codec` in the direction the frame travels (client frames within
``SERVER_LIMITS``, hub frames within ``CLIENT_LIMITS``). Optional fields are drawn both absent (their default)
and present, so both the omitted and the explicit encodings are exercised.

Depth budget: the deepest container any frame here produces is 6 (``ops`` → op → ``args`` → two nested
levels), below the codec's ``max_depth``.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

from protocol import frames

U32 = 2**32 - 1
U53 = 2**53 - 1
ID_ALPHABET = string.ascii_letters + string.digits + "._:-"
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_."  # base64url and the dots of a JWT

u32 = st.integers(0, U32)
u53 = st.integers(0, U53)
seqs = st.integers(1, U53)
millis = u53


def small_text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Any Unicode text (no surrogates: they are not UTF-8) of at most ``max_size`` code points."""
    return st.text(min_size=min_size, max_size=max_size)


client_ids = st.text(ID_ALPHABET, min_size=1, max_size=64)
vv_keys = st.just("~") | client_ids
topic_keys = st.text(string.ascii_letters + string.digits + "._@-", min_size=1, max_size=64)
topics = st.one_of(
    st.just("catalog"),
    st.builds(
        "{}:{}".format,
        st.sampled_from(["cart", "points", "member", "stock", "store"]),
        topic_keys,
    ),
    small_text(160, min_size=3),  # the frame layer bounds only the length; topic grammar is checked later
)
op_kinds = st.sampled_from(
    ["cart.add", "cart.set", "cart.remove", "cart.clear", "stock.reserve"]
) | small_text(64, min_size=1)
codes = st.sampled_from(["insufficient_stock", "seq_gap", "not_permitted"]) | small_text(64, min_size=1)
epochs = small_text(32, min_size=1)
cursors = st.builds(frames.Cursor, epoch=epochs, offset=u53)
origins = st.builds(frames.Origin, client_id=client_ids, seq=seqs)

# --- open payloads -------------------------------------------------------------------------------------

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # every MessagePack integer width
    st.floats(allow_nan=False),  # NaN is valid on the wire but never equal to itself
    small_text(16),
    st.binary(max_size=16),
)
payload_keys = small_text(12)


def payload_values(depth: int) -> st.SearchStrategy[Any]:
    """A payload value with at most ``depth`` container levels (lists only: arrays decode as lists)."""
    if depth == 0:
        return scalars
    inner = payload_values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3),
        st.dictionaries(payload_keys, inner, max_size=3),
    )


def payloads(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    """An open map (op ``args``, event ``data``, …) with ``depth`` container levels below it."""
    return st.dictionaries(payload_keys, payload_values(depth), max_size=4)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


version_vectors = st.dictionaries(vv_keys, u53, max_size=6)
stats = st.dictionaries(small_text(64), st.floats(allow_nan=False), max_size=6)

# --- frames --------------------------------------------------------------------------------------------

hellos = st.builds(
    frames.Hello,
    versions=st.lists(u32, min_size=1, max_size=16),
    token=st.text(TOKEN_ALPHABET, max_size=600),
    client_id=client_ids,
    ts=st.just(0) | millis,
    agent=small_text(128),
)
welcomes = st.builds(
    frames.Welcome,
    version=u32,
    session=small_text(64),
    hub_time=millis,
    echo_ts=millis,
    last_seq=u53,
    heartbeat_ms=millis,
    max_frame=u32,
    max_batch=u32,
)
subscribes = st.builds(frames.Subscribe, id=u32, topic=topics, cursor=optional(cursors))
unsubscribes = st.builds(frames.Unsubscribe, topic=topics)
snapshots = st.builds(
    frames.Snapshot,
    id=u32,
    topic=topics,
    cursor=cursors,
    state=optional(payloads(3)),
    reset=st.booleans(),
)
events = st.builds(
    frames.Event,
    topic=topics,
    cursor=cursors,
    kind=op_kinds,
    data=payloads(3),
    at=millis,
    origin=optional(origins),
    conflict=optional(payloads()),
)
ops = st.builds(
    frames.Op,
    seq=seqs,
    kind=op_kinds,
    args=payloads(),
    ctx=optional(version_vectors),
    hlc=st.just(0) | u53,
    ts=st.just(0) | millis,
)
op_batches = st.builds(frames.OpBatch, ops=st.lists(ops, min_size=1, max_size=6))
acks = st.builds(
    frames.Ack,
    seq=seqs,
    ok=st.booleans(),
    result=optional(payloads()),
    code=optional(codes),
    message=st.just("") | small_text(1024),
    dup=st.booleans(),
)
errors = st.builds(
    frames.Error,
    code=codes,
    message=st.just("") | small_text(1024),
    ref=optional(u53),
    retry_after_ms=optional(millis),
)
pings = st.builds(frames.Ping, ts=millis, stats=optional(stats))
pongs = st.builds(frames.Pong, echo_ts=millis, ts=millis)

BY_TAG: dict[str, st.SearchStrategy[Any]] = {
    "hello": hellos,
    "welcome": welcomes,
    "sub": subscribes,
    "unsub": unsubscribes,
    "snap": snapshots,
    "ev": events,
    "op": ops,
    "ops": op_batches,
    "ack": acks,
    "err": errors,
    "ping": pings,
    "pong": pongs,
}
"""One strategy per wire tag; a test checks it covers ``frames.TAGS`` exactly."""


def frames_of(kinds: tuple[type[frames.Frame], ...]) -> st.SearchStrategy[Any]:
    return st.one_of([BY_TAG[str(kind.__struct_config__.tag)] for kind in kinds])


client_frames = frames_of(frames.CLIENT_FRAMES)
"""Frames a client sends (a hub decodes them within ``SERVER_LIMITS``)."""
server_frames = frames_of(frames.SERVER_FRAMES)
"""Frames a hub sends (a client decodes them within ``CLIENT_LIMITS``)."""
