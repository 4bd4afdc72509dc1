"""Version vectors: what a replica has seen, as ``client_id → counter``, and how two of them relate.

A vector is a plain ``dict[str, int]`` (JSON/MessagePack as is; :data:`VV` accepts any mapping). Entry ``c:
s`` says "has seen client ``c``'s events up to ``s``": a client's events are seen in order, so one counter
names a whole prefix. A missing entry means 0, so ``{"a": 1, "b": 0}`` and ``{"a": 1}`` are the same vector;
:func:`canonical` drops zero entries so that equal vectors are equal dicts, and every function here returns
canonical vectors (zero entries dropped, keys sorted: Python's ``str`` order is the order of the keys' UTF-8
bytes, the order a Lua port gets from plain string comparison under the C locale).

The hub's own entry is :data:`HUB` (``"~"``, not a valid ``client_id``). It stands for histories folded
into one entry (:func:`fold`); its counter is a fresh, ever-increasing number issued by the hub.

Entries are non-negative integers below ``2**53`` (exact in every language's doubles, including Redis' Lua);
the functions assume it and do not re-check it: the wire decoder does
(:data:`protocol.frames.VersionVector`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, TypeAlias

VV: TypeAlias = Mapping[str, int]
"""A version vector. Missing entries are 0."""

HUB: Final = "~"
"""The hub's entry, into which :func:`fold` folds other entries."""


class Order(enum.Enum):
    """How two vectors (two causal histories) relate."""

    EQUAL = "equal"
    """Same history."""
    BEFORE = "before"
    """The first is a strict prefix of the second: the second has seen all the first has, and more."""
    AFTER = "after"
    """The second is a strict prefix of the first."""
    CONCURRENT = "concurrent"
    """Each has seen something the other has not: a conflict, if both wrote."""


def canonical(vv: VV) -> dict[str, int]:
    """The canonical form: zero entries dropped (missing means 0), keys sorted. Equal vectors, equal dicts."""
    return {k: vv[k] for k in sorted(vv) if vv[k] != 0}


def compare(a: VV, b: VV) -> Order:
    """Compare two histories entry by entry (missing = 0).

    ``BEFORE``: every entry of ``a`` ≤ the one of ``b`` and at least one <; ``AFTER`` the mirror;
    ``EQUAL``: all equal; ``CONCURRENT``: each is ahead somewhere.
    """
    a_ahead = b_ahead = False
    for k in a.keys() | b.keys():
        x, y = a.get(k, 0), b.get(k, 0)
        if x > y:
            a_ahead = True
        elif y > x:
            b_ahead = True
    if a_ahead and b_ahead:
        return Order.CONCURRENT
    if a_ahead:
        return Order.AFTER
    if b_ahead:
        return Order.BEFORE
    return Order.EQUAL


def dominates(a: VV, b: VV) -> bool:
    """Whether ``a`` has seen everything ``b`` has (``a ≥ b`` entry by entry; true for equal vectors)."""
    return all(a.get(k, 0) >= v for k, v in b.items())


def merge(a: VV, b: VV) -> dict[str, int]:
    """The union of two histories: entry-wise maximum, canonical.

    Commutative, associative and idempotent, so replicas that merge what they receive in any order and any
    number of times agree. ``compare(a, b)`` is ``BEFORE`` or ``EQUAL`` exactly when ``merge(a, b) == b``.
    """
    out = dict(a)
    for k, v in b.items():
        if v > out.get(k, 0):
            out[k] = v
    return canonical(out)


def covers(vv: VV, client_id: str, seq: int) -> bool:
    """Whether the history ``vv`` includes event ``seq`` of ``client_id`` (its *dot*)."""
    return vv.get(client_id, 0) >= seq


def fold(vv: VV, keep: int, *, counter: int, into: str = HUB) -> dict[str, int]:
    """Bound a vector to ``keep`` client entries plus the hub entry ``into``, folding the smallest entries.

    If ``vv`` has at most ``keep`` entries besides ``into`` it is returned unchanged (canonical). Otherwise
    the ``keep`` greatest entries are kept (ties: the smaller key is kept, so the choice is deterministic),
    the others are dropped, and ``into`` is set to ``counter``. The result has at most ``keep + 1`` entries.

    **Contract: ``counter`` is fresh.** It must be greater than the ``into`` entry of every vector that
    exists when the fold happens, this one included (the hub issues it from a counter that only grows, e.g.
    an entity's fold counter, and folds only vectors it owns). ``into: counter`` then means "has seen the
    state the hub folded under number ``counter``". A ``counter`` that is not greater than ``vv``'s own
    ``into`` entry is refused (``ValueError``); freshness against other vectors is the caller's to keep.

    **What folding may and may not change** (docs/traps.md §11): folding forgets which client
    events ``vv`` saw, so comparisons of the folded vector ``f`` against any existing vector ``b`` change
    only this way:

    * ``f`` is never ``BEFORE`` or ``EQUAL`` to ``b`` once something was folded: ``f``'s hub entry is ahead
      of every existing ``b``. So a folded history is never judged to be covered by one that has not seen
      the fold: no write is silently superseded. A ``BEFORE``/``EQUAL``/``AFTER`` may become ``CONCURRENT``:
      *false concurrency*, a spurious conflict, which is safe.
    * ``f`` is ``AFTER`` ``b`` only if ``vv`` was ahead of or equal to ``b`` on every client entry (``b``'s
      lead, if any, was on the hub entry alone: an older fold, which the fresh ``counter`` supersedes).

    Hence never *false ordering*: ``CONCURRENT`` or ``AFTER`` never becomes ``BEFORE``. Compare first, fold
    after: a decision that needs exact order must be taken on the unfolded vectors.

    The cart does not use this function: it folds *dots* (:mod:`protocol.cart`), and its vectors are derived
    from the dots, with the same guarantee.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    entries = [(k, v) for k, v in vv.items() if v != 0 and k != into]
    if len(entries) <= keep:
        return canonical(vv)
    if counter <= vv.get(into, 0):
        raise ValueError(f"fold counter {counter} is not fresh: the vector has {into}={vv.get(into, 0)}")
    entries.sort(key=lambda kv: (-kv[1], kv[0]))
    out = dict(entries[:keep])
    out[into] = counter
    return canonical(out)
