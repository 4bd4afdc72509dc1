"""Every data type this protocol version serves, looked up by topic kind or by op kind.

The one list of types: the hub serves a topic kind and accepts an op kind exactly when its type is here, and
the SDK syncs the same set. A kind the protocol names but no type serves yet (:class:`TopicKind` lists them)
is answered ``unsupported_topic``, never ``unknown_topic`` (PROTOCOL.md §8.1).
"""

from __future__ import annotations

from typing import Final

from protocol.datatype import DataType
from protocol.errors import ErrorCode, OpRejected
from protocol.topics import TopicKind
from protocol.types.cart import CART
from protocol.types.stock import STOCK
from protocol.types.store import STORE

TYPES: Final[dict[TopicKind, DataType]] = {t.kind: t for t in (CART, STOCK, STORE)}
"""Topic kind -> its data type."""
SERVED_KINDS: Final = frozenset(TYPES)
"""Topic kinds the hub serves and the SDK syncs."""
_BY_OP: Final[dict[str, DataType]] = {op: t for t in TYPES.values() for op in t.ops}


def for_op(kind: str) -> DataType:
    """The type an op kind belongs to, or :class:`OpRejected` (``unknown_op``)."""
    found = _BY_OP.get(kind)
    if found is None:
        raise OpRejected(ErrorCode.UNKNOWN_OP, f"unknown op kind {kind[:64]!r}")
    return found


def op_kinds() -> frozenset[str]:
    """Every op kind of every served type."""
    return frozenset(_BY_OP)
