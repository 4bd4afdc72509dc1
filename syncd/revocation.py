"""Operator revocation of clients, kept in Redis and pushed to every hub process (PROTOCOL.md §13.1, 4504).

``syncd token revoke --client-id X`` calls :func:`revoke`: it records ``X → t`` (the revocation time, seconds
since the epoch) in the hash :data:`REVOKED_KEY` and publishes the same pair on :data:`REVOKED_CHANNEL`. Each
hub holds the whole hash in memory (:class:`Revocations`) and

- refuses, at the handshake, every token of ``X`` issued at or before ``t`` (``iat`` ≤ ``t``, or no ``iat``):
  close 4504 — a token issued later lets the device back in;
- closes, when the message arrives, the live sessions of ``X`` whose token is refused by that rule.

Gap-free like a subscription (docs/traps.md §7): the hub's fan-out connection subscribes to the channel and,
once Redis confirmed it, re-reads the hash, so a revocation made while a hub was cut off from Redis is acted
on when it reconnects. The hash is the record (it persists with Redis' data); pub/sub only makes it fast.
A revocation is never removed by the hub: its size is the number of clients operators revoked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final

from syncd.auth import Principal
from syncd.redis_info import RedisClient

log = logging.getLogger("syncd.revocation")

REVOKED_KEY: Final = "syncd:revoked"
"""Hash ``client_id → revocation time`` (seconds since the epoch, decimal)."""
REVOKED_CHANNEL: Final = "syncd:revoked"
"""Pub/sub channel; a message is ``<client_id> <revocation time>``."""


def _nothing(client_id: str) -> None:
    pass


async def revoke(client: RedisClient, client_id: str, at: float) -> int:
    """Record and announce that ``client_id`` is revoked as of ``at``; the number of hub processes that got
    the announcement at once (on a cluster: those subscribed through the node that took the PUBLISH)."""
    await client.hset(REVOKED_KEY, client_id, repr(at))
    received: int = await client.publish(REVOKED_CHANNEL, f"{client_id} {at!r}")
    return received


class Revocations:
    """This hub's copy of the revocation hash; :meth:`refuses` is the check, :attr:`on_revoked` the hook
    that ends live sessions (set by the app to :meth:`syncd.hub.Hub.end_revoked`)."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._at: dict[str, float] = {}
        self.on_revoked: Callable[[str], None] = _nothing

    def refuses(self, principal: Principal) -> bool:
        at = self._at.get(principal.client_id)
        return at is not None and (principal.issued_at is None or principal.issued_at <= at)

    def __len__(self) -> int:
        return len(self._at)

    async def load(self) -> None:
        """Re-read the hash (at start, and each time the fan-out has (re)subscribed to the channel)."""
        entries: dict[Any, Any] = await self._client.hgetall(REVOKED_KEY)
        for raw_id, raw_at in entries.items():
            self._learn(_text(raw_id), _text(raw_at))

    def receive(self, data: bytes) -> None:
        """One message of :data:`REVOKED_CHANNEL` (malformed ones are logged and dropped)."""
        client_id, _, at = _text(data).rpartition(" ")
        self._learn(client_id, at)

    def _learn(self, client_id: str, raw_at: str) -> None:
        try:
            at = float(raw_at)
        except ValueError:
            at = math.nan
        if not client_id or not math.isfinite(at):
            log.warning("ignoring a malformed revocation of %r", client_id[:100])
            return
        if at > self._at.get(client_id, -math.inf):
            self._at[client_id] = at
            log.info("client %s revoked (tokens issued at or before %.0f are refused)", client_id, at)
            self.on_revoked(client_id)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
