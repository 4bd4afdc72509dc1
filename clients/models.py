"""The SDK's public values: what a cart shows, what changed, how the client is doing, what was rejected.

All are frozen: a value handed to the application never changes under it. Times are timezone-aware UTC
``datetime``s on this device's clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any

from clients.engine import ChangeCause
from protocol.errors import ConnectionClosed, SyncError

__all__ = [
    "CartChange",
    "CartConflict",
    "CartLine",
    "CartState",
    "ChangeCause",
    "ConnectionState",
    "Rejection",
    "Status",
    "from_ms",
]


def from_ms(ms: int | None) -> dt.datetime | None:
    """A Unix time in milliseconds as an aware UTC datetime (``None`` stays ``None``)."""
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class CartLine:
    """One line of a cart as this device shows it: the hub's line with our pending ops applied."""

    sku: str
    qty: int
    attrs: Mapping[str, str | int | bool] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class CartConflict:
    """Concurrent ``set``s on a line (docs/cart-rules.md): which one the quantity follows and which lost.

    ``winner`` and each loser are ``(client_id, seq, qty)``. The losers stay live on the hub: a ``set`` made
    after seeing this conflict resolves it.
    """

    sku: str
    winner: tuple[str, int, int]
    losers: tuple[tuple[str, int, int], ...]

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> CartConflict:
        return cls(
            sku=str(data["sku"]),
            winner=(str(data["winner"][0]), int(data["winner"][1]), int(data["winner"][2])),
            losers=tuple((str(c), int(s), int(q)) for c, s, q, *_ in data["losers"]),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class CartState:
    """A cart at one instant: its lines and how far they are confirmed by the hub.

    ``error`` is set when the hub refused the cart's subscription (the cached lines stay readable).
    """

    member: str
    lines: Mapping[str, CartLine]
    from_cache: bool
    has_pending_writes: bool
    error: SyncError | None = None

    @property
    def total_qty(self) -> int:
        return sum(line.qty for line in self.lines.values())


@dataclasses.dataclass(frozen=True, slots=True)
class CartChange:
    """The cart changed. ``lines`` is the whole cart as shown now; ``skus`` the lines that may differ.

    * ``cause`` — a local op, a hub event, a (reset) snapshot, or a rejection withdrawing a predicted op;
    * ``from_cache`` — the hub has not confirmed this state on the current connection (offline, or not
      yet resynchronised): it is what this device last knew, with its own ops on top;
    * ``has_pending_writes`` — some of our ops on this cart are not yet visible in the hub's state;
    * ``origin`` — ``(client_id, seq)`` of the op behind a hub event (ours or another device's);
    * ``conflicts`` — the hub reported concurrent ``set``s on a line (``conflict``: the latest).

    When the application reads changes slower than they happen, consecutive changes are merged into one
    (``skus`` united, the latest ``lines``), so a slow reader never holds the sync back.
    """

    member: str
    cause: ChangeCause
    lines: Mapping[str, CartLine]
    skus: frozenset[str] | None
    from_cache: bool
    has_pending_writes: bool
    origin: tuple[str, int] | None = None
    conflicts: tuple[CartConflict, ...] = ()
    kind: str | None = None

    @property
    def conflict(self) -> CartConflict | None:
        """The latest conflict the hub reported in this change (``conflicts`` holds every one merged in)."""
        return self.conflicts[-1] if self.conflicts else None


@dataclasses.dataclass(frozen=True, slots=True)
class SoldOut(CartChange):
    """A cart change in which the cart's sold-out lines changed: a SKU on it sold out, or came back (restock,
    an expired hold returned), or a line for a sold-out SKU came or went. ``sold_out`` is every line's SKU
    that has nothing left to promise online now (its pool is 0), as :attr:`Cart.sold_out`; ``skus`` says
    which SKUs changed. The cart follows the stock of its lines' SKUs for this (:mod:`clients.follow`)."""

    sold_out: frozenset[str] = frozenset()


class ConnectionState(enum.Enum):
    """Where the client's connection to its hub stands. Each change is one log line (``clients`` logger)."""

    OFFLINE = "offline"
    """Not connected, on purpose: ``online=False`` or ``go_offline()``."""
    CONNECTING = "connecting"
    """Trying to reach a hub: an attempt under way or the backoff before the next (``attempts``,
    ``last_error``)."""
    ONLINE = "online"
    """The hub welcomed us: ops flow and subscriptions resume."""
    AUTH_REQUIRED = "auth_required"
    """The hub refused the token (``last_error`` is an ``AuthRequired``): ops wait for ``set_token()`` (or the
    token provider, asked again with backoff)."""
    STOPPED = "stopped"
    """The hub refuses this client as configured (``last_error`` is a ``ClientStopped``): a person must act,
    then ``go_online()``."""


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of the client's health, as ops and dashboards want it (docs/traps.md §9: queues wedge).

    ``stopped`` is true when the client will not reconnect by itself (``auth_required`` with a token string,
    ``stopped``); ``last_error`` says why. ``attempts`` counts the connection attempts that failed since the
    client was last online; ``hub`` is the URL of the hub it is connected to or trying.
    """

    state: ConnectionState
    pending_ops: int
    oldest_pending_at: dt.datetime | None
    last_synced_at: dt.datetime | None
    last_error: SyncError | None
    clock_offset_ms: int | None = None
    stopped: bool = False
    attempts: int = 0
    hub: str | None = None

    @property
    def online(self) -> bool:
        return self.state is ConnectionState.ONLINE

    @property
    def fatal(self) -> ConnectionClosed | None:
        """The close that stopped the client, when it is stopped."""
        return self.last_error if self.stopped and isinstance(self.last_error, ConnectionClosed) else None


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """An op the hub settled with a rejection. It left the outbox; it is kept until marked seen.

    ``code`` is the protocol's rejection code (``limit_exceeded``, ``not_permitted``, ``bad_args``, …), never
    a transport failure: a rejected op will not be sent again.
    """

    seq: int
    kind: str
    args: Mapping[str, Any]
    code: str
    message: str
    result: Mapping[str, Any] | None
    made_at: dt.datetime
    rejected_at: dt.datetime
    seen: bool = False
