"""What the SDK needs of one data type: its local view, the server state with our pending ops predicted on
top, and which of its ops may be made offline.

The engine (:mod:`clients.engine`) keeps one :class:`LocalView` per subscribed topic and drives it through
this interface only: it never names a type. A type's module under :mod:`clients.types` subclasses it and
adds its public handle (``client.cart(m)``).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Protocol

from clients.events import TopicChanged, TopicRecord
from clients.models import CartConflict
from protocol import frames, registry
from protocol.datatype import DataType, check_shape
from protocol.errors import ErrorCode, OpRejected, ProtocolError, SyncError

MAX_CTX: Final = 256
"""Entries of one op's causal context the SDK sends (beyond it an op is refused at the call site)."""
Keys = frozenset[str] | None
"""The keys of a view (a cart's skus) that may have changed; ``None``: any of them."""


def op_topic(kind: str, args: Mapping[str, Any]) -> str:
    """The topic whose view an op changes (``cart.add`` for member ``m42`` → ``cart:m42``)."""
    try:
        datatype = registry.for_op(kind)
    except OpRejected:
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"the SDK cannot predict op kind {kind[:64]!r}") from None
    return _topic(kind, args[datatype.key_field])


@functools.lru_cache(maxsize=4096)
def _topic(kind: str, key: str) -> str:
    """A topic's name, built once per (op kind, key) in use: asked for every op made, stored and settled."""
    datatype = registry.for_op(kind)
    return datatype.topic_of({datatype.key_field: key})


class TopicHandle(Protocol):
    """What the client needs of a type's public handle (``client.cart(m)``, ``client.stock(sku)``)."""

    topic: str

    def _notify(self, change: TopicChanged) -> CartConflict | None:
        """Tell the handle's readers; the conflict the change reports, for the client's conflict hook."""

    def _close(self) -> None: ...


class LocalView(abc.ABC):
    """One topic as this device shows it: server state and cursor, plus our own ops not yet reflected in it
    (the *overlay*, docs: :mod:`clients.engine`, "Views"), and the per-connection subscription state."""

    __slots__ = (
        "_me",
        "awaiting",
        "cursor",
        "error",
        "fresh",
        "has_state",
        "reflected",
        "retry_at",
        "sub_id",
        "synced",
        "topic",
    )

    datatype: ClassVar[DataType]
    offline_ops: ClassVar[frozenset[str]]
    """Op kinds this device may make while offline (the rest need the hub's answer first)."""
    shows_when_acked: ClassVar[bool] = False
    """Some ops show only once the hub applied them (:meth:`acked`): the client tells the view again of those
    its store kept as applied, after a restart."""

    def __init__(self, record: TopicRecord, me: str) -> None:
        self._me = me  # our client_id: the overlay's ops are ours
        self.topic = record.topic
        self.has_state = record.state is not None
        self.cursor = record.cursor
        self.reflected = record.reflected
        # per connection
        self.sub_id: int | None = None
        self.awaiting = False
        self.synced = False
        self.fresh = False  # subscribe without our cursor: the hub's answer to it could not be trusted
        self.error: SyncError | None = None
        self.retry_at: int | None = None

    @abc.abstractmethod
    def record(self) -> TopicRecord:
        """What the outbox store keeps of this topic."""

    # -- overlay ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_op(self, op: frames.Op) -> None:
        """Put our op on top of the view (ops arrive in ascending ``seq``)."""

    @abc.abstractmethod
    def remove(self, seq: int) -> Keys:
        """Withdraw one op (rejected or aborted)."""

    @abc.abstractmethod
    def reflect(self, upto: int) -> Keys:
        """The server state now shows our ops up to ``upto``: they leave the overlay."""

    def acked(self, op: frames.Op, result: Mapping[str, Any] | None) -> bool:
        """The hub applied our op ``op`` (still above ``reflected``: its state does not show it yet); whether
        the view changed. A type whose ops are only shown once the hub accepts them (stock: a reservation
        may be refused) shows the effect from here until :meth:`reflect`, so a read between the ack and the
        event never shows the op undone; the default does nothing (cart ops show from when they are made)."""
        return False

    @property
    @abc.abstractmethod
    def has_pending_writes(self) -> bool:
        """Whether ops of ours on this topic are not yet visible in its server state."""

    @abc.abstractmethod
    def stamp(self, kind: str, args: dict[str, Any]) -> dict[str, int] | None:
        """The causal context of an op made now (what this device shows of its target); may complete
        ``args`` with what the device shows, where the op would otherwise drop it."""

    @staticmethod
    @abc.abstractmethod
    def keys_of(op: frames.Op) -> Keys:
        """The keys an op may change."""

    # -- server state -------------------------------------------------------------------------------------

    def load_state(self, state: Any, what: str) -> None:
        """Replace the server state with a snapshot's, checked against the type's state shape first."""
        check_shape(state, self.datatype.state, what)
        self.replace(state)

    @abc.abstractmethod
    def replace(self, state: Mapping[str, Any]) -> None:
        """Replace the server state (checked against the type's state shape)."""

    @abc.abstractmethod
    def apply_data(self, data: Mapping[str, Any]) -> frozenset[str]:
        """Apply an event's ``data`` (checked against the type's event shape); the keys it changed."""
