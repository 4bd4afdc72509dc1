"""Sans-I/O connection state machines: :class:`ServerProtocol` (hub side) and :class:`ClientProtocol` (SDK).

Theory of operation
-------------------
A protocol object is a plain synchronous state machine. It owns no socket, no event loop and no clock:

* the driver feeds it one complete websocket message at a time, ``receive_data(data, now_ms)`` (the websocket
  library does the framing);
* the object answers with *events* (``events_received()``) for the driver to act on and *messages*
  (``data_to_send()``) for the driver to write, one websocket message each, in order;
* time is an input: every method that needs it takes ``now_ms``, and ``next_deadline()`` says when the driver
  must call ``handle_timer(now_ms)`` (calling it early is harmless).

A driver's loop therefore reads::

    protocol.receive_data(message, now_ms)    # or protocol.handle_timer(now_ms) once next_deadline() is due
    for data in protocol.data_to_send():      # first: an ``err`` frame may precede a close
        await websocket.send(data)
    for event in protocol.events_received():  # CloseRequested: await websocket.close(code, reason)
        ...

States (one enum; each side walks its own part of it)::

    server:  AWAITING_HELLO ──hello──▶ AUTHENTICATING ──accept()──▶ OPEN
    client:  IDLE ──connect()──▶ AWAITING_WELCOME ──welcome──▶ OPEN
    both:    any state but CLOSED ──close / refuse / timeout / fatal frame──▶ CLOSED (input ignored from then)

The edges are the literal tables ``_SERVER_TRANSITIONS`` / ``_CLIENT_TRANSITIONS``; the frames each state
accepts are ``_SERVER_ACCEPTS`` / ``_CLIENT_ACCEPTS``. A method called in a state whose table has no edge for
it is a driver bug and raises :class:`InvalidState` (or :class:`~protocol.errors.ConnectionClosed` once
closed).

Faults are sorted by whose they are. A hub answers a peer's *recoverable* fault (a frame its state does not
accept, an unknown tag, a seq gap, an oversized batch) with an ``err`` frame and keeps the connection; once
the session is open that ``err`` is a :class:`Refused` event, which the driver sends in line with its own
replies, so that replies keep the order of the requests. Bytes it cannot trust (oversized, undecodable,
ill-typed) end the connection with the codec's close code. A client expects its
hub to be correct and closes on any violation. No side answers an ``err`` frame with an ``err`` frame, so two
peers cannot bounce errors at each other.

Liveness: the client pings every ``heartbeat_ms`` while idle, and each side closes with ``HEARTBEAT_TIMEOUT``
when nothing arrived for ``HEARTBEAT_MISSES × heartbeat_ms``. Three, because a dead peer must be told from a
slow one: with two, a single ping delayed by more than one interval (a GC pause, a mobile radio waking up, a
backgrounded app whose timers are coalesced) would drop a healthy connection and trigger a reconnect with
resubscriptions; with three, one lost ping plus a late one are absorbed, while a dead connection still
releases its subscriptions on the hub within 45 s at the default 15 s heartbeat.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Final, Generic, TypeAlias, TypeVar

from protocol import codec, frames
from protocol.errors import CloseCode, ConnectionClosed, ErrorCode, ProtocolError, SyncError

HEARTBEAT_MISSES: Final = 3
"""Heartbeat intervals without any received message before a side gives the peer up (see above)."""
MAX_REASON_BYTES: Final = 123
"""A websocket close reason holds at most 123 UTF-8 bytes (RFC 6455 §5.5); longer reasons are cut."""
MAX_ERROR_MESSAGE: Final = 1024
"""``frames.Error.message`` is at most this long; a longer one would make the peer close on a bad frame."""
MAX_STATS: Final = 64
"""Entries in a ping's ``stats``, and characters in one key (``frames.Ping``)."""


class State(enum.Enum):
    """Where a connection stands. See the module docstring for who walks which states."""

    IDLE = "idle"
    AWAITING_HELLO = "awaiting_hello"
    AUTHENTICATING = "authenticating"
    AWAITING_WELCOME = "awaiting_welcome"
    OPEN = "open"
    CLOSED = "closed"


