"""Stock as a data type: its ops' argument structs and the shape of its snapshot state and events.

The rules are :mod:`protocol.stock` (the reference); the hub's scripts are ``syncd/store/lua/stock/``. Every
op names the SKU (its topic, ``stock:<sku>``, and its hash slot) and a ``member``: the shopper a reservation
counts against (purchase limit), the one a till sells to, or the operator of an admin op. ``channel`` and
``store`` must be the token's own unless it is an ``ops`` token; admin ops (:class:`AdminArgs`) need one.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from protocol import stock as rules
from protocol.datatype import DataType, Key, OpArgs
from protocol.topics import TopicKind

Qty = Annotated[int, msgspec.Meta(ge=1, le=rules.MAX_QTY)]
Bound = Annotated[int, msgspec.Meta(ge=0, le=rules.MAX_QTY)]
Rid = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,64}/[0-9]{1,16}\Z")]
"""A reservation id: ``<client_id>/<seq>`` of the ``stock.reserve`` that made it."""
Instant = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
"""Unix milliseconds."""


class StockArgs(OpArgs, frozen=True):
    sku: Key


class AdminArgs(StockArgs, frozen=True):
    """An op only an ``ops`` token may make."""

    admin: ClassVar[bool] = True


class StockRestock(AdminArgs, frozen=True):
    """``stock.restock``: ``qty`` new units on hand, into the pool."""

    qty: Qty


class StockAllot(AdminArgs, frozen=True):
    """``stock.allot``: move ``qty`` from the pool to ``store``'s allotment (offline selling)."""

    store: Key
    qty: Qty


class StockQuota(AdminArgs, frozen=True):
    """``stock.quota``: ``channel`` may have taken (held or sold) at most ``qty`` units."""

    channel: Key
    qty: Bound


class StockLimit(AdminArgs, frozen=True):
    """``stock.limit``: a member may hold or buy at most ``qty`` units, on every channel (0: no limit)."""

    qty: Bound


class StockAdjust(AdminArgs, frozen=True):
    """``stock.adjust``: a stock take found ``delta`` units more (or, negative, fewer) on hand than counted;
    the correction goes through the pool (``insufficient_stock`` when the pool cannot absorb a shortfall).
    ``reason`` is kept in the event, so the topic's history says why on_hand changed."""

    delta: Annotated[int, msgspec.Meta(ge=-rules.MAX_QTY, le=rules.MAX_QTY)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class StockRecall(AdminArgs, frozen=True):
    """``stock.recall``: ask ``store`` to give back ``qty`` of its allotment, to the pool or (``to``) to
    another store; 0 withdraws the recall. Nothing moves until the store's till answers with ``stock.yield``:
    the hub never takes escrow from a store, which may be offline and selling it."""

    store: Key
    qty: Bound
    to: Key | None = None


class StockYield(StockArgs, frozen=True):
    """``stock.yield``: a till gives back up to ``qty`` of its store's allotment, answering the recall whose
    ``to`` it names; the hub moves ``min(qty, recall, allotment)``, result ``{"moved": n}``. Only a ``pos``
    token of the store may: a store's escrow leaves only with its own acknowledgement."""

    store: Key
    qty: Qty
    to: Key | None = None
    till_only: ClassVar[bool] = True


class StockReserve(StockArgs, frozen=True):
    """``stock.reserve``: hold ``qty`` for ``member`` through ``channel``; result ``rid`` and ``until``.

    The hold lasts ``ttl_ms``, or ``until`` an absolute instant (Unix ms) or ``"clearing"`` (the brand's
    next daily clearing time); at most one of the two; with neither, the hub's default hold
    (``--stock-default-hold``). The hub resolves it to one instant when it applies the op (PROTOCOL.md §18).
    """

    channel: Key
    qty: Qty
    ttl_ms: Annotated[int, msgspec.Meta(ge=1, le=rules.MAX_TTL_MS)] | None = None
    until: Instant | Literal["clearing"] | None = None

    def __post_init__(self) -> None:
        if self.ttl_ms is not None and self.until is not None:
            raise ValueError("give ttl_ms or until, not both")


class StockCommit(StockArgs, frozen=True):
    """``stock.commit``: the reservation ``rid`` is sold."""

    rid: Rid


class StockRelease(StockArgs, frozen=True):
    """``stock.release``: the reservation ``rid`` returns to the pool."""

    rid: Rid


class StockSell(StockArgs, frozen=True):
    """``stock.sell``: a till sells ``qty`` from ``store``'s allotment (may be made offline)."""

    store: Key
    qty: Qty


class StockView(msgspec.Struct, forbid_unknown_fields=False):
    """A stock snapshot's ``state`` and every stock event's ``data``: small, as thousands watch it."""

    on_hand: int
    pool: int
    sold: int
    atp: dict[str, int]
    """Available to promise per channel; ``"*"``: a channel without a quota (the pool)."""
    allot: dict[str, int]


STOCK = DataType(
    kind=TopicKind.STOCK,
    ops={
        rules.RESTOCK: StockRestock,
        rules.ALLOT: StockAllot,
        rules.QUOTA: StockQuota,
        rules.LIMIT: StockLimit,
        rules.RESERVE: StockReserve,
        rules.COMMIT: StockCommit,
        rules.RELEASE: StockRelease,
        rules.SELL: StockSell,
        rules.ADJUST: StockAdjust,
        rules.RECALL: StockRecall,
        rules.YIELD: StockYield,
    },
    key_field="sku",
    state=StockView,
    event=StockView,
    events=frozenset({rules.EXPIRE}),
)
"""One SKU's stock, topic ``stock:<sku>`` (docs/design.md §3, "Inventory")."""
