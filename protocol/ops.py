"""Typed arguments of each op kind, and the one function that checks an op's ``args`` against them.

An ``op`` frame carries its arguments as an open map (:attr:`protocol.frames.Op.args`); this module gives
each op kind its struct. The hub validates with it before any Lua script runs (a bad op is rejected with
``bad_args`` and never reaches Redis), and the SDK validates with the same structs before putting an op in
its outbox, so an op the hub would refuse for its shape is refused at the call site, where the app can react.

Rules (docs/cart-rules.md, "Ops"): every op names its ``member``; ops on one line name a ``sku``; quantities
are bounded per kind. Member ids and SKUs follow :data:`protocol.topics.KEY_PATTERN`, so they are safe inside
keys, hash tags and topic names. Unknown keys in ``args`` are ignored, as in frames (PROTOCOL.md §Versioning).

I/O-free: imports only the standard library, msgspec and ``protocol``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeAlias

import msgspec

from protocol import cart
from protocol.errors import ErrorCode, OpRejected

# The bounds are the reference implementation's (protocol.cart), so the two validations cannot drift apart;
# these structs are stricter only where keys must be safe in Redis keys and topic names.
Key = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._@-]{1,64}\Z")]  # \Z: "$" would accept a final "\n"
"""A member id or SKU (:data:`protocol.topics.KEY_PATTERN`: no ``:``, braces or spaces)."""
AttrKey = Annotated[str, msgspec.Meta(min_length=1, max_length=cart.MAX_ATTR_KEY)]
AttrValue: TypeAlias = (
    Annotated[str, msgspec.Meta(max_length=cart.MAX_ATTR_STR)]
    | Annotated[int, msgspec.Meta(ge=-cart.MAX_INT, le=cart.MAX_INT)]  # exact in Lua and JavaScript numbers
    | bool
)
Attrs = Annotated[dict[AttrKey, AttrValue], msgspec.Meta(max_length=cart.MAX_ATTRS)]
"""Line attributes (size, colour, gift wrap, …), kept with the op's dot; the live dot with the greatest HLC
wins (docs/cart-rules.md)."""


class OpArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Base of every op's arguments: the member the op acts for, checked against the token's scope."""

    member: Key


class CartAdd(OpArgs, frozen=True):
    """``cart.add``: add ``qty`` to the line; concurrent adds all count."""

    sku: Key
    qty: Annotated[int, msgspec.Meta(ge=cart.ADD_QTY[0], le=cart.ADD_QTY[1])]
    attrs: Attrs | None = None


class CartSet(OpArgs, frozen=True):
    """``cart.set``: the line's quantity becomes ``qty`` over what the op's ``ctx`` saw; ``0`` removes it."""

    sku: Key
    qty: Annotated[int, msgspec.Meta(ge=cart.SET_QTY[0], le=cart.SET_QTY[1])]
    attrs: Attrs | None = None


class CartRemove(OpArgs, frozen=True):
    """``cart.remove``: remove what the op's ``ctx`` saw of the line."""

    sku: Key


class CartClear(OpArgs, frozen=True):
    """``cart.clear``: remove what the op's ``ctx`` saw of every line."""


OP_ARGS: Final[dict[str, type[OpArgs]]] = {
    cart.ADD: CartAdd,
    cart.SET: CartSet,
    cart.REMOVE: CartRemove,
    cart.CLEAR: CartClear,
}
"""Every op kind this protocol version defines, with its argument struct."""


def parse_args(kind: str, args: dict[str, Any]) -> OpArgs:
    """The typed arguments of an op, or :class:`OpRejected` (``unknown_op`` / ``bad_args``).

    Strict: no coercion (``"2"`` is not a quantity, ``True`` is not ``1``), so hub and SDK agree exactly on
    what is valid.
    """
    struct = OP_ARGS.get(kind)
    if struct is None:
        raise OpRejected(ErrorCode.UNKNOWN_OP, f"unknown op kind {kind[:64]!r}")
    try:
        return msgspec.convert(args, type=struct, strict=True)
    except msgspec.ValidationError as exc:
        raise OpRejected(ErrorCode.BAD_ARGS, f"{kind}: {exc}") from None