class InvalidState(SyncError, AssertionError):
    """The driver called a method the connection's state does not allow: a driver bug, never the peer's fault.

    It derives from :class:`AssertionError` too, so a handler for operational errors (``except SyncError``
    around I/O) is not where it should be caught.
    """


# --- events --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class HelloReceived:
    """Server: a client said hello in a common version. Authenticate it, then ``accept()`` or ``refuse()``."""

    hello: frames.Hello


@dataclasses.dataclass(frozen=True, slots=True)
class FrameReceived:
    """A frame for the layer above.

    Server: ``Subscribe``, ``Unsubscribe``, ``Op``, ``OpBatch`` (ops already checked for gaps) and ``Error``.
    Client: ``Snapshot``, ``Event``, ``Ack`` and ``Error``.
    """

    frame: frames.Frame


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """Server, while OPEN: the protocol refused a request itself (a seq gap, an oversized batch, an unknown
    or out-of-order frame). The driver sends ``error`` after its replies to every request delivered before
    it, so that a client gets replies in the order of its frames (PROTOCOL.md §7.2): an ``err seq_gap`` for
    op 3 never overtakes the ``ack`` of op 1 delivered just before it."""

    error: frames.Error


@dataclasses.dataclass(frozen=True, slots=True)
class StatsReceived:
    """Server: a client's ping carried sync statistics (outbox length, oldest op age, …)."""

    stats: dict[str, float]
    now_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Opened:
    """Client: the hub welcomed us. ``clock_offset_ms`` is hub clock minus ours, ``rtt_ms`` the round trip."""

    welcome: frames.Welcome
    clock_offset_ms: int
    rtt_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class CloseRequested:
    """Either side: close the websocket with ``code`` and ``reason``. The protocol is CLOSED from now on."""

    code: int
    reason: str


ServerEvent: TypeAlias = HelloReceived | FrameReceived | Refused | StatsReceived | CloseRequested
ClientEvent: TypeAlias = Opened | FrameReceived | CloseRequested


# --- transition tables ---------------------------------------------------------------------------------


class _Trigger(enum.Enum):
    HELLO = "receive hello"
    ACCEPT = "accept"
    REFUSE = "refuse"
    CONNECT = "connect"
    WELCOME = "receive welcome"
    TIMEOUT = "time out"
    CLOSE = "close"


_SERVER_TRANSITIONS: Final[Mapping[tuple[State, _Trigger], State]] = {
    (State.AWAITING_HELLO, _Trigger.HELLO): State.AUTHENTICATING,
    (State.AWAITING_HELLO, _Trigger.TIMEOUT): State.CLOSED,
    (State.AWAITING_HELLO, _Trigger.CLOSE): State.CLOSED,
    (State.AUTHENTICATING, _Trigger.ACCEPT): State.OPEN,
    (State.AUTHENTICATING, _Trigger.REFUSE): State.CLOSED,
    (State.AUTHENTICATING, _Trigger.CLOSE): State.CLOSED,
    (State.OPEN, _Trigger.TIMEOUT): State.CLOSED,
    (State.OPEN, _Trigger.CLOSE): State.CLOSED,
}
_CLIENT_TRANSITIONS: Final[Mapping[tuple[State, _Trigger], State]] = {
    (State.IDLE, _Trigger.CONNECT): State.AWAITING_WELCOME,
    (State.IDLE, _Trigger.CLOSE): State.CLOSED,
    (State.AWAITING_WELCOME, _Trigger.WELCOME): State.OPEN,
    (State.AWAITING_WELCOME, _Trigger.TIMEOUT): State.CLOSED,
    (State.AWAITING_WELCOME, _Trigger.CLOSE): State.CLOSED,
    (State.OPEN, _Trigger.TIMEOUT): State.CLOSED,
    (State.OPEN, _Trigger.CLOSE): State.CLOSED,
}

