"""The SDK's sync engine, sans-I/O: outbox order, in-flight window, acks and rejections, local views.

Theory of operation
-------------------
:class:`SyncEngine` is a plain synchronous object. It owns no socket, no database, no event loop and no clock:
the driver (:class:`clients.client.SyncClient`) feeds it what happened — a local op, a frame from the hub, a
connection opening or closing, the time — and takes back what to do: frames to send (:meth:`frames_to_send`),
events (:meth:`events_received`: ops settled, views changed, ops to load from the outbox) and the records to
persist (:meth:`take_dirty_topics`). Tests drive it with a fake clock and a fake hub.

State is split the way automerge splits its sync state, because only part of it may survive a restart:

* **persisted** (the driver writes it to SQLite, :mod:`clients.store`): ``client_id``, the next ``seq``, the
  HLC, the outbox (every op not yet settled, plus settled ones whose effect the cached server state does not
  show yet), rejections, and per topic the last server state, its cursor and ``reflected`` — the highest
  ``seq`` of ours that the cached server state is known to include;
* **per connection** (rebuilt on every welcome): the in-flight window, the send queue, the pause after a
  ``rate_limited``/``unavailable``, the subscription ids and which topics are in sync.

**Outbox.** Ops get ``seq`` 1, 2, 3, … in the order they are made. The driver commits an op to SQLite
(:meth:`prepare` → commit → :meth:`commit`) before the engine may send it, so a crash can never leave the hub
holding a ``seq`` the device forgot (it would reuse it for another op, which the hub would answer as a
duplicate: a silent loss). Ops are sent strictly in ``seq`` order, in ``ops`` batches of at most
``welcome.max_batch`` ops and ``welcome.max_frame`` bytes, with at most ``window`` of them unacknowledged.
After a (re)connect every op still in the outbox is sent again, including those at or below
``welcome.last_seq`` whose ack was lost: the hub answers them with their original outcome, marked ``dup``.
An ``err`` with ``ref = seq`` (``seq_gap``, ``rate_limited``, ``unavailable``, ``internal``,
``batch_too_large``) means "not settled": that op and every later one in flight go back to the queue, and
sending pauses for ``retry_after_ms`` (or a backoff). An ack — success or rejection — settles the op; a
rejection becomes a stored rejection and never blocks the ops behind it. Only a window of ops is held in
memory for sending: the rest is loaded from the outbox on demand (:class:`LoadOps`), so 100,000 pending ops
do not mean 100,000 decoded frames.

**Replaying a backlog.** A session that opens with at least :data:`REPLAY_SUBSCRIBE_AFTER` unsettled ops
(a till back from a day offline) subscribes at once only the topics none of them changes; a topic our
pending ops change is subscribed once every op committed before the welcome is settled (or the outbox
stalls), without its cursor: one snapshot then shows them all, where a resume would bring one event per
replayed op, each carrying its line — most of the client's work in a replay, for a view whose overlay
already shows those ops. Meanwhile those topics are not in sync (``wait_synced`` waits for them) and show
the cached state with our ops on top; what other devices changed there shows with the snapshot.

**Views.** A topic's local view is its server state (last snapshot plus the events applied after it) with
our own *overlay* rebased on top: every op of ours on that topic with ``seq > reflected``, applied with the
cart rules of :mod:`protocol.cart` in ``seq`` order. An op leaves the overlay when the server state shows it:
an event with ``origin = (us, s)`` shows every op of ours up to ``s`` on that topic (the hub applies one
client's ops in order), and a snapshot with state, read after the welcome or after an ack, shows every op
settled by then. Rejected ops leave at once. A ``ctx`` is the version vector of the view at the time the op
is made (the line's for ``set``/``remove``, the cart-wide merge for ``clear``), so an op removes exactly what
the device showed. The prediction never folds (base dots are numbered by the hub alone) and merges runs of
our own adds on a line into one dot, which is exact for everything the view derives (quantity, vector,
winner, attrs) and keeps a line small however many adds are queued offline.

**Cursors.** Per topic the engine keeps the cursor of the last snapshot or event applied. Events with the
next offset are applied, older ones ignored as duplicates, and a gap or another epoch makes it subscribe
again from its cursor. A snapshot with state replaces the server state (``reset`` tells the application that
its cache was discarded). A snapshot too large for one frame arrives in pages, joined before it counts
(:class:`protocol.snapshots.SnapshotAssembler`); a cursor ``["-", 0]`` (a topic never written) is continued
by offset 0 of the topic's first history (PROTOCOL §6.1).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Final

from clients.errors import OutboxStalled, SubscriptionRefused, UnexpectedEvent
from clients.events import (
    ChangeCause,
    EngineEvent,
    LoadOps,
    Notice,
    OpSettled,
    SubscriptionFailed,
    TopicChanged,
    TopicRecord,
    TopicSynced,
)
from clients.types import LocalView, op_topic, view_type
from clients.types.base import MAX_CTX
from clients.types.cart import CartView, predict_line

# The engine's unit tests import these from here, as before the per-type modules.
from clients.types.cart import Pending as _Pending  # noqa: F401  (tests import it from here)
from protocol import codec, frames
from protocol import hlc as hlcs
from protocol import stats as report
from protocol.datatype import check_shape
from protocol.datatype import check_shape as _check  # noqa: F401  (tests import it from here)
from protocol.errors import ErrorCode, SyncError
from protocol.ops import parse_args
from protocol.snapshots import SnapshotAssembler
from protocol.types.cart import CartEventData as _CartEventData  # noqa: F401  (tests import it from here)

DEFAULT_WINDOW: Final = 1024
"""Ops sent and not yet acknowledged, at most (further capped by ``welcome.max_batch``, PROTOCOL §7.2)."""
DEFAULT_QUEUE: Final = 4096
"""Unsent ops held in memory; the rest of the outbox stays in SQLite until the window needs it."""
DEFAULT_PAGE: Final = 1024
"""Ops loaded from the outbox at a time."""
DEFAULT_MAX_FRAME: Final = 65_536
"""The hub's frame limit before any welcome has told the real one (the reference hub's default)."""
SUB_ID_BASE: Final = 1 << 31
"""Subscription ids start here. ``err.about`` says whether ``ref`` is an op's ``seq`` or a ``sub``'s ``id``;
for hubs older than that field, ids far above any realistic ``seq`` keep the two apart."""
RETRY_INITIAL_MS: Final = 250
RETRY_MAX_MS: Final = 30_000
STALLED_RETRY_MS: Final = 30_000
"""How often to retry when the hub answers ``seq_gap`` for our oldest op (:class:`OutboxStalled`)."""
REPLAY_SUBSCRIBE_AFTER: Final = 256
"""An outbox holding at least this many unsettled ops when a session opens is replayed before the topics
our ops change are subscribed (:meth:`SyncEngine.connected`): one snapshot each once the replay is
settled, instead of one event per replayed op."""
_FRAME_OVERHEAD: Final = 32
"""Bytes of an ``ops`` frame besides its ops: the map header, ``t``, the key and the array header."""
_SAMPLES: Final = 512
_NOT_FAILURES: Final = frozenset({ErrorCode.SEQ_GAP, ErrorCode.BATCH_TOO_LARGE, ErrorCode.RATE_LIMITED})
"""Unsettled-op codes that are flow control, not the hub failing to apply ops (no ``status.last_error``)."""


# --- statistics ----------------------------------------------------------------------------------------


class _Samples:
    """Latency samples since the last report: the last few kept for percentiles, every one counted in the
    histogram of :mod:`protocol.stats` (which the hub adds up across devices)."""

    __slots__ = ("_counts", "_sum", "_values")

    def __init__(self) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=_SAMPLES)
        self._counts = [0] * (len(report.BOUNDS_MS) + 1)
        self._sum = 0.0

    def add(self, value: float) -> None:
        self._values.append(value)
        self._counts[report.bucket(value)] += 1
        self._sum += value

    def __len__(self) -> int:
        return len(self._values)

    def histogram(self, kind: str) -> dict[str, float]:
        return report.encode(kind, self._counts, self._sum)

    def clear(self) -> None:
        self._values.clear()
        self._counts = [0] * (len(report.BOUNDS_MS) + 1)
        self._sum = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self._values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the engine ----------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _InFlight:
    op: frames.Op
    sent_at: int


class SyncEngine:
    """The client's sync state machine. See the module docstring for the theory of operation.

    Construct it from the persisted state (:mod:`clients.store` loads it), add every subscribed topic with
    :meth:`load_topic`, then feed it. ``pending`` / ``oldest_pending_ms`` describe the outbox as stored (ops
    not settled), which the engine keeps counting from there.
    """

    def __init__(
        self,
        client_id: str,
        *,
        next_seq: int = 1,
        hlc: int = 0,
        pending: int = 0,
        oldest_pending_ms: int | None = None,
        window: int = DEFAULT_WINDOW,
        queue_limit: int = DEFAULT_QUEUE,
        page: int = DEFAULT_PAGE,
    ) -> None:
        if window < 1 or queue_limit < 1 or page < 1 or next_seq < 1:
            raise ValueError("window, queue_limit, page and next_seq must be positive")
        self.client_id = client_id
        self._next_seq = next_seq
        self._clock = hlcs.HybridClock(hlc)
        self._topics: dict[str, LocalView] = {}
        self._events: list[EngineEvent] = []
        self._dirty: set[str] = set()
        self._uncommitted: list[frames.Op] = []
        # the outbox (persisted), as far as the engine tracks it
        self._pending = pending
        self._oldest_ms = oldest_pending_ms
        self._queue: collections.deque[frames.Op] = collections.deque()  # unsent, ascending, contiguous
        self._queue_limit = queue_limit
        self._page = page
        self._loaded_upto = 0  # every unsettled op with seq <= this is in the queue or in flight
        self._store_has_more = pending > 0
        self._loading = False
        self._committed_while_loading = False
        # per connection
        self._window_cap = window
        self._open = False
        self._welcome: frames.Welcome | None = None
        self._window = window
        self._batch_cap = window
        self._max_frame = DEFAULT_MAX_FRAME
        self._in_flight: dict[int, _InFlight] = {}
        self._settled_upto = 0
        self._pause_until = 0
        self._retry_ms = RETRY_INITIAL_MS
        self._failing = False  # an op was refused as not settled (unavailable, internal) since the last ack
        self._sub_ids: dict[int, str] = {}
        self._deferred: dict[str, None] = {}  # topics subscribed once the replay up to _replay_upto settles
        self._replay_upto = 0
        self._next_sub_id = SUB_ID_BASE
        self._subs_out: list[frames.Frame] = []
        self._pages = SnapshotAssembler()
        """Snapshots that come in pages (PROTOCOL §6.6), until their last page."""
        self._clock_offset_ms: int | None = None
        # reporting
        self._ack_ms = _Samples()
        self._sync_ms = _Samples()

    # -- persisted state ----------------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next op gets (persist it with every committed op)."""
        return self._next_seq

    @property
    def hlc(self) -> int:
        """The hybrid logical clock's last value (persist it so it never runs backwards)."""
        return self._clock.last

    def load_topic(self, record: TopicRecord, overlay: Iterable[frames.Op] = ()) -> LocalView:
        """Add a topic from its stored record, with the stored ops of ours on it (settled or not)."""
        view = view_type(record.topic)(record, self.client_id)
        for op in overlay:
            view.add_op(op)
        self._topics[record.topic] = view
        return view

    def add_overlay(self, view: LocalView, op: frames.Op) -> None:
        """Put one stored op of ours back on top of a loaded topic (ops in ascending ``seq``)."""
        view.add_op(op)

    def touch(self, topic: str) -> None:
        """Have this topic's record saved with the next :meth:`take_dirty_topics` (a topic the driver had kept
        out of its store until now)."""
        if topic in self._topics:
            self._dirty.add(topic)

    def take_dirty_topics(self) -> list[TopicRecord]:
        """Records of topics whose server state, cursor or ``reflected`` changed since the last call."""
        records = [self._topics[t].record() for t in sorted(self._dirty) if t in self._topics]
        self._dirty.clear()
        return records

    # -- topics -------------------------------------------------------------------------------------------

    def view(self, topic: str) -> LocalView | None:
        return self._topics.get(topic)

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    def subscribe(self, topic: str) -> LocalView:
        """Start syncing a topic (idempotent); it stays subscribed, across restarts, until unsubscribed."""
        view = self._topics.get(topic)
        if view is None:
            view = self.load_topic(TopicRecord(topic))
            self._dirty.add(topic)
            if self._open:
                self._send_sub(view)
        return view

    def unsubscribe(self, topic: str) -> None:
        """Stop syncing a topic and forget its cached state (ops already made on it are still sent)."""
        view = self._topics.pop(topic, None)
        if view is None:
            return
        if view.sub_id is not None:
            self._sub_ids.pop(view.sub_id, None)
        held_back = topic in self._deferred  # never subscribed on this connection: nothing to end
        self._deferred.pop(topic, None)
        if self._open and not held_back:
            self._subs_out.append(frames.Unsubscribe(topic=topic))
        self._dirty.discard(topic)

    # -- local ops ----------------------------------------------------------------------------------------

    def prepare(self, kind: str, args: Mapping[str, Any], now_ms: int) -> frames.Op:
        """Number and stamp a new op, and show it in its topic's view; :meth:`commit` once it is stored.

        Raises :class:`~protocol.errors.OpRejected` (``unknown_op``, ``bad_args``) for an op the hub would
        refuse for its shape, and ValueError for one too large to ever be sent: nothing is numbered then.
        """
        parse_args(kind, dict(args))  # the hub's own check, at the call site
        topic = op_topic(kind, args)
        view = self._topics.get(topic)
        if view is None:
            view = self.subscribe(topic)
        clean = {k: v for k, v in args.items() if v is not None}
        ctx = view.stamp(kind, clean)
        if ctx is not None and len(ctx) > MAX_CTX:
            raise ValueError(f"{kind} would carry {len(ctx)} context entries, more than {MAX_CTX}")
        op = frames.Op(
            seq=self._next_seq,
            kind=kind,
            args=clean,
            ctx=ctx,
            hlc=self._clock.now(now_ms),
            ts=now_ms,
        )
        size = len(codec.encode(op))
        if size + _FRAME_OVERHEAD > self._max_frame:
            raise ValueError(f"op of {size} bytes cannot fit the hub's {self._max_frame}-byte frames")
        self._next_seq += 1
        self._uncommitted.append(op)
        view.add_op(op)
        return op

    def commit(self, ops: Iterable[frames.Op]) -> None:
        """These prepared ops are durably in the outbox: they may be sent."""
        for op in ops:
            self._uncommitted.remove(op)
            topic = op_topic(op.kind, op.args)
            keys = view_type(topic).keys_of(op)
            self._events.append(TopicChanged(topic, ChangeCause.LOCAL, keys, kind=op.kind))
            self._pending += 1
            if self._oldest_ms is None:
                self._oldest_ms = op.ts
            if self._store_has_more or self._loading or len(self._queue) >= self._queue_limit:
                self._store_has_more = True
                self._committed_while_loading = self._committed_while_loading or self._loading
            else:
                self._queue.append(op)
                self._loaded_upto = op.seq

    def abort(self, ops: Iterable[frames.Op]) -> None:
        """Storing these prepared ops failed: withdraw them and give their ``seq`` back."""
        for op in sorted(ops, key=lambda o: o.seq, reverse=True):
            self._uncommitted.remove(op)
            self._next_seq = min(self._next_seq, op.seq)
            view = self._topics.get(op_topic(op.kind, op.args))
            if view is not None:
                skus = view.remove(op.seq)
                self._events.append(TopicChanged(view.topic, ChangeCause.REJECTED, skus, kind=op.kind))

    def ops_loaded(self, ops: Iterable[frames.Op], limit: int) -> None:
        """The answer to :class:`LoadOps`: unsettled ops in ``seq`` order (fewer than ``limit``: no more)."""
        count = 0
        for op in ops:
            count += 1
            if op.seq > self._loaded_upto and op.seq not in self._in_flight:
                self._queue.append(op)
                self._loaded_upto = op.seq
        self._loading = False
        if count < limit and not self._committed_while_loading:
            self._store_has_more = False
        self._committed_while_loading = False
        if self._oldest_ms is None and self._queue:
            self._oldest_ms = self._queue[0].ts

    # -- connection ---------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open

    def connected(self, welcome: frames.Welcome, now_ms: int, clock_offset_ms: int | None = None) -> None:
        """The hub welcomed us: subscribe every topic from its cursor, then replay the outbox."""
        self._open = True
        self._welcome = welcome
        self._window = max(1, min(self._window_cap, welcome.max_batch))
        self._batch_cap = self._window
        self._max_frame = welcome.max_frame
        self._settled_upto = welcome.last_seq
        self._pause_until = 0
        self._retry_ms = RETRY_INITIAL_MS
        self._failing = False
        self._clock_offset_ms = clock_offset_ms
        if welcome.hub_time:
            self._observe(welcome.hub_time, now_ms)
        if welcome.last_seq >= self._next_seq and not self._uncommitted:
            # The hub settled seqs this device never issued (a restored data directory): never reuse them.
            self._events.append(
                Notice(SyncError(f"hub has seq {welcome.last_seq} settled, ahead of this device's outbox"))
            )
            self._next_seq = welcome.last_seq + 1
        # A large backlog is replayed before the topics it changes are subscribed: resuming them first would
        # bring one event per replayed op (each carrying its line), which the view does not need: its
        # overlay already shows our ops. Once the replay is settled, one snapshot shows them all.
        self._replay_upto = self._next_seq - 1 - len(self._uncommitted)
        replaying = self._pending >= REPLAY_SUBSCRIBE_AFTER and welcome.last_seq < self._replay_upto
        for view in self._topics.values():
            view.error = None
            if replaying and view.has_pending_writes:
                self._deferred[view.topic] = None
            else:
                self._send_sub(view)

    def disconnected(self) -> None:
        """The connection is gone: every op in flight is unsettled again, every topic out of sync."""
        self._open = False
        self._welcome = None
        for seq in sorted(self._in_flight, reverse=True):
            self._queue.appendleft(self._in_flight[seq].op)
        self._in_flight.clear()
        self._trim_queue()
        self._sub_ids.clear()
        self._subs_out.clear()
        self._deferred.clear()
        self._pages.clear()
        for view in self._topics.values():
            view.sub_id = None
            view.awaiting = view.synced = False
            view.retry_at = None

    def set_clock_offset(self, offset_ms: int | None) -> None:
        """Hub clock minus ours (from the driver's best handshake/ping sample), for sync latency."""
        self._clock_offset_ms = offset_ms

    def receive(self, frame: frames.Frame, now_ms: int) -> None:
        """A frame the hub sent on the open session (``snap``, ``ev``, ``ack``, ``err``).

        Raises :class:`~protocol.errors.ProtocolError` when the frame's payload breaks the protocol (the
        driver closes the connection); nothing of such a frame is applied.
        """
        if isinstance(frame, frames.Ack):
            self._on_ack(frame, now_ms)
        elif isinstance(frame, frames.Event):
            self._on_event(frame, now_ms)
        elif isinstance(frame, frames.Snapshot):
            self._on_snapshot(frame)
        elif isinstance(frame, frames.Error):
            self._on_error(frame, now_ms)

    def frames_to_send(self, now_ms: int) -> list[frames.Frame]:
        """What to send now: subscriptions first, then ops within the window, in ``seq`` order."""
        out, self._subs_out = self._subs_out, []
        if not self._open:
            return []
        if now_ms >= self._pause_until:
            self._pause_until = 0
            self._fill_window(out, now_ms)
        self._request_ops()
        return out

    def next_deadline(self) -> int | None:
        """When :meth:`handle_timer` must run next (a pause ending, a subscription to retry)."""
        deadlines = [v.retry_at for v in self._topics.values() if v.retry_at is not None]
        if self._pause_until and (self._queue or self._store_has_more):
            deadlines.append(self._pause_until)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now_ms: int) -> None:
        for view in self._topics.values():
            if view.retry_at is not None and now_ms >= view.retry_at:
                view.retry_at = None
                if self._open:
                    self._send_sub(view)

    def events_received(self) -> list[EngineEvent]:
        events, self._events = self._events, []
        return events

    # -- reporting ----------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Ops in the outbox the hub has not settled (uncommitted ones excluded)."""
        return self._pending

    @property
    def oldest_pending_ms(self) -> int | None:
        """When the oldest unsettled op was made (our clock), or ``None`` when the outbox is empty."""
        if not self._pending:
            return None
        if self._in_flight:
            return next(iter(self._in_flight.values())).op.ts
        if self._queue:
            return self._queue[0].ts
        return self._oldest_ms

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def window(self) -> int:
        return self._window

    @property
    def all_synced(self) -> bool:
        return self._open and all(v.synced for v in self._topics.values())

    def stats(self, now_ms: int) -> dict[str, float]:
        """Figures for the hub (``ping.stats``): outbox backlog, and the ack and sync latency of the samples
        since the last report (which it empties) as a histogram and percentiles: a report tells how sync is
        going *now*, so a recovery shows in the next one instead of after hundreds of fresh samples."""
        oldest = self.oldest_pending_ms
        out: dict[str, float] = {
            "outbox": float(self._pending),
            "outbox_age_ms": float(max(0, now_ms - oldest)) if oldest is not None else 0.0,
        }
        for kind, samples in (("ack", self._ack_ms), ("sync", self._sync_ms)):
            if samples:
                name = f"{kind}_ms"
                out.update(samples.histogram(kind))
                out[f"{name}_p50"] = samples.percentile(0.5)
                out[f"{name}_p95"] = samples.percentile(0.95)
                out[f"{name}_p99"] = samples.percentile(0.99)
                samples.clear()
        return out

    # -- internals: sending -------------------------------------------------------------------------------

    def _send_sub(self, view: LocalView) -> None:
        if view.sub_id is not None:
            self._sub_ids.pop(view.sub_id, None)
        sub_id = self._next_sub_id
        self._next_sub_id = SUB_ID_BASE if sub_id >= 2**32 - 1 else sub_id + 1
        view.sub_id = sub_id
        view.awaiting = True
        view.synced = False
        self._sub_ids[sub_id] = view.topic
        cursor = view.cursor if view.has_state and not view.fresh else None
        self._subs_out.append(frames.Subscribe(id=sub_id, topic=view.topic, cursor=cursor))

    def _subscribe_deferred(self) -> None:
        """Subscribe the topics held back while the backlog replayed: afresh, so that one snapshot shows
        every op settled by then (the events of those ops are not fetched)."""
        for topic in self._deferred:
            view = self._topics.get(topic)
            if view is not None:
                view.fresh = True
                self._send_sub(view)
        self._deferred.clear()

    def _fill_window(self, out: list[frames.Frame], now_ms: int) -> None:
        room = self._window - len(self._in_flight)
        # Refill in halves of the window so that replay travels in large batches while the hub still has
        # the other half to work on; a lone op made while online goes out at once.
        low_water = max(1, self._window // 2)
        if room < low_water and (len(self._queue) >= room or self._store_has_more):
            return
        budget = self._max_frame - _FRAME_OVERHEAD
        while room > 0 and self._queue:
            batch: list[frames.Op] = []
            size = 0
            limit = min(room, self._batch_cap)
            while self._queue and len(batch) < limit:
                op = self._queue[0]
                op_size = len(codec.encode(op))
                if batch and size + op_size > budget:
                    break
                if not batch and op_size > budget:
                    # Cannot happen for ops prepared against this hub's limit; a hub that lowered it since
                    # would refuse the frame and close. Keep the op and say why nothing moves.
                    self._events.append(
                        Notice(
                            SyncError(f"op {op.seq} is larger than the hub's {self._max_frame}-byte frames")
                        )
                    )
                    self._pause_until = now_ms + STALLED_RETRY_MS
                    return
                self._queue.popleft()
                batch.append(op)
                size += op_size
            for op in batch:
                self._in_flight[op.seq] = _InFlight(op, now_ms)
            out.append(batch[0] if len(batch) == 1 else frames.OpBatch(ops=batch))
            room -= len(batch)

    def _request_ops(self) -> None:
        if (
            self._open
            and self._store_has_more
            and not self._loading
            and len(self._queue) < self._queue_limit // 2
        ):
            self._loading = True
            self._committed_while_loading = False
            self._events.append(LoadOps(self._loaded_upto, self._page))

    def _trim_queue(self) -> None:
        while len(self._queue) > self._queue_limit:
            self._queue.pop()
            self._store_has_more = True
        if self._queue:
            self._loaded_upto = self._queue[-1].seq

    def _requeue_from(self, seq: int) -> None:
        """Ops in flight from ``seq`` on are not settled: they go back to the front of the queue, in order."""
        back = sorted(s for s in self._in_flight if s >= seq)
        for s in reversed(back):
            self._queue.appendleft(self._in_flight.pop(s).op)
        self._trim_queue()

    # -- internals: receiving -----------------------------------------------------------------------------

    def _take(self, seq: int) -> tuple[frames.Op, int | None] | None:
        """Remove an unsettled op from the window or the queue: ``(op, sent_at)``."""
        entry = self._in_flight.pop(seq, None)
        if entry is not None:
            return entry.op, entry.sent_at
        for i, op in enumerate(self._queue):
            if op.seq == seq:
                del self._queue[i]
                return op, None
            if op.seq > seq:
                break
        return None

    def _on_ack(self, ack: frames.Ack, now_ms: int) -> None:
        self._settled_upto = max(self._settled_upto, ack.seq)
        if self._deferred and self._settled_upto >= self._replay_upto:
            self._subscribe_deferred()
        taken = self._take(ack.seq)
        if taken is None:
            return  # a duplicate answer for an op already settled
        op, sent_at = taken
        self._pending -= 1
        self._retry_ms = RETRY_INITIAL_MS
        self._failing = False
        if sent_at is not None:
            self._ack_ms.add(float(max(0, now_ms - sent_at)))
        if not self._pending:
            self._oldest_ms = None
        topic = op_topic(op.kind, op.args)
        view = self._topics.get(topic)
        keep = False
        if ack.ok:
            keep = view is not None and op.seq > view.reflected
            if keep and view is not None and view.acked(op, ack.result):
                self._events.append(TopicChanged(topic, ChangeCause.ACKED, None, kind=op.kind))
        elif view is not None:
            skus = view.remove(op.seq)
            self._events.append(TopicChanged(topic, ChangeCause.REJECTED, skus, kind=op.kind))
        self._events.append(
            OpSettled(op, ack.ok, ack.result, ack.code, ack.message, ack.dup, keep=keep, at=now_ms)
        )

    def _on_error(self, err: frames.Error, now_ms: int) -> None:
        ref = err.ref
        if ref is not None and (err.about == frames.ABOUT_SUB if err.about else ref in self._sub_ids):
            self._on_sub_error(self._sub_ids.get(ref, ""), err, now_ms)  # "": a sub since replaced
            return
        if ref is None or ref not in self._in_flight:
            if ref is None:
                self._events.append(Notice(SyncError(f"hub reported {err.code}: {err.message}")))
            return  # about an op already requeued or settled: its new attempt is answered separately
        lowest = min(self._in_flight)  # ops below it are settled: the hub acked them
        self._requeue_from(ref)
        if err.code == ErrorCode.BATCH_TOO_LARGE:
            self._batch_cap = max(1, self._batch_cap // 2)
        if err.retry_after_ms is not None:
            delay = err.retry_after_ms
        elif err.code == ErrorCode.SEQ_GAP:
            # A gap behind our oldest unsettled op is one we cannot fill: the hub lost ops it had acked.
            if ref == lowest:
                self._events.append(Notice(OutboxStalled(ref, err.message)))
                self._subscribe_deferred()  # the replay cannot go on: show what the hub has meanwhile
                delay = STALLED_RETRY_MS
            else:
                delay = 0
        elif err.code == ErrorCode.BATCH_TOO_LARGE:
            delay = 0
        else:  # unavailable, internal, or a code of a later version: the op is not settled, back off
            delay = self._retry_ms
            self._retry_ms = min(RETRY_MAX_MS, self._retry_ms * 2)
        if not self._failing and err.code not in _NOT_FAILURES:  # said once until an op settles again
            self._failing = True
            failed = f"hub could not apply op {ref} ({err.code}: {err.message}); resending it"
            self._events.append(Notice(SyncError(failed)))
        self._pause_until = max(self._pause_until, now_ms + delay) if delay else self._pause_until

    def _on_sub_error(self, topic: str, err: frames.Error, now_ms: int) -> None:
        view = self._topics.get(topic)
        if view is None or view.sub_id is None or view.sub_id != err.ref:
            return
        self._sub_ids.pop(view.sub_id, None)
        view.sub_id = None
        view.awaiting = False
        if err.code == ErrorCode.UNAVAILABLE:
            view.retry_at = now_ms + (
                err.retry_after_ms if err.retry_after_ms is not None else RETRY_INITIAL_MS
            )
            return
        error = SubscriptionRefused(topic, err.code, err.message)
        view.error = error
        self._events.append(SubscriptionFailed(error))

    def _on_snapshot(self, page: frames.Snapshot) -> None:
        view = self._topics.get(page.topic)
        if view is None or page.id != view.sub_id:
            return  # an answer to a subscription since replaced or dropped
        snap = self._pages.add(page)
        if snap is None or snap.cursor is None:
            return  # a page before the last: the snapshot is complete with its last page (live events wait)
        if snap.state is not None:
            check_shape(snap.state, view.datatype.state, f"snapshot of {snap.topic}")
            view.awaiting = view.fresh = False
            view.replace(snap.state)
            view.cursor = snap.cursor
            view.reflect(self._settled_upto)
            cause = ChangeCause.RESET if snap.reset else ChangeCause.SNAPSHOT
            self._events.append(TopicChanged(view.topic, cause))
        elif not view.has_state or not _resumes(view.cursor, snap.cursor):
            # A resume must answer our own cursor; anything else cannot be trusted: start afresh.
            view.fresh = True
            self._send_sub(view)
            return
        else:
            view.awaiting = False
            view.cursor = snap.cursor
        view.synced = True
        self._dirty.add(view.topic)
        self._events.append(TopicSynced(view.topic))

    def _on_event(self, ev: frames.Event, now_ms: int) -> None:
        view = self._topics.get(ev.topic)
        if view is None or view.awaiting or not view.synced or view.cursor is None:
            return  # unsubscribed, or an event of the subscription being replaced
        cursor = view.cursor
        if ev.cursor.epoch == cursor.epoch and ev.cursor.offset <= cursor.offset:
            return  # a duplicate
        if ev.cursor.epoch != cursor.epoch or ev.cursor.offset != cursor.offset + 1:
            self._send_sub(view)  # a gap or a new epoch: resume from what we have
            return
        dtype = view.datatype
        known = dtype.emits(ev.kind)
        if known:
            check_shape(ev.data, dtype.event, f"event {ev.kind} on {ev.topic}")
        if ev.conflict is not None and dtype.conflict is not None:
            check_shape(ev.conflict, dtype.conflict, f"conflict of {ev.kind} on {ev.topic}")
        if self._clock_offset_ms is not None:
            self._sync_ms.add(float(max(0, now_ms + self._clock_offset_ms - ev.at)))
        self._observe(ev.at, now_ms)
        skus: set[str] = set()
        if known:
            skus.update(view.apply_data(ev.data))
        else:
            self._events.append(Notice(UnexpectedEvent(ev.topic, ev.kind)))
        view.cursor = ev.cursor
        everything = False
        if ev.origin is not None and ev.origin.client_id == self.client_id:
            reflected = view.reflect(ev.origin.seq)
            if reflected is None:
                everything = True
            else:
                skus.update(reflected)
        self._dirty.add(view.topic)
        if not (skus or everything or ev.conflict is not None):
            return
        self._events.append(
            TopicChanged(
                view.topic,
                ChangeCause.EVENT,
                None if everything else frozenset(skus),
                origin=ev.origin,
                conflict=ev.conflict,
                kind=ev.kind,
            )
        )

    def _observe(self, at_ms: int, now_ms: int) -> None:
        # The hub's clock feeds the HLC, so that a device whose clock runs behind still stamps its sets
        # after what it has seen happen. Bounded: a timestamp past the HLC range is ignored.
        if 0 <= at_ms <= hlcs.MAX_MS:
            self._clock.observe(hlcs.encode(at_ms), now_ms)


def _resumes(held: frames.Cursor | None, answer: frames.Cursor) -> bool:
    """Whether a ``snap`` without state continues from ``held``: it names our cursor, or — ours being the
    empty state of a topic never written — offset 0 of the history that began from that empty state
    (PROTOCOL.md §8.3)."""
    if held == answer:
        return True
    return held is not None and held.epoch == frames.EMPTY_EPOCH and held.offset == 0 and answer.offset == 0


__all__ = [
    "CartView",
    "ChangeCause",
    "EngineEvent",
    "LoadOps",
    "Notice",
    "OpSettled",
    "SubscriptionFailed",
    "SyncEngine",
    "TopicChanged",
    "TopicRecord",
    "TopicSynced",
    "op_topic",
    "predict_line",
]
