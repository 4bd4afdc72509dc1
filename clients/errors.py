"""What the SDK raises or reports, on top of the protocol's error tree (:mod:`protocol.errors`).

One class per decision the application makes; the cause is a ``code`` or an attribute::

    SyncError                       protocol.errors: root of everything syncd raises on purpose
    ├── ProtocolError               the hub broke the protocol (malformed frame, unknown tag, bad event data)
    ├── ConnectionClosed            the connection ended; ``retryable``: whether the SDK keeps reconnecting
    │   ├── AuthRequired            the hub refused the token: ops are kept, ``set_token()`` resumes
    │   └── ClientStopped           the hub refuses this client as configured: a person must act
    ├── OpRejected                  the hub settled an op with a rejection (``code``); it left the outbox
    ├── BackendUnavailable          the local store (SQLite) failed; the call may be retried
    ├── SubscriptionRefused         the hub refused a topic (``code``: not_permitted, unknown_topic, …)
    ├── UnexpectedEvent             an event of a kind this SDK does not know: skipped, cursor advanced
    ├── OutboxStalled               the hub refuses to apply the outbox (a seq gap the SDK cannot fill)
    └── ClientClosed                the client was closed while a call waited; ops stay in the outbox

``ProtocolError``, ``ConnectionClosed``, ``OpRejected`` and ``BackendUnavailable`` are the protocol's own
classes, re-exported so that applications import every error from :mod:`clients`.

Which conditions stop progress, and how the client waits (every waiter — ``op.acked()``, ``wait_synced()``,
the blocking ``result()`` — fails at once with the error; no op is ever dropped):

* ``AuthRequired`` (``status.state`` ``auth_required``): close 4500 unauthorized (including a token for
  another ``client_id`` than the data directory's), 4501 token_expired, 4504 revoked. With a token string the
  client then waits for ``set_token()``, never reconnecting by itself; with a token provider it asks the
  provider again with backoff (a first 4501 is just a stale token: it is renewed at once, nobody fails).
* ``ClientStopped`` (``stopped``): close 4502 forbidden_origin, 4503 unsupported_version, a protocol error
  the hub reports (1002, 1007, 1009) or ends with 1000, an unusable URL or client id. Nothing retries until
  ``go_online()``.
* ``OutboxStalled``: the hub's history does not hold this client's earlier ops (a data directory restored
  or copied from another device). The client stays online and retries slowly; waiters fail until an op is
  settled again.
* ``ClientClosed``: the client was closed.

A hub that cannot be reached is *not* among them: ops wait in the outbox for as long as it takes, and
``status`` shows the attempts and the last error.
"""

from __future__ import annotations

from protocol.errors import BackendUnavailable, ConnectionClosed, OpRejected, ProtocolError, SyncError

__all__ = [
    "AuthRequired",
    "BackendUnavailable",
    "ClientClosed",
    "ClientStopped",
    "ConnectionClosed",
    "OpRejected",
    "OutboxStalled",
    "ProtocolError",
    "SubscriptionRefused",
    "SyncError",
    "UnexpectedEvent",
]


class AuthRequired(ConnectionClosed):
    """The hub refused this client's token (``code`` 4500, 4501 or 4504, ``reason`` the hub's words).

    Every op is kept. ``client.set_token(...)`` resumes at once; a token provider is asked again with
    backoff.
    """


class ClientStopped(ConnectionClosed):
    """The hub will not serve this client as it is configured (``code`` and ``reason`` say why: 4503 a
    protocol version it does not speak, 4502 an origin it refuses, a protocol error). Every op is kept; a
    person must act, then ``client.go_online()`` tries again."""


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