_FrameKinds: TypeAlias = tuple[type[frames.Frame], ...]
# Frames a state accepts from the peer. Anything else: an ``out_of_order`` error (server) or a close (client).
_SERVER_ACCEPTS: Final[Mapping[State, _FrameKinds]] = {
    State.AWAITING_HELLO: (frames.Hello,),
    State.AUTHENTICATING: (),  # the client must wait for the welcome
    State.OPEN: (
        frames.Subscribe,
        frames.Unsubscribe,
        frames.Op,
        frames.OpBatch,
        frames.Ping,
        frames.Pong,
        frames.Error,
    ),
}
_CLIENT_ACCEPTS: Final[Mapping[State, _FrameKinds]] = {
    State.IDLE: (frames.Error,),
    State.AWAITING_WELCOME: (frames.Welcome, frames.Error),
    State.OPEN: (frames.Snapshot, frames.Event, frames.Ack, frames.Error, frames.Ping, frames.Pong),
}
# Frames the driver may hand to send(); the handshake frames belong to the protocol object.
_SERVER_SENDS: Final[_FrameKinds] = tuple(k for k in frames.SERVER_FRAMES if k is not frames.Welcome)
_CLIENT_SENDS: Final[_FrameKinds] = tuple(k for k in frames.CLIENT_FRAMES if k is not frames.Hello)

_HELLO_CHECK: Final = codec.FrameDecoder((frames.Hello,), codec.SERVER_LIMITS)


def _tag(frame: frames.Frame) -> str:
    return str(type(frame).__struct_config__.tag)


def _ref(frame: frames.Frame) -> tuple[int | None, str]:
    """The ``seq`` or request ``id`` an error about ``frame`` refers to, and what it is (``err.about``)."""
    if isinstance(frame, frames.Op):
        return frame.seq, frames.ABOUT_OP
    if isinstance(frame, frames.OpBatch):
        return frame.ops[0].seq, frames.ABOUT_OP
    if isinstance(frame, frames.Subscribe):
        return frame.id, frames.ABOUT_SUB
    return None, ""


def _error(code: str, message: str, ref: int | None, retry_after_ms: int | None, about: str) -> frames.Error:
    return frames.Error(
        code=code,
        message=message[:MAX_ERROR_MESSAGE],
        ref=ref,
        retry_after_ms=retry_after_ms,
        about=about if ref is not None else "",
    )


def _cut_reason(reason: str) -> str:
    raw = reason.encode()
    if len(raw) <= MAX_REASON_BYTES:
        return reason
    return raw[:MAX_REASON_BYTES].decode(errors="ignore")  # drops a character cut in half


# --- shared machinery ----------------------------------------------------------------------------------

_E = TypeVar("_E", ServerEvent, ClientEvent)


