"""The cart as a data type: its ops' argument structs and the shapes of its snapshot state and events.

The rules themselves (how an op changes a cart) are :mod:`protocol.cart`, the reference implementation; the
bounds here are its bounds, so the hub's validation and the reference cannot drift apart. These structs are
stricter only where keys must be safe in Redis keys and topic names (docs/cart-rules.md, "Ops").
"""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

import msgspec

from protocol import cart as rules
from protocol.datatype import DataType, Key, OpArgs
from protocol.topics import TopicKind

AttrKey = Annotated[str, msgspec.Meta(min_length=1, max_length=rules.MAX_ATTR_KEY)]
AttrValue: TypeAlias = (
    Annotated[str, msgspec.Meta(max_length=rules.MAX_ATTR_STR)]
    | Annotated[int, msgspec.Meta(ge=-rules.MAX_INT, le=rules.MAX_INT)]  # exact in Lua and JavaScript numbers
    | bool
)
Attrs = Annotated[dict[AttrKey, AttrValue], msgspec.Meta(max_length=rules.MAX_ATTRS)]
"""Line attributes (size, colour, gift wrap, …), kept with the op's dot; the live dot with the greatest HLC
wins (docs/cart-rules.md)."""


# --- op arguments ----------------------------------------------------------------------------------------


class CartAdd(OpArgs, frozen=True):
    """``cart.add``: add ``qty`` to the line; concurrent adds all count."""

    sku: Key
    qty: Annotated[int, msgspec.Meta(ge=rules.ADD_QTY[0], le=rules.ADD_QTY[1])]
    attrs: Attrs | None = None


class CartSet(OpArgs, frozen=True):
    """``cart.set``: the line's quantity becomes ``qty`` over what the op's ``ctx`` saw; ``0`` removes it."""

    sku: Key
    qty: Annotated[int, msgspec.Meta(ge=rules.SET_QTY[0], le=rules.SET_QTY[1])]
    attrs: Attrs | None = None


class CartRemove(OpArgs, frozen=True):
    """``cart.remove``: remove what the op's ``ctx`` saw of the line."""

    sku: Key


class CartClear(OpArgs, frozen=True):
    """``cart.clear``: remove what the op's ``ctx`` saw of every line."""


# --- wire shapes -----------------------------------------------------------------------------------------
# Event data and snapshot state are open maps on the wire (frames.Payload); the SDK checks them against these
# before applying anything, so it never acts on part of a frame.


class Dot(msgspec.Struct, array_like=True, forbid_unknown_fields=False):
    """``[client_id, seq, kind, value, hlc, attrs?, key?]`` (key: a base's ``[hlc, client_id, seq]``).

    Trailing elements beyond these are ignored, as protocol version 1 allows for array-encoded types.
    """

    client_id: str
    seq: int
    kind: str
    value: int
    hlc: int
    attrs: dict[str, str | int | bool] | msgspec.UnsetType = msgspec.UNSET
    key: Any = msgspec.UNSET

    def __post_init__(self) -> None:
        if self.kind == rules.DOT_BASE and self.attrs is not msgspec.UNSET:
            key = self.key
            if not (
                isinstance(key, list | tuple)
                and len(key) == 3
                and type(key[0]) is int
                and isinstance(key[1], str)
                and type(key[2]) is int
            ):
                raise ValueError("a base dot that carries attrs carries their key [hlc, client_id, seq]")


class WireLine(msgspec.Struct, forbid_unknown_fields=False):
    qty: int
    vv: dict[str, int]
    dots: list[Dot]
    attrs: dict[str, str | int | bool] = {}


class CartState(msgspec.Struct, forbid_unknown_fields=False):
    """A cart snapshot's ``state``: ``{"lines": {sku: line}}``."""

    lines: dict[str, WireLine]


class CartEventData(msgspec.Struct, forbid_unknown_fields=False):
    """A cart event's ``data``: the lines it changed, ``None`` for a line removed."""

    lines: dict[str, WireLine | None]


class CartConflict(msgspec.Struct, forbid_unknown_fields=False):
    """An event's ``conflict``: concurrent sets of one line, the winner and the losing values."""

    sku: str
    winner: list[Any]
    losers: list[list[Any]]


CART = DataType(
    kind=TopicKind.CART,
    ops={rules.ADD: CartAdd, rules.SET: CartSet, rules.REMOVE: CartRemove, rules.CLEAR: CartClear},
    key_field="member",
    state=CartState,
    event=CartEventData,
    conflict=CartConflict,
)
"""A member's cart, topic ``cart:<member>`` (docs/design.md §3, docs/cart-rules.md)."""
