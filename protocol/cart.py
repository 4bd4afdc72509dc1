"""The cart rules (docs/cart-rules.md) as pure functions over plain data: the reference implementation.

Everything here is deterministic, I/O-free and works on the wire shapes themselves (dicts, lists, strings,
integers), so the same values are what Redis stores, what events carry and what the SDK caches. The hub's
Lua scripts re-implement :func:`apply` and are differential-tested against it; the SDK uses
:func:`predict` (the same rules without folding) to show the effect of its pending ops. Where this module
and docs/cart-rules.md disagree, one of them has a bug.

**The model in one paragraph.** A line is a set of *live dots*, one per op whose contribution still counts,
each ``[client_id, seq, kind, value, hlc]`` plus the op's ``attrs`` when it carried some. An op removes
exactly the dots its causal context ``ctx`` covers (what its client had seen) and adds its own dot. So an op
can only undo what it saw: concurrent adds survive a remove (add-wins), concurrent adds sum, and concurrent
sets all stay live with one deterministic winner. Because every covered dot was applied before the op that
covers it, the final set of live dots does not depend on the order in which concurrent ops arrive; and
everything a line holds - quantity, vector, attrs, even the order of its dots - is a function of that set.
So without folding the whole state converges, byte for byte (tested as a property over every causal
interleaving), which is the point: *a conflict is concurrency by the version vectors, never arrival order*
(docs/design.md §3, docs/traps.md §10).

**Values.** A cart is ``{"lines": {sku: line}, "folds": n}``; a line is
``{"qty": int, "attrs": {…}, "vv": {client: seq}, "dots": [dot, …]}`` (``attrs`` omitted when empty), the
same shape stored and sent. ``qty``, ``attrs`` and ``vv`` are derived from ``dots`` (cached so that readers
need not recompute them); ``dots`` are in canonical order (:func:`dot_order`). Carts are treated as
immutable values: :func:`apply` never mutates its input, and the cart it returns shares unchanged lines and
dots with the input, so do not mutate either.

**Exactly once is the caller's job.** :func:`apply` does not deduplicate: the hub records ``(client_id,
seq)`` in the same atomic step and never applies an op twice; applying one twice here would add its dot
twice.

**Where ``ctx`` comes from.** A client must build ``ctx`` from line states the hub delivered (snapshot and
events of ``cart:<member>``, which form a gap-free prefix of the cart's history) plus its own earlier ops:
the rules rely on "a covered dot was applied before", and the hub entry ``~`` is only meaningful as the hub
issued it. The SDK must therefore never fold locally (folds are numbered by the hub): :func:`predict`.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final, Literal, NotRequired, TypeAlias, TypedDict

from protocol import codec
from protocol import vv as vvs
from protocol.errors import ErrorCode

# --- limits and names ------------------------------------------------------------------------------------

MAX_LINES: Final = 200
"""Lines per cart: an op that would create line 201 is rejected with ``limit_exceeded``."""
MAX_DOTS: Final = 16
"""Live dots per line besides the base dot; beyond it the lowest add-dots are folded into the base."""
MAX_LINE_BYTES: Final = 64 * 1024
"""Encoded bytes of one line (:func:`line_bytes`): an op that would leave a line larger, and larger than it
was, is rejected with ``too_large``. Room for two copies of the largest attrs an op may carry (the dot's and
the line's own, about 21 KiB each in 4-byte characters), so any one op fits an empty line."""
MAX_CART_BYTES: Final = 1024 * 1024
"""Encoded bytes of a cart's lines together (:func:`cart_bytes`); the same rule (``too_large``)."""
_NEVER: Final = 1 << 62
"""A bound :func:`predict` uses: never reached, so it never folds nor refuses a set-dot or a size."""
MAX_ATTRS: Final = 16
"""Keys per ``attrs`` map."""
MAX_ATTR_KEY: Final = 64
"""Characters (Unicode code points) per ``attrs`` key."""
MAX_ATTR_STR: Final = 256
"""Characters (Unicode code points) per string ``attrs`` value."""
SKU_PATTERN: Final = re.compile(r"[A-Za-z0-9._@-]{1,64}")
"""SKUs and member ids (the alphabet of :data:`protocol.topics.KEY_PATTERN` and :mod:`protocol.ops`)."""
CLIENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""Client ids (:data:`protocol.frames.ClientId`); ``~`` is not among them, so no client's dot is a base."""
ADD_QTY: Final = (1, 999)
"""Inclusive range of ``cart.add``'s ``qty``."""
SET_QTY: Final = (0, 9999)
"""Inclusive range of ``cart.set``'s ``qty`` (0 = remove)."""
MAX_INT: Final = 2**53 - 1
"""Integers (seq, hlc, vector entries, integer attrs) stay exact as doubles (JSON, JavaScript, Lua)."""

BASE: Final = vvs.HUB
"""The client name of the base dot (``"~"``): no client can have it."""

ADD: Final = "cart.add"
SET: Final = "cart.set"
REMOVE: Final = "cart.remove"
CLEAR: Final = "cart.clear"
KINDS: Final = frozenset({ADD, SET, REMOVE, CLEAR})

DOT_ADD: Final = "a"
DOT_SET: Final = "s"
DOT_BASE: Final = "b"

BAD_ARGS: Final = ErrorCode.BAD_ARGS.value
LIMIT_EXCEEDED: Final = ErrorCode.LIMIT_EXCEEDED.value
TOO_LARGE: Final = ErrorCode.TOO_LARGE.value

# --- data shapes -----------------------------------------------------------------------------------------

AttrValue: TypeAlias = str | int | bool
Attrs: TypeAlias = dict[str, AttrValue]
Dot: TypeAlias = list[Any]
"""``[client_id, seq, kind, value, hlc]``, plus ``attrs`` as a 6th element when the op carried some; kind
``"a"`` add (value = delta), ``"s"`` set (value = quantity), ``"b"`` base (``["~", n, "b", sum, 0]``, plus
``attrs, [hlc, client_id, seq]`` when a folded dot carried attrs: the winning folded attrs and the key of the
dot they came from, which the base competes with). A list, not a tuple: that is what MessagePack and JSON
give back; a later protocol version may append elements, which these functions ignore."""


class Line(TypedDict):
    """A cart line, stored and on the wire: ``qty``, ``attrs`` and ``vv`` derive from ``dots``."""

    qty: int
    vv: dict[str, int]
    dots: list[Dot]
    attrs: NotRequired[Attrs]
    """Omitted when empty (no live dot carries attrs, or the winning ones are ``{}``)."""


class Cart(TypedDict):
    """A stored cart: its lines and the fold counter that numbers base dots (see :func:`apply`)."""

    lines: dict[str, Line]
    folds: int


class Conflict(TypedDict):
    """Two or more live set-dots on a line: what won and what lost, greatest first (:func:`conflict_of`)."""

    sku: str
    winner: list[Any]
    losers: list[list[Any]]


@dataclasses.dataclass(frozen=True)
class CartOp:
    """One cart op, already decoded (see :func:`parse_op`). ``(client_id, seq)`` is its dot.

    ``ctx`` is the version vector of what the client had seen: of the line for ``cart.set``/``cart.remove``,
    of the whole cart (:func:`cart_vv`) for ``cart.clear``; ``cart.add`` removes nothing and ignores it.
    ``sku`` is ``None`` only for ``cart.clear``; ``qty`` is set only for add and set; ``attrs`` is optional
    for add and set and ``None`` otherwise.
    """

    kind: str
    client_id: str
    seq: int
    hlc: int = 0
    ctx: Mapping[str, int] = dataclasses.field(default_factory=dict)
    sku: str | None = None
    qty: int | None = None
    attrs: Mapping[str, AttrValue] | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What applying an op did.

    Accepted (``rejected is None``): ``cart`` is the new cart; ``changed`` maps every sku whose line
    changed to its new wire form (:func:`wire_line`) or ``None`` if the line is gone - exactly the event's
    ``data["lines"]``; ``conflict`` is the event's ``conflict`` (or ``None``); ``result`` is the ack's
    result.

    Rejected: ``rejected`` is the code (``"bad_args"``, ``"limit_exceeded"``), ``cart`` is the input
    unchanged, ``changed`` is empty and ``result``/``conflict`` are ``None``. A rejection changes nothing,
    so a Lua port can check everything before its first write (docs/traps.md §3).
    """

    cart: Cart
    changed: dict[str, Line | None]
    conflict: Conflict | None
    result: dict[str, int] | None
    rejected: str | None = None

    def event_data(self) -> dict[str, Any]:
        """The ``data`` of the event this op publishes: ``{"lines": {sku: line | None}}``."""
        return {"lines": dict(self.changed)}


class CartArgsError(ValueError):
    """The op's arguments are missing, ill-typed or out of range: the op is rejected with ``bad_args``."""

    code: Final = BAD_ARGS


# --- reading lines ---------------------------------------------------------------------------------------


def empty_cart() -> Cart:
    """A cart with no lines that has never folded."""
    return {"lines": {}, "folds": 0}


def _key(hlc: int, client_id: str, seq: int) -> tuple[int, bytes, int]:
    # The total order of writes for tie-breaking: hybrid-logical time first (close to real time, so the
    # later write usually wins), then client_id as UTF-8 bytes (what Lua's string comparison does under the
    # C locale; Python's str order agrees, but bytes say it explicitly), then seq. Unique because dots are.
    return (hlc, client_id.encode("utf-8"), seq)


def _dot_key(dot: Dot) -> tuple[int, bytes, int]:
    return _key(dot[4], dot[0], dot[1])


def dot_order(dot: Dot) -> tuple[bool, int, bytes, int]:
    """The sort key of a line's canonical dot order: the base dot first, then ascending
    ``(hlc, client_id as UTF-8 bytes, seq)``. A line's ``dots`` are always in this order, so a line's state
    depends on its set of live dots only, never on the order ops arrived in."""
    return (dot[2] != DOT_BASE, dot[4], dot[0].encode("utf-8"), dot[1])


def _attrs_key(dot: Dot) -> tuple[int, bytes, int]:
    # The key a dot's attrs compete with: its own, or for a base the key of the folded dot they came from.
    if dot[2] == DOT_BASE:
        return _key(*dot[6])
    return _dot_key(dot)


def _attrs_dot(dots: list[Dot]) -> Dot | None:
    """The live dot whose attrs are the line's: of the dots that carry attrs, the greatest key."""
    best: Dot | None = None
    for d in dots:
        if len(d) > 5 and (best is None or _attrs_key(d) > _attrs_key(best)):
            best = d
    return best


def _set_dots(dots: list[Dot]) -> list[Dot]:
    """The live set-dots, winner first: greatest ``(hlc, client_id, seq)`` first."""
    return sorted((d for d in dots if d[2] == DOT_SET), key=_dot_key, reverse=True)


def _qty(dots: list[Dot]) -> int:
    # qty = winning set's value + every live add and base. Every live add/base dot is concurrent with the
    # winning set (a set removes all dots it saw), so counting them is "concurrent adds always count".
    # Losing sets do not count: two devices setting 2 and 3 want 2 or 3, not 5.
    sets = _set_dots(dots)
    base = sets[0][3] if sets else 0
    return int(base + sum(d[3] for d in dots if d[2] != DOT_SET))


def _vv(dots: list[Dot]) -> dict[str, int]:
    # Derived, never stored independently: vv[c] = greatest seq of c's live dots. A client's dots are
    # applied in seq order, so this names every dot of c the line ever held up to there (live or since
    # removed).
    out: dict[str, int] = {}
    for d in dots:
        if d[1] > out.get(d[0], 0):
            out[d[0]] = d[1]
    return vvs.canonical(out)


def line_qty(line: Line) -> int:
    """The line's quantity, computed from its dots (equals the cached ``line["qty"]``)."""
    return _qty(line["dots"])


def line_attrs(line: Line) -> Attrs:
    """The line's attrs, computed from its dots: ``{}`` when none (equals the cached ``attrs`` or ``{}``)."""
    winner = _attrs_dot(line["dots"])
    return dict(winner[5]) if winner is not None else {}


def line_vv(line: Line) -> dict[str, int]:
    """The line's version vector, from its dots: what a client sends as ``ctx`` to set or remove the line."""
    return _vv(line["dots"])


def line_bytes(line: Line) -> int:
    """The line's size as the hub stores and sends it: its wire form (:func:`wire_line`) in MessagePack."""
    return codec.encoded_size(wire_line(line))


def cart_bytes(cart: Cart) -> int:
    """The cart's size: the sum of its lines' (:func:`line_bytes`), what :data:`MAX_CART_BYTES` bounds."""
    return sum(line_bytes(line) for line in cart["lines"].values())


def cart_vv(cart: Cart) -> dict[str, int]:
    """The merge of every line's vector: what a client that saw this cart sends as ``ctx`` to clear it."""
    out: dict[str, int] = {}
    for line in cart["lines"].values():
        out = vvs.merge(out, _vv(line["dots"]))
    return out


def conflict_of(sku: str, line: Line) -> Conflict | None:
    """The line's conflict, if it holds two or more live set-dots; ``None`` otherwise.

    ``winner`` and ``losers`` are ``[client_id, seq, value]``, losers greatest first. Losers stay live: a
    later op that sees only the winner removes it and the next one wins, as if the winner had never been
    written.
    """
    sets = _set_dots(line["dots"])
    if len(sets) < 2:
        return None
    return {
        "sku": sku,
        "winner": [sets[0][0], sets[0][1], sets[0][3]],
        "losers": [[d[0], d[1], d[3]] for d in sets[1:]],
    }


def wire_line(line: Line) -> Line:
    """The line as snapshots and events carry it: ``{"qty", "attrs"?, "vv", "dots"}`` (the stored shape)."""
    out: Line = {"qty": line["qty"], "vv": line["vv"], "dots": line["dots"]}
    attrs = line.get("attrs")
    if attrs:
        out["attrs"] = attrs
    return out


def snapshot(cart: Cart) -> dict[str, Any]:
    """The state of topic ``cart:<member>``: ``{"lines": {sku: line}}`` in wire form."""
    return {"lines": {sku: wire_line(line) for sku, line in cart["lines"].items()}}


def _make_line(dots: list[Dot]) -> Line:
    line: Line = {"qty": _qty(dots), "vv": _vv(dots), "dots": dots}
    winner = _attrs_dot(dots)
    if winner is not None and winner[5]:
        line["attrs"] = winner[5]
    return line


# --- validating ops --------------------------------------------------------------------------------------


def _is_int(value: object, lo: int, hi: int) -> bool:
    # bool is an int subclass in Python but a distinct type on the wire: refuse it where a number is meant.
    return type(value) is int and lo <= value <= hi


def _is_str(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, str) and lo <= len(value) <= hi


def _matches(value: object, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _attrs_problem(attrs: object) -> str | None:
    if not isinstance(attrs, Mapping):
        return "attrs must be a map"
    if len(attrs) > MAX_ATTRS:
        return f"attrs has more than {MAX_ATTRS} keys"
    for k, v in attrs.items():
        if not _is_str(k, 1, MAX_ATTR_KEY):
            return f"attrs keys must be strings of 1..{MAX_ATTR_KEY} characters"
        if isinstance(v, bool) or _is_int(v, -MAX_INT, MAX_INT) or _is_str(v, 0, MAX_ATTR_STR):
            continue
        return f"attrs[{k!r}] must be a string of at most {MAX_ATTR_STR} characters, an integer or a boolean"
    return None


def _ctx_problem(ctx: object) -> str | None:
    if not isinstance(ctx, Mapping):
        return "ctx must be a map"
    for k, v in ctx.items():
        if not isinstance(k, str) or not _is_int(v, 0, MAX_INT):
            return "ctx must map strings to integers 0..2**53-1"
    return None


def check_op(op: CartOp) -> str | None:
    """Why ``op`` is malformed (a message for the ``bad_args`` rejection), or ``None`` if it is well formed.

    Checks types and ranges only: the limits that depend on the cart's state (lines, set-dots) are
    ``limit_exceeded`` and checked by :func:`apply`.
    """
    if op.kind not in KINDS:
        return f"unknown cart op {op.kind!r}"
    if not _matches(op.client_id, CLIENT_ID_PATTERN):
        return "client_id must be 1..64 of [A-Za-z0-9._:-]"
    if not _is_int(op.seq, 1, MAX_INT):
        return "seq must be an integer 1..2**53-1"
    if not _is_int(op.hlc, 0, MAX_INT):
        return "hlc must be an integer 0..2**53-1"
    problem = _ctx_problem(op.ctx)
    if problem is not None:
        return problem
    if op.kind == CLEAR:
        if op.sku is not None or op.qty is not None or op.attrs is not None:
            return "cart.clear takes no sku, qty or attrs"
        return None
    if not _matches(op.sku, SKU_PATTERN):
        return "sku must be 1..64 of [A-Za-z0-9._@-]"
    if op.kind == REMOVE:
        if op.qty is not None or op.attrs is not None:
            return "cart.remove takes no qty or attrs"
        return None
    lo, hi = ADD_QTY if op.kind == ADD else SET_QTY
    if not _is_int(op.qty, lo, hi):
        return f"qty must be an integer {lo}..{hi}"
    if op.attrs is not None:
        return _attrs_problem(op.attrs)
    return None


def parse_op(
    kind: str,
    args: Mapping[str, Any],
    *,
    client_id: str,
    seq: int,
    hlc: int = 0,
    ctx: Mapping[str, int] | None = None,
) -> CartOp:
    """Build a :class:`CartOp` from an ``op`` frame's fields; raise :class:`CartArgsError` if malformed.

    The hub validates ``args`` with :func:`protocol.ops.parse_args` first; this mirrors the same rules on
    plain data (what a Lua port and its differential tests see). ``args`` must name ``member`` (whether the
    client may act for it is not checked here) and, except for ``cart.clear``, ``sku``; ``qty`` for add and
    set; ``attrs`` optionally for add and set (``None`` = absent). Keys an op does not use are ignored, as
    receivers ignore unknown keys. A missing ``ctx`` is the empty vector: it covers nothing.
    """
    if not isinstance(args, Mapping):
        raise CartArgsError("args must be a map")
    if not _matches(args.get("member"), SKU_PATTERN):
        raise CartArgsError("member must be 1..64 of [A-Za-z0-9._@-]")
    line_op = kind != CLEAR
    op = CartOp(
        kind=kind,
        client_id=client_id,
        seq=seq,
        hlc=hlc,
        ctx={} if ctx is None else ctx,
        sku=args.get("sku") if line_op else None,
        qty=args.get("qty") if kind in (ADD, SET) else None,
        attrs=args.get("attrs") if kind in (ADD, SET) else None,
    )
    problem = check_op(op)
    if problem is not None:
        raise CartArgsError(problem)
    return op


# --- applying ops ----------------------------------------------------------------------------------------


def apply(cart: Cart, op: CartOp) -> Outcome:
    """Apply one op to a cart (docs/cart-rules.md), as the hub does. Pure: never mutates ``cart``.

    Rules, in the order a port must follow them:

    1. **Validate** (:func:`check_op`); a malformed op is rejected ``bad_args`` and changes nothing.
    2. **Remove what the op saw.** ``cart.set``/``cart.remove``: every dot of the line that ``ctx`` covers
       (``ctx.get(client, 0) >= seq``; the base dot ``["~", n, …]`` is covered by ``ctx["~"] >= n``),
       attrs included. ``cart.clear``: the same on every line. ``cart.add``: nothing - adding never undoes
       anyone's write. An op cannot remove a dot it did not see, so a concurrent add or set survives
       (add-wins) and a remove that saw qty 2 racing an unseen ``add(1)`` leaves 1.
    3. **Add the op's dot** for ``cart.add`` (``[c, s, "a", qty, hlc]``) and for ``cart.set`` with
       ``qty > 0`` (``[c, s, "s", qty, hlc]``), with the op's ``attrs`` (``{}`` included) as a 6th element
       when it carried some, inserted at its place in the canonical order (:func:`dot_order`). ``set(0)``
       adds nothing: it is a remove, and its ``attrs`` are ignored. Rejected with ``limit_exceeded``
       (before anything changes) when the dot would create line 201, or would leave more than
       :data:`MAX_DOTS` live set-dots on the line (set-dots cannot be folded: only mutually concurrent
       unresolved sets get there, and a client that has seen them resolves them).
    4. **Fold** (only when a dot was added): while the line holds more than :data:`MAX_DOTS` dots besides
       the base, the add-dots lowest in the canonical order are folded - just as many as exceed the bound -
       into the line's single base dot ``["~", n, "b", sum, 0]``, kept first: ``sum`` = old base value +
       folded values, ``n`` = the cart's ``folds`` counter plus one (stored back). If any folded dot (old
       base included) carried attrs, the base carries those of the greatest attrs key among them, and that
       key: ``["~", n, "b", sum, 0, attrs, [hlc, client_id, seq]]``. So a fold changes neither the line's
       quantity, nor its winner (set-dots are never folded), nor its attrs; it only hides which folded dots
       a later ``ctx`` saw: a fresh ``n`` is covered by no existing ``ctx``, so a later remove may keep
       quantity it had seen (a spurious survivor) but never removes what it had not. The line's vector then
       has at most 17 entries (16 clients + ``~``).
    5. **Derive** ``qty`` = the winning set-dot's value (greatest ``(hlc, client_id, seq)``) + every live
       add and base value; ``attrs`` = those of the live dot with the greatest ``(hlc, client_id, seq)``
       among the dots that carry attrs (a base with the key it carries); ``vv`` = greatest seq per client.
       A line left without dots is deleted.
    6. **Bound the size** (after the fold, before anything changes): rejected with ``too_large`` when a
       line the op changes would end larger than :data:`MAX_LINE_BYTES` and larger than it was, or the
       cart larger than :data:`MAX_CART_BYTES` and larger than it was (:func:`line_bytes`,
       :func:`cart_bytes`). An op that does not grow them always passes, so removing stays possible in a
       full cart. Like the line limit, this makes acceptance depend on what the cart holds when the op
       arrives; what is accepted still converges.
    7. **Report.** ``changed`` lists lines whose dots changed (a line without dots is ``None``).
       ``conflict`` = :func:`conflict_of` the op's line after the op (for clear: of the first line, in UTF-8
       byte order of sku, that holds one). ``result`` = ``{"qty": q}`` (the line's quantity after the op, 0
       if absent) or, for clear, ``{"lines": n}`` (the number of lines left in the cart).
    """
    return _apply(cart, op, MAX_DOTS)


def predict(cart: Cart, op: CartOp) -> Outcome:
    """:func:`apply` without folding, without the set-dot bound and without the size bounds: what a client
    shows for its pending op.

    Base dots are numbered by the hub alone (a client's own fold would name a base no hub ever issued, and
    a ``ctx`` built on it would be meaningless), so the SDK predicts with this and leaves bounding to the
    hub (an unfolded line is larger than the hub's, so a size bound here would refuse what the hub
    accepts); the hub's answer replaces the prediction once it arrives. Everything else - validation, the
    line limit, the derived fields, the report - is as :func:`apply`.
    """
    return _apply(cart, op, _NEVER, _NEVER, _NEVER)


def _apply(
    cart: Cart,
    op: CartOp,
    max_dots: int,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_cart_bytes: int = MAX_CART_BYTES,
) -> Outcome:
    # The bounds are parameters so that :func:`predict` and the tests can use others.
    if check_op(op) is not None:
        return _rejected(cart, BAD_ARGS)
    out = _clear(cart, op.ctx) if op.kind == CLEAR else _line_op(cart, op, max_dots)
    if out.rejected is None and _too_large(cart, out.changed, max_line_bytes, max_cart_bytes):
        return _rejected(cart, TOO_LARGE)
    return out


def _too_large(cart: Cart, changed: Mapping[str, Line | None], max_line: int, max_cart: int) -> bool:
    """Whether the changed lines break a size bound they did not break before (rule 6 of :func:`apply`)."""
    if max_line >= _NEVER and max_cart >= _NEVER:
        return False
    before = after = 0
    for sku, new in changed.items():
        old = cart["lines"].get(sku)
        size_before = line_bytes(old) if old is not None else 0
        size_after = line_bytes(new) if new is not None else 0
        if size_after > max(size_before, max_line):
            return True
        before += size_before
        after += size_after
    return after > before and cart_bytes(cart) - before + after > max_cart


def _rejected(cart: Cart, code: str) -> Outcome:
    return Outcome(cart=cart, changed={}, conflict=None, result=None, rejected=code)


def _line_op(cart: Cart, op: CartOp, max_dots: int) -> Outcome:
    sku = op.sku
    assert sku is not None  # check_op guarantees it; the assert is for the type checker
    lines = cart["lines"]
    old = lines.get(sku)
    dots: list[Dot] = list(old["dots"]) if old is not None else []

    # 2. remove what the op saw (filtering keeps the canonical order)
    count_before = len(dots)
    if op.kind != ADD:
        dots = [d for d in dots if not vvs.covers(op.ctx, d[0], d[1])]
    removed = len(dots) != count_before

    # 3. add the op's dot, 4. fold
    folds = cart["folds"]
    adds = op.kind == ADD or (op.kind == SET and op.qty is not None and op.qty > 0)
    if adds:
        if old is None and len(lines) >= MAX_LINES:
            return _rejected(cart, LIMIT_EXCEEDED)
        kind: Literal["a", "s"] = DOT_ADD if op.kind == ADD else DOT_SET
        if kind == DOT_SET and sum(1 for d in dots if d[2] == DOT_SET) >= max_dots:
            return _rejected(cart, LIMIT_EXCEEDED)
        dot: Dot = [op.client_id, op.seq, kind, op.qty, op.hlc]
        if op.attrs is not None:
            dot.append(dict(op.attrs))
        bisect.insort(dots, dot, key=dot_order)
        if _excess(dots, max_dots) > 0:
            folds += 1
            dots = _fold(dots, max_dots, folds)
    elif not removed:
        # Nothing removed, nothing added: the cart is unchanged (e.g. remove of an absent line). A conflict
        # the line still holds is reported all the same: the op "kept" it.
        return Outcome(
            cart=cart,
            changed={},
            conflict=conflict_of(sku, old) if old is not None else None,
            result={"qty": old["qty"] if old is not None else 0},
        )

    # 5. derive the new line
    new_line = _make_line(dots) if dots else None
    new_lines = dict(lines)
    if new_line is None:
        del new_lines[sku]  # only reachable by removing, so the line existed
    else:
        new_lines[sku] = new_line
    return Outcome(
        cart={"lines": new_lines, "folds": folds},
        changed={sku: wire_line(new_line) if new_line is not None else None},
        conflict=conflict_of(sku, new_line) if new_line is not None else None,
        result={"qty": new_line["qty"] if new_line is not None else 0},
    )


def _excess(dots: list[Dot], max_dots: int) -> int:
    return sum(1 for d in dots if d[2] != DOT_BASE) - max_dots


def _fold(dots: list[Dot], max_dots: int, n: int) -> list[Dot]:
    """Fold the lowest add-dots into the base dot ``["~", n, "b", sum, 0]``, first in the list.

    Only as many as exceed ``max_dots`` (non-base dots), so the newest contributions stay individually
    removable. The old base is folded too; if any folded dot carried attrs, the base carries the winning
    ones with their key. The caller has checked that there are enough add-dots (set-dots are at most
    ``max_dots``).
    """
    excess = _excess(dots, max_dots)
    total = 0
    carried: Dot | None = None
    rest: list[Dot] = []
    for d in dots:  # canonical order: the base first, then the lowest keys
        if d[2] == DOT_SET or (d[2] == DOT_ADD and excess <= 0):
            rest.append(d)
            continue
        if d[2] == DOT_ADD:
            excess -= 1
        total += d[3]
        if len(d) > 5 and (carried is None or _attrs_key(d) > _attrs_key(carried)):
            carried = d
    base: Dot = [BASE, n, DOT_BASE, total, 0]
    if carried is not None:
        key = carried[6] if carried[2] == DOT_BASE else [carried[4], carried[0], carried[1]]
        base += [carried[5], key]
    return [base, *rest]


def _clear(cart: Cart, ctx: Mapping[str, int]) -> Outcome:
    new_lines: dict[str, Line] = {}
    changed: dict[str, Line | None] = {}
    for sku, line in cart["lines"].items():
        dots = [d for d in line["dots"] if not vvs.covers(ctx, d[0], d[1])]
        if len(dots) == len(line["dots"]):
            new_lines[sku] = line
        elif dots:
            new_line = _make_line(dots)
            new_lines[sku] = new_line
            changed[sku] = wire_line(new_line)
        else:
            changed[sku] = None
    conflict = None
    for sku in sorted(new_lines, key=lambda s: s.encode("utf-8")):
        conflict = conflict_of(sku, new_lines[sku])
        if conflict is not None:
            break
    return Outcome(
        cart={"lines": new_lines, "folds": cart["folds"]},
        changed=changed,
        conflict=conflict,
        result={"lines": len(new_lines)},
    )