class _Connection(abc.ABC, Generic[_E]):
    """What both sides share: the queues, the state and its tables, decoding, closing."""

    def __init__(
        self,
        now_ms: int,
        state: State,
        transitions: Mapping[tuple[State, _Trigger], State],
        accepts: Mapping[State, _FrameKinds],
        decoder: codec.FrameDecoder,
    ) -> None:
        self._state = state
        self._transitions = transitions
        self._accepts = accepts
        self._decoder = decoder
        self._last_rx = now_ms
        self._events: list[_E] = []
        self._out: list[bytes] = []
        self._close_code: int | None = None
        self._close_reason = ""

    @property
    def state(self) -> State:
        return self._state

    @property
    def close_code(self) -> int | None:
        """The code of the close this side requested, once CLOSED."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    def receive_data(self, data: bytes, now_ms: int) -> None:
        """Take one websocket message from the peer."""
        if self._state is State.CLOSED:
            return
        self._last_rx = now_ms  # any message proves the peer alive, even one that is refused
        try:
            frame = self._decoder.decode(data)
        except ProtocolError as exc:
            self._on_decode_error(exc)
            return
        if isinstance(frame, self._accepts[self._state]):
            self._on_frame(frame, now_ms)
        else:
            self._on_unexpected(frame)

    def events_received(self) -> list[_E]:
        """The events produced since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """The messages to write since the last call, in order; each is one websocket message."""
        out, self._out = self._out, []
        return out

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """End the session: a :class:`CloseRequested` follows, as for a close the peer caused. Idempotent."""
        if self._state is not State.CLOSED:
            self._close(_Trigger.CLOSE, code, reason)

    @abc.abstractmethod
    def _on_frame(self, frame: frames.Frame, now_ms: int) -> None:
        """Handle a frame the current state accepts."""

    @abc.abstractmethod
    def _on_unexpected(self, frame: frames.Frame) -> None:
        """Handle a valid frame the current state does not accept."""

    @abc.abstractmethod
    def _on_decode_error(self, exc: ProtocolError) -> None:
        """Handle a message that is not a frame this side accepts."""

    def _transition(self, trigger: _Trigger) -> None:
        try:
            self._state = self._transitions[self._state, trigger]
        except KeyError:
            raise InvalidState(f"cannot {trigger.value} while {self._state.value}") from None

    def _close(self, trigger: _Trigger, code: int, reason: str) -> None:
        self._transition(trigger)
        self._close_code = int(code)
        self._close_reason = _cut_reason(reason)
        self._events.append(CloseRequested(self._close_code, self._close_reason))

    def _write(self, frame: frames.Frame) -> None:
        self._out.append(codec.encode(frame))

    def _require_not_closed(self) -> None:
        if self._state is State.CLOSED:
            raise ConnectionClosed(self._close_code or CloseCode.NORMAL, self._close_reason)

    def _require_open(self, frame: frames.Frame, sends: _FrameKinds) -> None:
        if not isinstance(frame, sends):
            raise TypeError(f"{type(self).__name__}.send() does not send {_tag(frame)!r} frames")
        self._require_not_closed()
        if self._state is not State.OPEN:
            raise InvalidState(
                f"cannot send {_tag(frame)!r} while {self._state.value}: wait for the handshake"
            )


# --- server ----------------------------------------------------------------------------------------------


