"""Stock rules (docs/design.md §3, "Inventory") as pure functions over plain data: the reference.

Stock is not mergeable (two offline devices cannot both sell the last unit), so syncd treats one SKU's stock
as a **bounded counter split into buckets** (escrow):

* ``pool`` — shared by online channels; a channel's **quota** caps how many units it may take from it
  (held or sold through that channel);
* ``allot[store]`` — set aside for one store, so its till can sell offline without asking anyone;
* ``holds[rid]`` — reservations with an expiry (a cart hold, a flash-sale hold);
* ``sold``.

**Invariant**, after every op: ``on_hand == pool + Σ allot + Σ holds.qty`` and every term ≥ 0
(:func:`check`). Every op either keeps it or is rejected with a typed code and changes nothing. A member's
**purchase limit** counts the units they hold or bought, on every channel (``bought``).

The hub's Lua scripts (``syncd/store/lua/stock/``) implement the same rules; the SDK uses :func:`apply` to
predict the ops it may make offline (a store's ``sell`` within its allotment). ``now`` is an argument: time is
an input, so expiry is tested without a clock.

Values: a stock is a dict in the shape :func:`empty` returns; :func:`apply` never mutates its input.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any, Final, NotRequired, TypedDict

from protocol.errors import ErrorCode

RESTOCK: Final = "stock.restock"
ALLOT: Final = "stock.allot"
QUOTA: Final = "stock.quota"
LIMIT: Final = "stock.limit"
RESERVE: Final = "stock.reserve"
COMMIT: Final = "stock.commit"
RELEASE: Final = "stock.release"
SELL: Final = "stock.sell"
ADJUST: Final = "stock.adjust"
RECALL: Final = "stock.recall"
YIELD: Final = "stock.yield"
KINDS: Final = frozenset(
    {RESTOCK, ALLOT, QUOTA, LIMIT, RESERVE, COMMIT, RELEASE, SELL, ADJUST, RECALL, YIELD}
)
EXPIRE: Final = "stock.expire"
"""The kind of the event a sweep appends when it returns expired holds (no op causes it: no origin)."""
ADMIN_KINDS: Final = frozenset({RESTOCK, ALLOT, QUOTA, LIMIT, ADJUST, RECALL})
"""Ops only an ``ops`` token may make."""

MAX_QTY: Final = 1_000_000
"""Units one op may move."""
MAX_TTL_MS: Final = 7 * 24 * 3600 * 1000
"""Longest hold a reservation may ask for."""
NO_LIMIT: Final = 0
"""``limit`` value meaning "no per-member purchase limit"."""
CLEARING: Final = "clearing"
"""``stock.reserve`` ``until`` value: hold until the brand's next daily clearing time (PROTOCOL.md §18)."""


class Hold(TypedDict):
    qty: int
    channel: str
    member: str
    until: int
    """Unix ms after which the hold is expired: it can no longer be committed and returns to the pool."""


class Recall(TypedDict):
    qty: int
    """Units ops ask the store to give back and have not got yet."""
    to: str
    """The store they go to (a rebalance), or ``""``: the pool."""


class Stock(TypedDict):
    on_hand: int
    pool: int
    sold: int
    allot: dict[str, int]
    quota: dict[str, int]
    """Channel -> most units it may have taken (held + sold through it); absent: no cap but the pool."""
    taken: dict[str, int]
    limit: int
    bought: dict[str, int]
    holds: dict[str, Hold]
    recall: NotRequired[dict[str, Recall]]
    """Store -> what ops recall of its allotment: nothing moves until the store's till yields it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    """One stock op in the fields the rules read. ``rid``: the reservation id (``reserve`` mints it as
    ``<client_id>/<seq>``; ``commit``/``release`` name it)."""

    kind: str
    qty: int = 0
    channel: str = ""
    member: str = ""
    store: str = ""
    rid: str = ""
    until: int = 0
    delta: int = 0
    """``adjust``: the stock-take correction of ``on_hand`` (negative: units found missing)."""
    to: str = ""
    """``recall``/``yield``: the store a rebalance moves units to (``""``: the pool)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    stock: Stock
    rejected: ErrorCode | None = None
    result: dict[str, Any] | None = None


