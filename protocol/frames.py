"""The frames of protocol version 1: small, frozen, typed structures with stable wire tags.

Every frame is one MessagePack map whose key ``t`` holds the frame's tag (``"op"``, ``"ack"``, …). Field names
are the wire keys. Rules for evolving them (PROTOCOL.md §Versioning): a tag is never reused; a field is never
removed, renamed or retyped within a major version; new fields are optional with a default, and receivers
ignore keys they do not know.

Open payloads (op ``args``, event ``data``, snapshot ``state``) are typed per op kind / topic kind one layer
up (:mod:`protocol.ops`); here they are bounded by the codec's limits (depth, lengths), never left unchecked.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeAlias

import msgspec

PROTOCOL_VERSIONS: Final = (1,)
"""Protocol versions this implementation speaks, oldest first."""

_U32 = msgspec.Meta(ge=0, le=2**32 - 1)
_U53 = msgspec.Meta(ge=0, le=2**53 - 1)  # exact in every language's doubles (JSON, JavaScript)

Seq = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
"""A client's op sequence number: 1, 2, 3, … per ``client_id``, never reused, never skipped."""
Millis = Annotated[int, _U53]
"""Unix time in milliseconds."""
ReqId = Annotated[int, _U32]
"""A request id chosen by the client to match replies (``sub`` → ``snap``/``err``)."""
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+\Z")]
"""A device's stable identity, persisted by the SDK and bound to its token."""
Topic = Annotated[str, msgspec.Meta(min_length=3, max_length=160)]
"""``<kind>:<id>`` (``cart:m42``) or a bare kind (``catalog``); parsed by :mod:`protocol.topics`."""
OpKind = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]
Epoch = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
Offset = Annotated[int, _U53]
VvKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^(~|[A-Za-z0-9._:-]+)\Z")]
"""A version-vector entry: a ``client_id``, or ``~`` for the hub's own (folded) entry."""
VersionVector = Annotated[dict[VvKey, Annotated[int, _U53]], msgspec.Meta(max_length=256)]
"""``client_id → counter``; see :mod:`protocol.vv`."""
StatName = Annotated[str, msgspec.Meta(max_length=64)]
Stats = Annotated[dict[StatName, float], msgspec.Meta(max_length=64)]
"""Named figures a client reports in its pings (ack latency, outbox backlog, …)."""
Payload = dict[str, Any]
"""An open map, typed by the op kind or topic kind that owns it."""


class Frame(msgspec.Struct, frozen=True, tag_field="t", omit_defaults=True, forbid_unknown_fields=False):
    """Base of every frame. The subclass's ``tag`` is its wire tag."""


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    """A position in a topic's history: ``[epoch, offset]``.

    ``offset`` counts the topic's events one by one (the first event is 1; a cursor at 0 has seen none).
    ``epoch`` changes whenever the topic's history was lost or rebuilt; a cursor of another epoch is
    meaningless and is answered with a reset snapshot.
    """

    epoch: Epoch
    offset: Offset


EMPTY_EPOCH: Final = "-"
"""The epoch of a topic that has no state and no history (never written, or gone with its data).

A hub stores nothing for such a topic: its snapshot's cursor is ``[EMPTY_EPOCH, 0]``. That cursor is honoured
by the first real epoch of the topic when that epoch started from the empty state (events from offset 1
follow); otherwise it gets a reset (PROTOCOL.md §6.1). No minted epoch equals it.
"""


class Origin(msgspec.Struct, frozen=True, array_like=True):
    """Who caused an event: ``[client_id, seq]`` of the op, so a client recognises its own writes."""

    client_id: ClientId
    seq: Seq


# --- handshake -----------------------------------------------------------------------------------------


class Hello(Frame, tag="hello", frozen=True):
    """Client → hub, first frame. Offers protocol versions and authenticates."""

    versions: Annotated[list[Annotated[int, _U32]], msgspec.Meta(min_length=1, max_length=16)]
    token: Annotated[str, msgspec.Meta(max_length=8192)]
    client_id: ClientId
    ts: Millis = 0
    """The client's clock when sending, echoed in ``welcome`` to estimate the clock offset."""
    agent: Annotated[str, msgspec.Meta(max_length=128)] = ""


class Welcome(Frame, tag="welcome", frozen=True):
    """Hub → client, answer to ``hello``: the session is open."""

    version: Annotated[int, _U32]
    session: Annotated[str, msgspec.Meta(max_length=64)]
    hub_time: Millis
    echo_ts: Millis
    last_seq: Annotated[int, _U53]
    """The highest ``seq`` of this ``client_id`` the hub has applied: replay starts after it."""
    heartbeat_ms: Millis
    max_frame: Annotated[int, _U32]
    max_batch: Annotated[int, _U32]


# --- subscriptions -------------------------------------------------------------------------------------


class Subscribe(Frame, tag="sub", frozen=True):
    """Client → hub: start receiving a topic. With a ``cursor``: resume after it."""

    id: ReqId
    topic: Topic
    cursor: Cursor | None = None


class Unsubscribe(Frame, tag="unsub", frozen=True):
    """Client → hub: stop receiving a topic. Unknown topics are ignored."""

    topic: Topic