class ServerProtocol(_Connection[ServerEvent]):
    """The hub's side of one connection.

    It checks what one connection can check: handshake order, version, frame validity, that ops do not skip
    a ``seq``, batch size, liveness. Authentication, authorisation and deduplication belong to the driver and
    the store: a replayed op (``seq`` not above the last one) is delivered, not dropped.
    """

    def __init__(
        self,
        now_ms: int,
        *,
        versions: Sequence[int] = frames.PROTOCOL_VERSIONS,
        limits: codec.Limits = codec.SERVER_LIMITS,
        heartbeat_ms: int = 15_000,
        handshake_timeout_ms: int = 10_000,
        max_batch: int = 256,
    ) -> None:
        if not versions or heartbeat_ms <= 0 or handshake_timeout_ms <= 0 or max_batch < 1:
            raise ValueError("need versions, and positive heartbeat_ms, handshake_timeout_ms and max_batch")
        super().__init__(
            now_ms,
            State.AWAITING_HELLO,
            _SERVER_TRANSITIONS,
            _SERVER_ACCEPTS,
            codec.shared_decoder(frames.CLIENT_FRAMES, limits),
        )
        self._versions = tuple(versions)
        self._limits = limits
        self._heartbeat_ms = heartbeat_ms
        self._max_batch = max_batch
        self._hello_deadline = now_ms + handshake_timeout_ms
        self._hello: frames.Hello | None = None
        self._version: int | None = None
        self._last_seq = 0

    @property
    def version(self) -> int | None:
        """The negotiated protocol version, from the hello on."""
        return self._version

    @property
    def hello(self) -> frames.Hello | None:
        return self._hello

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` delivered on this connection, or the ``last_seq`` given to ``accept()``."""
        return self._last_seq

    # -- driver calls ---------------------------------------------------------------------------------

    def accept(self, *, session: str, last_seq: int, now_ms: int) -> None:
        """Open the session and send the welcome (its ``echo_ts`` is the hello's ``ts``).

        ``last_seq`` is the hub's record of this client's applied ops: the next op expected is its successor.
        """
        self._transition(_Trigger.ACCEPT)
        hello, version = self._hello, self._version
        assert hello is not None  # set on the way to AUTHENTICATING, with the version
        assert version is not None
        self._last_seq = last_seq
        self._last_rx = now_ms  # the client may not speak before the welcome: its heartbeat starts now
        self._write(
            frames.Welcome(
                version=version,
                session=session,
                hub_time=now_ms,
                echo_ts=hello.ts,
                last_seq=last_seq,
                heartbeat_ms=self._heartbeat_ms,
                max_frame=self._limits.max_frame,
                max_batch=self._max_batch,
            )
        )

    def refuse(self, code: CloseCode, reason: str = "") -> None:
        """Turn the hello down (bad token, revoked client, …): a :class:`CloseRequested` follows."""
        self._close(_Trigger.REFUSE, code, reason)

    def send(self, frame: frames.Frame) -> None:
        """Queue a frame for the client (``Snapshot``, ``Event``, ``Ack``, …). Only while OPEN."""
        self._require_open(frame, _SERVER_SENDS)
        self._write(frame)

    def send_error(
        self,
        code: ErrorCode,
        message: str = "",
        ref: int | None = None,
        retry_after_ms: int | None = None,
        about: str = "",
    ) -> None:
        """Queue an ``err`` frame. Allowed in any state but CLOSED: a handshake may be answered with one.

        ``about`` says what ``ref`` is (:data:`~protocol.frames.ABOUT_OP` or ``ABOUT_SUB``).
        """
        self._require_not_closed()
        self._write(_error(code, message, ref, retry_after_ms, about))

    def _refuse(self, code: ErrorCode, message: str, ref: int | None = None, about: str = "") -> None:
        """Refuse a frame: at once before the session is open (nothing is in flight then), else in line
        with the driver's replies (:class:`Refused`)."""
        if self._state is State.OPEN:
            self._events.append(Refused(_error(code, message, ref, None, about)))
        else:
            self.send_error(code, message, ref, about=about)

    # -- input ----------------------------------------------------------------------------------------

    def _on_frame(self, frame: frames.Frame, now_ms: int) -> None:
        if isinstance(frame, frames.Hello):
            self._on_hello(frame)
        elif isinstance(frame, frames.Op):
            self._on_ops([frame], frame)
        elif isinstance(frame, frames.OpBatch):
            self._on_batch(frame)
        elif isinstance(frame, frames.Ping):
            self._write(frames.Pong(echo_ts=frame.ts, ts=now_ms))
            if frame.stats:
                self._events.append(StatsReceived(dict(frame.stats), now_ms))
        elif not isinstance(frame, frames.Pong):  # a pong only proves liveness, already recorded
            self._events.append(FrameReceived(frame))

    def _on_unexpected(self, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.Error):  # never answer an error with an error
            ref, about = _ref(frame)
            self._refuse(
                ErrorCode.OUT_OF_ORDER, f"{_tag(frame)} not allowed while {self._state.value}", ref, about
            )

    def _on_decode_error(self, exc: ProtocolError) -> None:
        if exc.close_code is not None:
            self._close(_Trigger.CLOSE, exc.close_code, exc.message)
        else:  # an unknown tag, perhaps from a newer client: refuse the frame, keep the connection
            self._refuse(exc.code, exc.message)

    def _on_hello(self, hello: frames.Hello) -> None:
        common = set(hello.versions).intersection(self._versions)
        if not common:
            self.send_error(
                ErrorCode.UNSUPPORTED_VERSION,
                f"offered versions {sorted(set(hello.versions))}, this hub speaks {list(self._versions)}",
            )
            self._close(_Trigger.CLOSE, CloseCode.UNSUPPORTED_VERSION, "no common protocol version")
            return
        self._transition(_Trigger.HELLO)
        self._hello = hello
        self._version = max(common)
        self._events.append(HelloReceived(hello))

    def _on_batch(self, batch: frames.OpBatch) -> None:
        if len(batch.ops) > self._max_batch:
            self._refuse(
                ErrorCode.BATCH_TOO_LARGE,
                f"{len(batch.ops)} ops > max_batch {self._max_batch}",
                batch.ops[0].seq,
                frames.ABOUT_OP,
            )
        else:
            self._on_ops(batch.ops, batch)

    def _on_ops(self, ops: Sequence[frames.Op], frame: frames.Op | frames.OpBatch) -> None:
        """Deliver ``frame`` if no op skips a ``seq``; else deliver the ops before the gap, and report it."""
        last = self._last_seq
        valid = 0
        for op in ops:
            if op.seq > last + 1:
                break
            last = max(last, op.seq)
            valid += 1
        self._last_seq = last
        if valid == len(ops):
            self._events.append(FrameReceived(frame))
            return
        if valid == 1:
            self._events.append(FrameReceived(ops[0]))
        elif valid:
            self._events.append(FrameReceived(frames.OpBatch(ops=list(ops[:valid]))))
        gap = ops[valid].seq
        self._refuse(ErrorCode.SEQ_GAP, f"seq {gap} after {last}: expected {last + 1}", gap, frames.ABOUT_OP)

    # -- time -----------------------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        """When ``handle_timer`` must run next; None while the driver authenticates and once CLOSED."""
        if self._state is State.AWAITING_HELLO:
            return self._hello_deadline
        if self._state is State.OPEN:
            return self._last_rx + HEARTBEAT_MISSES * self._heartbeat_ms
        return None

    def handle_timer(self, now_ms: int) -> None:
        """Act on the deadline if ``now_ms`` reached it; otherwise do nothing."""
        deadline = self.next_deadline()
        if deadline is None or now_ms < deadline:
            return
        if self._state is State.AWAITING_HELLO:
            self._close(_Trigger.TIMEOUT, CloseCode.HANDSHAKE_TIMEOUT, "no hello in time")
        else:
            silent = HEARTBEAT_MISSES * self._heartbeat_ms
            self._close(_Trigger.TIMEOUT, CloseCode.HEARTBEAT_TIMEOUT, f"nothing received for {silent} ms")


# --- client ----------------------------------------------------------------------------------------------


class ClientProtocol(_Connection[ClientEvent]):
    """The SDK's side of one connection.

    ``now_ms`` is the device's wall clock in Unix milliseconds: the same readings stamp the hello and the
    pings whose echoes estimate the hub's clock. The sample with the lowest round trip is kept, because the
    error of a sample is bounded by half its round trip.
    """

    def __init__(
        self,
        client_id: str,
        token: str,
        now_ms: int,
        *,
        versions: Sequence[int] = frames.PROTOCOL_VERSIONS,
        limits: codec.Limits = codec.CLIENT_LIMITS,
        agent: str = "",
        handshake_timeout_ms: int = 10_000,
    ) -> None:
        if not versions or handshake_timeout_ms <= 0:
            raise ValueError("need versions and a positive handshake_timeout_ms")
        hello = frames.Hello(
            versions=list(versions), token=token, client_id=client_id, ts=now_ms, agent=agent
        )
        try:  # a hub would close on an invalid hello; say why here, where it can be fixed
            _HELLO_CHECK.decode(codec.encode(hello))
        except ProtocolError as exc:
            raise ValueError(f"invalid hello: {exc.message}") from None
        super().__init__(
            now_ms,
            State.IDLE,
            _CLIENT_TRANSITIONS,
            _CLIENT_ACCEPTS,
            codec.shared_decoder(frames.SERVER_FRAMES, limits),
        )
        self._hello = hello
        self._versions = tuple(versions)
        self._handshake_timeout_ms = handshake_timeout_ms
        self._welcome_deadline = 0
        self._welcome: frames.Welcome | None = None
        self._heartbeat_ms = 0
        self._last_tx = self._last_ping = now_ms
        self._ping_ts: int | None = None  # the ping awaiting its pong
        self._clock_offset_ms: int | None = None
        self._rtt_ms: int | None = None
        self._stats: dict[str, float] = {}

    # -- properties -----------------------------------------------------------------------------------

    @property
    def welcome(self) -> frames.Welcome | None:
        return self._welcome

    @property
    def version(self) -> int | None:
        return self._welcome.version if self._welcome else None

    @property
    def last_seq(self) -> int | None:
        """The hub's last applied ``seq`` of this client, from the welcome: replay starts after it."""
        return self._welcome.last_seq if self._welcome else None

    @property
    def max_batch(self) -> int | None:
        return self._welcome.max_batch if self._welcome else None

    @property
    def max_frame(self) -> int | None:
        return self._welcome.max_frame if self._welcome else None

    @property
    def clock_offset_ms(self) -> int | None:
        """Hub clock minus this device's clock, from the best sample so far."""
        return self._clock_offset_ms

    @property
    def rtt_ms(self) -> int | None:
        """The round trip of the sample behind ``clock_offset_ms``."""
        return self._rtt_ms

    # -- driver calls ---------------------------------------------------------------------------------

    def connect(self, now_ms: int) -> None:
        """Start the handshake: queue the hello, stamped ``now_ms``."""
        self._transition(_Trigger.CONNECT)
        h = self._hello
        self._hello = frames.Hello(
            versions=h.versions, token=h.token, client_id=h.client_id, ts=now_ms, agent=h.agent
        )
        self._welcome_deadline = now_ms + self._handshake_timeout_ms
        self._send_at(self._hello, now_ms)

    def send(self, frame: frames.Frame, now_ms: int) -> None:
        """Queue a frame for the hub. Only while OPEN; ``now_ms`` keeps the idle timer honest.

        Raises ValueError for a batch or a frame larger than the welcome allows: sent, it would close this
        connection, and the same frame would close the next one too.
        """
        self._require_open(frame, _CLIENT_SENDS)
        welcome = self._welcome
        assert welcome is not None  # OPEN
        if isinstance(frame, frames.OpBatch) and len(frame.ops) > welcome.max_batch:
            raise ValueError(f"{len(frame.ops)} ops in a batch > max_batch {welcome.max_batch}")
        data = codec.encode(frame)
        if len(data) > welcome.max_frame:
            raise ValueError(f"{_tag(frame)} frame of {len(data)} bytes > max_frame {welcome.max_frame}")
        self._last_tx = now_ms
        self._out.append(data)

    def set_stats(self, stats: Mapping[str, float]) -> None:
        """Statistics attached to every following ping (outbox length, oldest op age, …)."""
        if len(stats) > MAX_STATS or any(len(key) > MAX_STATS for key in stats):
            raise ValueError(f"at most {MAX_STATS} stats, with keys of at most {MAX_STATS} characters")
        self._stats = {key: float(value) for key, value in stats.items()}

    def ping(self, now_ms: int) -> None:
        """Send a ping now, with the stats set: a report that cannot wait for the idle heartbeat (the
        backlog on connecting, before the replay drains it; a busy device's periodic report). Only while
        OPEN; the next heartbeat ping is due a beat later."""
        ping = frames.Ping(ts=now_ms, stats=dict(self._stats) or None)
        self._require_open(ping, _CLIENT_SENDS)
        self._last_ping = self._ping_ts = now_ms
        self._send_at(ping, now_ms)

    # -- input ----------------------------------------------------------------------------------------

    def _on_frame(self, frame: frames.Frame, now_ms: int) -> None:
        if isinstance(frame, frames.Welcome):
            self._on_welcome(frame, now_ms)
        elif isinstance(frame, frames.Ping):
            self._send_at(frames.Pong(echo_ts=frame.ts, ts=now_ms), now_ms)
        elif isinstance(frame, frames.Pong):
            self._on_pong(frame, now_ms)
        else:
            self._events.append(FrameReceived(frame))

    def _on_unexpected(self, frame: frames.Frame) -> None:
        self._close(_Trigger.CLOSE, CloseCode.PROTOCOL_ERROR, f"{_tag(frame)} while {self._state.value}")

    def _on_decode_error(self, exc: ProtocolError) -> None:
        self._close(_Trigger.CLOSE, exc.close_code or CloseCode.PROTOCOL_ERROR, exc.message)

    def _on_welcome(self, welcome: frames.Welcome, now_ms: int) -> None:
        if welcome.version not in self._versions or welcome.heartbeat_ms <= 0 or welcome.max_batch < 1:
            self._close(_Trigger.CLOSE, CloseCode.PROTOCOL_ERROR, "unusable welcome")
            return
        self._transition(_Trigger.WELCOME)
        self._welcome = welcome
        self._heartbeat_ms = welcome.heartbeat_ms
        self._last_ping = now_ms  # the handshake was a clock sample: the first ping is due a beat later
        offset, rtt = self._sample(self._hello.ts, welcome.hub_time, now_ms)  # the first sample is the best
        self._events.append(Opened(welcome, offset, rtt))

    def _on_pong(self, pong: frames.Pong, now_ms: int) -> None:
        # Only the answer to the latest ping is a sample: an older ping answered this late has the longer
        # round trip anyway, and a pong we did not ask for (or a repeated one) is only a sign of life.
        if pong.echo_ts == self._ping_ts:
            self._ping_ts = None
            self._sample(pong.echo_ts, pong.ts, now_ms)

    def _sample(self, sent_ms: int, hub_ms: int, now_ms: int) -> tuple[int, int]:
        """One NTP-style sample: the hub read ``hub_ms`` halfway between ``sent_ms`` and ``now_ms``.

        Kept if its round trip is the lowest so far (on a tie the newer one has drifted less). Returns
        this sample's ``(offset, rtt)``, kept or not.
        """
        rtt = max(0, now_ms - sent_ms)  # a wall clock may step back
        offset = (2 * hub_ms - sent_ms - now_ms) // 2
        if self._rtt_ms is None or rtt <= self._rtt_ms:
            self._rtt_ms, self._clock_offset_ms = rtt, offset
        return offset, rtt

    def _send_at(self, frame: frames.Frame, now_ms: int) -> None:
        self._last_tx = now_ms
        self._write(frame)

    # -- time -----------------------------------------------------------------------------------------

    def _ping_due(self) -> int:
        # Idle means one direction was quiet for a beat: the hub must hear from us (its timeout) and we from
        # it (ours). At most one ping per beat, so a silent hub does not make us ping in a loop.
        return max(self._last_ping, min(self._last_tx, self._last_rx)) + self._heartbeat_ms

    def next_deadline(self) -> int | None:
        """When ``handle_timer`` must run next; None before ``connect()`` and once CLOSED."""
        if self._state is State.AWAITING_WELCOME:
            return self._welcome_deadline
        if self._state is State.OPEN:
            return min(self._ping_due(), self._last_rx + HEARTBEAT_MISSES * self._heartbeat_ms)
        return None

    def handle_timer(self, now_ms: int) -> None:
        """Act on whatever deadline ``now_ms`` reached; otherwise do nothing."""
        if self._state is State.AWAITING_WELCOME:
            if now_ms >= self._welcome_deadline:
                self._close(_Trigger.TIMEOUT, CloseCode.HANDSHAKE_TIMEOUT, "no welcome in time")
        elif self._state is State.OPEN:
            silent = HEARTBEAT_MISSES * self._heartbeat_ms
            if now_ms >= self._last_rx + silent:
                self._close(
                    _Trigger.TIMEOUT, CloseCode.HEARTBEAT_TIMEOUT, f"nothing received for {silent} ms"
                )
            elif now_ms >= self._ping_due():
                self._last_ping = self._ping_ts = now_ms
                self._send_at(frames.Ping(ts=now_ms, stats=dict(self._stats) or None), now_ms)
