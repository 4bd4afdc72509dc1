"""Topic names: ``<kind>:<key>`` (``cart:m42``, ``stock:SKU-1``) or a bare kind (``catalog``).

A topic names one stream of events. Its kind decides which entity's hash slot holds it and which scope a
token needs to read it, so the name is parsed once, here, by hub and SDK alike.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Final

from protocol.errors import ErrorCode, ProtocolError


class TopicKind(enum.StrEnum):
    CART = "cart"
    """A member's cart: ``cart:<member>``."""
    POINTS = "points"
    """A member's points ledger and balance: ``points:<member>``."""
    MEMBER = "member"
    """A member's profile, aliases and merges: ``member:<member>``."""
    STOCK = "stock"
    """Available-to-promise of one SKU: ``stock:<sku>``."""
    STORE = "store"
    """A store's allotments and operational events: ``store:<store>``."""
    CATALOG = "catalog"
    """Prices and status of every SKU: ``catalog`` (no key)."""


# Which kinds are served is protocol.registry.SERVED_KINDS: the others parse here but are answered
# ``unsupported_topic`` until their types land, never ``unknown_topic`` (PROTOCOL.md §8.1).
KEYED: Final = frozenset(TopicKind) - {TopicKind.CATALOG}
MEMBER_KINDS: Final = frozenset({TopicKind.CART, TopicKind.POINTS, TopicKind.MEMBER})
"""Topics that belong to one member and need that member in the token's scope."""

KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9._@-]{1,64}")
"""Member ids, SKUs and store ids: no ``:``, braces or spaces, so keys and hash tags stay unambiguous."""


@dataclasses.dataclass(frozen=True, slots=True)
class TopicName:
    kind: TopicKind
    key: str | None = None

    def __str__(self) -> str:
        return self.kind.value if self.key is None else f"{self.kind.value}:{self.key}"


def parse_topic(name: str) -> TopicName:
    """Parse a topic name, or raise :class:`ProtocolError` with ``unknown_topic``."""
    kind_text, sep, key = name.partition(":")
    try:
        kind = TopicKind(kind_text)
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_TOPIC, f"unknown topic kind {kind_text[:32]!r}") from None
    if kind not in KEYED:
        if sep:
            raise ProtocolError(ErrorCode.UNKNOWN_TOPIC, f"{kind} takes no key")
        return TopicName(kind)
    if not KEY_PATTERN.fullmatch(key):
        raise ProtocolError(ErrorCode.UNKNOWN_TOPIC, f"{kind} needs a key of 1-64 of [A-Za-z0-9._@-]")
    return TopicName(kind, key)


def is_valid_key(key: str) -> bool:
    """Whether ``key`` can be a member id, SKU or store id."""
    return KEY_PATTERN.fullmatch(key) is not None
