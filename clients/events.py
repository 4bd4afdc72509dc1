"""What the sync engine tells its driver, and the per-topic record it asks it to persist.

The engine (:mod:`clients.engine`) is sans-I/O: it reports everything that happened as one of these values
(:data:`EngineEvent`), in order, from :meth:`~clients.engine.SyncEngine.events_received`; the driver stores,
notifies and loads as they say.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, TypeAlias

from clients.errors import SubscriptionRefused
from protocol import frames
from protocol.errors import SyncError

# --- persisted shapes ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TopicRecord:
    """What the outbox store keeps per topic, written atomically: the three only make sense together.

    ``state`` is the server state at ``cursor`` (``None`` until the first snapshot); ``reflected`` is the
    highest ``seq`` of ours that ``state`` is known to include (ops of ours on this topic with a higher seq
    form the overlay).
    """

    topic: str
    state: dict[str, Any] | None = None
    cursor: frames.Cursor | None = None
    reflected: int = 0


# --- events for the driver ---------------------------------------------------------------------------------


class ChangeCause(enum.Enum):
    """Why a view changed."""

    LOCAL = "local"
    """An op was made on this device (not confirmed yet)."""
    EVENT = "event"
    """The hub applied a change (ours or another device's)."""
    SNAPSHOT = "snapshot"
    """The server state was (re)loaded from a snapshot."""
    RESET = "reset"
    """The hub could not resume from our cursor: the cached state was replaced."""
    REJECTED = "rejected"
    """An op of ours was rejected: its predicted effect was withdrawn."""
    STOCK = "stock"
    """A SKU on the cart sold out or came back (the cart follows its stock: ``SoldOut``)."""
    ACKED = "acked"
    """The hub applied an op of ours that is shown only once applied (a stock reservation): shown from now."""


@dataclasses.dataclass(frozen=True, slots=True)
class OpSettled:
    """The hub settled an op: applied (``ok``) or rejected (``code``). It leaves the pending outbox.

    ``keep``: applied, but the cached server state of its topic does not show it yet; the store keeps the row
    (marked acked) so that the view still includes the op after a restart, until the topic's record moves
    ``reflected`` past it.
    """

    op: frames.Op
    ok: bool
    result: dict[str, Any] | None
    code: str | None
    message: str
    dup: bool
    keep: bool
    at: int


@dataclasses.dataclass(frozen=True, slots=True)
class TopicChanged:
    """A topic's local view changed. ``skus``: the lines that may differ (``None``: any of them)."""

    topic: str
    cause: ChangeCause
    skus: frozenset[str] | None = None
    origin: frames.Origin | None = None
    conflict: dict[str, Any] | None = None
    kind: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TopicSynced:
    """A topic's subscription is in sync with the hub on this connection (its snapshot arrived)."""

    topic: str


@dataclasses.dataclass(frozen=True, slots=True)
class LoadOps:
    """Load up to ``limit`` unsettled ops with ``seq > after_seq`` from the outbox (then ``ops_loaded``)."""

    after_seq: int
    limit: int


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionFailed:
    """The hub refused a subscription; the engine asks again on the next connection."""

    error: SubscriptionRefused


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """Something the application should be able to see (``status.last_error``), without ending anything."""

    error: SyncError


EngineEvent: TypeAlias = OpSettled | TopicChanged | TopicSynced | LoadOps | SubscriptionFailed | Notice
