"""The one function that checks an op's ``args`` against its type's argument struct.

An ``op`` frame carries its arguments as an open map (:attr:`protocol.frames.Op.args`); each data type
declares a struct per op kind (:mod:`protocol.types`, found through :mod:`protocol.registry`). The hub
validates with it before any Lua script runs (a bad op is rejected with ``bad_args`` and never reaches
Redis), and the SDK validates with the same structs before putting an op in its outbox, so an op the hub
would refuse for its shape is refused at the call site, where the app can react.

Rules: every op names its ``member``; quantities are bounded per kind. Keys follow
:data:`protocol.topics.KEY_PATTERN`, so they are safe inside keys, hash tags and topic names. Unknown keys in
``args`` are ignored, as in frames (PROTOCOL.md §Versioning).

I/O-free: imports only the standard library, msgspec and ``protocol``.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from protocol import registry
from protocol.datatype import Key, OpArgs
from protocol.errors import ErrorCode, OpRejected
from protocol.types.cart import Attrs, CartAdd, CartClear, CartRemove, CartSet

OP_ARGS: Final[dict[str, type[OpArgs]]] = {op: s for t in registry.TYPES.values() for op, s in t.ops.items()}
"""Every op kind this protocol version defines, with its argument struct."""


def parse_args(kind: str, args: dict[str, Any]) -> OpArgs:
    """The typed arguments of an op, or :class:`OpRejected` (``unknown_op`` / ``bad_args``).

    Strict: no coercion (``"2"`` is not a quantity, ``True`` is not ``1``), so hub and SDK agree exactly on
    what is valid.
    """
    struct = registry.for_op(kind).ops[kind]
    try:
        return msgspec.convert(args, type=struct, strict=True)
    except msgspec.ValidationError as exc:
        raise OpRejected(ErrorCode.BAD_ARGS, f"{kind}: {exc}") from None


__all__ = ["OP_ARGS", "Attrs", "CartAdd", "CartClear", "CartRemove", "CartSet", "Key", "OpArgs", "parse_args"]