def empty() -> Stock:
    return {
        "on_hand": 0,
        "pool": 0,
        "sold": 0,
        "allot": {},
        "quota": {},
        "taken": {},
        "limit": NO_LIMIT,
        "bought": {},
        "holds": {},
    }


def check(stock: Stock) -> None:
    """Raise AssertionError unless the invariant holds (every term ≥ 0, buckets sum to ``on_hand``)."""
    terms = [stock["pool"], *stock["allot"].values(), *(h["qty"] for h in stock["holds"].values())]
    assert all(t >= 0 for t in terms), terms
    assert stock["sold"] >= 0 and all(v >= 0 for v in (*stock["taken"].values(), *stock["bought"].values()))
    assert stock["on_hand"] == sum(terms), (stock["on_hand"], terms)


def atp(stock: Stock, channel: str) -> int:
    """Available to promise to ``channel``: the pool, capped by what is left of the channel's quota."""
    cap = stock["quota"].get(channel)
    left = stock["pool"] if cap is None else min(stock["pool"], cap - stock["taken"].get(channel, 0))
    return max(0, left)


def apply(stock: Stock, op: Op, now: int) -> Outcome:
    """``stock`` after ``op`` at time ``now`` (Unix ms), or a rejection that leaves it unchanged."""
    s: Stock = copy.deepcopy(stock)
    code = _apply(s, op, now)
    if code is not None:
        return Outcome(stock, code)
    result: dict[str, Any] | None = {"rid": op.rid} if op.kind == RESERVE else None
    if op.kind == YIELD:
        result = {"moved": stock["allot"].get(op.store, 0) - s["allot"].get(op.store, 0)}
    return Outcome(s, None, result)


def clearing_instants(now: int, at: dt.time, tz: dt.tzinfo) -> list[int]:
    """The brand's daily clearing instants (Unix ms, ascending) from the day before ``now`` to two days after,
    as wall time ``at`` in ``tz`` (daylight saving included: a ``zoneinfo.ZoneInfo``).

    The hub computes these around its own clock and the script that applies the reservation picks the first
    one after *its* clock (:func:`resolve_until`): so the instant is decided once, at apply time, by the
    clock expiry is judged by, and a replay is answered with it from the dedup record.
    """
    day = dt.datetime.fromtimestamp(now / 1000, tz).date()
    out = set()
    for offset in range(-1, 3):
        local = dt.datetime.combine(day + dt.timedelta(days=offset), at, tzinfo=tz)
        out.add(int(local.timestamp() * 1000))
    return sorted(out)


def resolve_until(
    now: int, *, ttl_ms: int | None = None, until: int | None = None, clearing: Sequence[int] = ()
) -> int | None:
    """When a reservation made at ``now`` expires: ``now + ttl_ms``, the absolute ``until``, or the first
    clearing instant after ``now``; ``None`` (``bad_args``) when that is not in ``(now, now + MAX_TTL_MS]``.
    The hub's script does the same with its own clock (``stock_reserve.lua``)."""
    if ttl_ms is not None:
        out = now + ttl_ms
    elif until is not None:
        out = until
    else:
        out = next((c for c in clearing if c > now), now)
    return out if now < out <= now + MAX_TTL_MS else None


def expire(stock: Stock, now: int) -> tuple[Stock, list[str]]:
    """Every hold past its ``until`` returned to the pool, and their ids (each returns exactly once: a hold
    leaves ``holds`` as it is returned)."""
    s: Stock = copy.deepcopy(stock)
    gone = sorted(rid for rid, h in s["holds"].items() if h["until"] <= now)
    for rid in gone:
        _return(s, rid)
    return s, gone


def _apply(s: Stock, op: Op, now: int) -> ErrorCode | None:
    kind = op.kind
    if kind == RESTOCK:
        s["on_hand"] += op.qty
        s["pool"] += op.qty
    elif kind == ALLOT:
        if op.qty > s["pool"]:
            return ErrorCode.INSUFFICIENT_STOCK
        s["pool"] -= op.qty
        s["allot"][op.store] = s["allot"].get(op.store, 0) + op.qty
    elif kind == QUOTA:
        s["quota"][op.channel] = op.qty
    elif kind == LIMIT:
        s["limit"] = op.qty
    elif kind == RESERVE:
        return _reserve(s, op, now)
    elif kind in (COMMIT, RELEASE):
        hold = s["holds"].get(op.rid)
        if hold is None:
            return ErrorCode.UNKNOWN_RESERVATION
        if kind == RELEASE:
            _return(s, op.rid)
        elif hold["until"] <= now:
            return ErrorCode.RESERVATION_EXPIRED
        else:
            del s["holds"][op.rid]
            s["on_hand"] -= hold["qty"]
            s["sold"] += hold["qty"]
    elif kind == SELL:
        if op.qty > s["allot"].get(op.store, 0):
            return ErrorCode.ALLOTMENT_EXCEEDED
        s["allot"][op.store] -= op.qty
        s["on_hand"] -= op.qty
        s["sold"] += op.qty
    else:
        return _apply_escrow(s, op)
    return None