class Snapshot(Frame, tag="snap", frozen=True):
    """Hub → client, answer to ``sub``.

    ``state`` is the topic's state at ``cursor`` (``None`` when resuming: the missed events follow).
    ``reset`` is true when the client's cursor could not be honoured (history trimmed, epoch changed):
    the client must replace its state for this topic. Live events follow with offsets after ``cursor``.

    A state too large for one frame comes in pages (:mod:`protocol.snapshots`): every page but the last has
    ``more`` and part of the state, and no ``cursor`` nor ``reset``; the last page has them, as one ``snap``
    would. A ``snap`` that is neither (no cursor, no ``more``) is not a frame: ``bad_frame``.
    """

    id: ReqId
    topic: Topic
    cursor: Cursor | None = None
    state: Payload | None = None
    reset: bool = False
    more: bool = False

    def __post_init__(self) -> None:
        if self.more:
            if self.cursor is not None or self.state is None or self.reset:
                raise ValueError("a snapshot page with `more` has a state, and no cursor nor reset")
        elif self.cursor is None:
            raise ValueError("a snapshot has a cursor (only pages with `more` have none)")


class Event(Frame, tag="ev", frozen=True):
    """Hub → client: one change applied to a topic, in offset order, without gaps."""

    topic: Topic
    cursor: Cursor
    kind: OpKind
    data: Payload
    at: Millis
    """Commit time on the hub's clock."""
    origin: Origin | None = None
    conflict: Payload | None = None
    """Set when the change was concurrent with another: what lost, and why (see the cart rules)."""


# --- ops ---------------------------------------------------------------------------------------------


class Op(Frame, tag="op", frozen=True):
    """Client → hub: one write intent, identified by ``(client_id, seq)``."""

    seq: Seq
    kind: OpKind
    args: Payload
    ctx: VersionVector | None = None
    """Causal context: the version vector of what the client had seen of the target."""
    hlc: Annotated[int, _U53] = 0
    """Hybrid-logical-clock timestamp of the op (breaks ties between concurrent writes)."""
    ts: Millis = 0
    """Client wall clock when the op was made (for latency reporting only, never for ordering)."""


class _TaggedOp(Op, tag="\x00op", frozen=True):
    """Never sent. Decoding a batch's elements as ``Op | _TaggedOp`` makes ``"t": "op"`` required in each:
    msgspec treats the tag of a lone struct type as optional, and PROTOCOL.md §6.9 does not."""


class OpBatch(Frame, tag="ops", frozen=True):
    """Client → hub: several ops, applied in order as if sent one by one. Each is a complete ``op`` map."""

    ops: Annotated[list[Op | _TaggedOp], msgspec.Meta(min_length=1, max_length=1024)]


class Ack(Frame, tag="ack", frozen=True):
    """Hub → client: the outcome of the op ``seq``. A rejection is an outcome too (``ok`` false, ``code``)."""

    seq: Seq
    ok: bool
    result: Payload | None = None
    code: Code | None = None
    message: Text = ""
    dup: bool = False
    """True when the op had been applied before: ``result`` is the original one."""


ABOUT_OP: Final = "op"
"""``err.about`` when ``err.ref`` is the ``seq`` of an op (for a batch, of the op concerned)."""
ABOUT_SUB: Final = "sub"
"""``err.about`` when ``err.ref`` is the ``id`` of a ``sub``."""


class Error(Frame, tag="err", frozen=True):
    """Hub → client (or client → hub): a request or frame was refused; the connection stays open."""

    code: Code
    message: Text = ""
    ref: Annotated[int, _U53] | None = None
    """The ``id`` or ``seq`` of the frame the error answers, when it has one."""
    retry_after_ms: Millis | None = None
    about: Annotated[str, msgspec.Meta(max_length=16)] = ""
    """What ``ref`` is: ``"op"`` (an op's ``seq``) or ``"sub"`` (a ``sub``'s ``id``); empty without ``ref``
    and from hubs older than the field (PROTOCOL.md §6.11). A receiver ignores a value it does not know."""


# --- liveness ------------------------------------------------------------------------------------------


class Ping(Frame, tag="ping", frozen=True):
    """Either direction: keep-alive and clock sample. Clients may attach sync statistics."""

    ts: Millis
    stats: Stats | None = None


class Pong(Frame, tag="pong", frozen=True):
    """Answer to ``ping``: echoes its ``ts`` and gives the answering peer's clock."""

    echo_ts: Millis
    ts: Millis


AnyFrame: TypeAlias = (
    Hello | Welcome | Subscribe | Unsubscribe | Snapshot | Event | Op | OpBatch | Ack | Error | Ping | Pong
)
CLIENT_FRAMES: Final = (Hello, Subscribe, Unsubscribe, Op, OpBatch, Ping, Pong, Error)
"""Frames a client may send."""
SERVER_FRAMES: Final = (Welcome, Snapshot, Event, Ack, Error, Ping, Pong)
"""Frames a hub may send."""
ALL_FRAMES: Final = (
    Hello,
    Welcome,
    Subscribe,
    Unsubscribe,
    Snapshot,
    Event,
    Op,
    OpBatch,
    Ack,
    Error,
    Ping,
    Pong,
)
TAGS: Final = {cls.__struct_config__.tag: cls for cls in ALL_FRAMES}
"""Wire tag → frame class."""
