"""What the SDK raises or reports, on top of the protocol's error tree (:mod:`protocol.errors`).

One class per decision the application makes; the cause is a ``code`` or an attribute::

    SyncError                       protocol.errors: root of everything syncd raises on purpose
    ├── ProtocolError               the hub broke the protocol (malformed frame, unknown tag, bad event data)
    ├── ConnectionClosed            the connection ended; ``retryable``: whether the SDK keeps reconnecting
    ├── OpRejected                  the hub settled an op with a rejection (``code``); it left the outbox
    ├── BackendUnavailable          the local store (SQLite) failed; the call may be retried
    ├── SubscriptionRefused         the hub refused a topic (``code``: not_permitted, unknown_topic, …)
    ├── UnexpectedEvent             an event of a kind this SDK does not know: skipped, cursor advanced
    ├── OutboxStalled               the hub refuses to apply the outbox (a seq gap the SDK cannot fill)
    └── ClientClosed                the client was closed while a call waited; ops stay in the outbox

``ProtocolError``, ``ConnectionClosed``, ``OpRejected`` and ``BackendUnavailable`` are the protocol's own
classes, re-exported so that applications import every error from :mod:`clients`.
"""

from __future__ import annotations

from protocol.errors import BackendUnavailable, ConnectionClosed, OpRejected, ProtocolError, SyncError

__all__ = [
    "BackendUnavailable",
    "ClientClosed",
    "ConnectionClosed",
    "OpRejected",
    "OutboxStalled",
    "ProtocolError",
    "SubscriptionRefused",
    "SyncError",
    "UnexpectedEvent",
]


class SubscriptionRefused(SyncError):
    """The hub refused to subscribe a topic (``code`` is the ``err`` code, e.g. ``not_permitted``).

    The topic's cached state stays readable; the SDK asks again on the next connection, since a new token may
    grant it.
    """

    def __init__(self, topic: str, code: str, message: str = "") -> None:
        super().__init__(f"subscription to {topic} refused: {code}" + (f" ({message})" if message else ""))
        self.topic = topic
        self.code = code
        self.message = message


class UnexpectedEvent(SyncError):
    """The hub sent an event of a kind this SDK does not know (PROTOCOL.md §8.1: skip it, keep the cursor).

    Reported, never raised into the connection: a newer hub may add event kinds, and the state of the
    topic is left as it was.
    """

    def __init__(self, topic: str, kind: str) -> None:
        super().__init__(f"skipped an event of unknown kind {kind!r} on {topic}")
        self.topic = topic
        self.kind = kind


class OutboxStalled(SyncError):
    """The hub answers ``seq_gap`` for the oldest op in the outbox: it lacks ops this client no longer has.

    This happens only when the hub lost acknowledged history (Redis restored from an old backup) or the
    client's data directory was replaced. The SDK keeps the ops and retries slowly; an operator must act.
    """

    def __init__(self, seq: int, message: str = "") -> None:
        super().__init__(f"hub refuses seq {seq} with seq_gap" + (f": {message}" if message else ""))
        self.seq = seq


class ClientClosed(SyncError):
    """The :class:`~clients.SyncClient` was closed while this call waited.

    For ``await op.acked()`` it means the outcome is not known yet: the op stays in the outbox and is sent
    when a client opens the same data directory again.
    """