def _apply_escrow(s: Stock, op: Op) -> ErrorCode | None:
    """The ops that correct or move escrow after the fact: ``adjust`` (a stock take) and, with it, whatever
    else is not one of the eight original kinds."""
    if op.kind == ADJUST:
        # A stock take corrects on_hand through the pool: units found missing can only come from it, since
        # an allotment belongs to its store and a hold to its shopper.
        if -op.delta > s["pool"]:
            return ErrorCode.INSUFFICIENT_STOCK
        s["on_hand"] += op.delta
        s["pool"] += op.delta
        return None
    if op.kind in (RECALL, YIELD) and op.to == op.store:
        return ErrorCode.BAD_ARGS  # a rebalance moves units to another store
    if op.kind == RECALL:
        # A recall moves nothing: the hub never takes escrow from a store (it may be offline and selling).
        # It asks; the store's till answers with ``yield`` in its own op sequence, after its sales.
        recalls = s.setdefault("recall", {})
        if op.qty == 0:
            recalls.pop(op.store, None)
        else:
            recalls[op.store] = {"qty": op.qty, "to": op.to}
        return None
    if op.kind == YIELD:
        _yield(s, op)
        return None
    return ErrorCode.UNKNOWN_OP


def yielded(stock: Stock, op: Op) -> int:
    """The units a ``yield`` moves: what it offers, capped by the recall it answers (same ``to``: a recall
    redirected meanwhile is not the one it answers, so 0) and by the store's allotment, never below zero."""
    recall = stock.get("recall", {}).get(op.store)
    if recall is None or recall["to"] != op.to:
        return 0
    return max(0, min(op.qty, recall["qty"], stock["allot"].get(op.store, 0)))


def _yield(s: Stock, op: Op) -> None:
    moved = yielded(s, op)
    if moved == 0:
        return
    s["allot"][op.store] -= moved
    if op.to:
        s["allot"][op.to] = s["allot"].get(op.to, 0) + moved
    else:
        s["pool"] += moved
    recalls = s["recall"]
    recalls[op.store]["qty"] -= moved
    if recalls[op.store]["qty"] == 0:
        del recalls[op.store]


def _reserve(s: Stock, op: Op, now: int) -> ErrorCode | None:
    """Atomic against the pool, the channel's quota and the member's purchase limit, in that order.
    ``op.until`` is the resolved expiry (:func:`resolve_until`): one not after ``now`` holds nothing."""
    if op.until <= now:
        return ErrorCode.BAD_ARGS
    if op.qty > s["pool"]:
        return ErrorCode.INSUFFICIENT_STOCK
    cap = s["quota"].get(op.channel)
    taken = s["taken"].get(op.channel, 0)
    if cap is not None and taken + op.qty > cap:
        return ErrorCode.QUOTA_EXCEEDED
    bought = s["bought"].get(op.member, 0)
    if s["limit"] != NO_LIMIT and bought + op.qty > s["limit"]:
        return ErrorCode.PURCHASE_LIMIT_EXCEEDED
    s["pool"] -= op.qty
    s["taken"][op.channel] = taken + op.qty
    s["bought"][op.member] = bought + op.qty
    s["holds"][op.rid] = {"qty": op.qty, "channel": op.channel, "member": op.member, "until": op.until}
    return None


def _return(s: Stock, rid: str) -> None:
    """A hold goes back to the pool: it no longer counts against its channel's quota nor its member."""
    hold = s["holds"].pop(rid)
    s["pool"] += hold["qty"]
    s["taken"][hold["channel"]] -= hold["qty"]
    s["bought"][hold["member"]] -= hold["qty"]
