"""What the protocol knows of one data type: its topic kind, its ops with their argument structs, the shapes
of its events and state.

A data type (cart now; stock, points, member, coupon and catalog after it) is one module under
:mod:`protocol.types` that declares a :class:`DataType`, and one entry in :mod:`protocol.registry`. Hub and
SDK look a type up there by topic kind or op kind, so no layer names a type it does not implement: adding a
type is a module per package (``protocol/types``, ``syncd/types``, ``clients/types``) and its Lua scripts
(docs/design.md §3).

I/O-free: imports only the standard library, msgspec and ``protocol``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import msgspec

from protocol.errors import ErrorCode, ProtocolError
from protocol.topics import TopicKind, TopicName

Key = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._@-]{1,64}\Z")]  # \Z: "$" would accept a final "\n"
"""A member id, SKU or store id (:data:`protocol.topics.KEY_PATTERN`: no ``:``, braces or spaces)."""


class OpArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Base of every op's arguments: the member the op acts for, checked against the token's scope."""

    member: Key
    admin: ClassVar[bool] = False
    """Only an ``ops`` token may make this op (restock, quotas, …)."""
    till_only: ClassVar[bool] = False
    """Only a ``pos`` token of the op's ``store`` may make this op (not even ``ops``: giving back escrow)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DataType:
    """One data type as the wire protocol defines it.

    ``ops``: op kind -> its argument struct (every op kind belongs to exactly one type). ``key_field``: the
    argument naming the topic an op's event goes to (``cart.add`` of member ``m42`` -> topic ``cart:m42``).
    ``state`` / ``event``: the shapes a snapshot's state and an event's ``data`` must have, checked by the
    SDK before it applies either (a hub that sends something else broke the protocol).
    """

    kind: TopicKind
    ops: Mapping[str, type[OpArgs]]
    key_field: str
    state: type[msgspec.Struct]
    event: type[msgspec.Struct]
    conflict: type[msgspec.Struct] | None = None
    events: frozenset[str] = frozenset()
    """Event kinds besides its ops' (events no op causes, such as holds expiring); same ``event`` shape."""

    def emits(self, kind: str) -> bool:
        """Whether events of ``kind`` belong to this type (and carry its ``event`` shape)."""
        return kind in self.ops or kind in self.events

    def topic_of(self, args: Mapping[str, Any] | OpArgs) -> str:
        """The topic an op with these (valid) arguments appends its event to, as a dict or as its struct."""
        key = args[self.key_field] if isinstance(args, Mapping) else getattr(args, self.key_field)
        return str(TopicName(self.kind, key))


def check_shape(value: Any, shape: type[msgspec.Struct], what: str) -> None:
    """Raise :class:`ProtocolError` (``bad_frame``) unless ``value`` has ``shape`` (strictly: no coercion)."""
    try:
        msgspec.convert(value, type=shape, strict=True)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"{what}: {exc}") from None
