"""When to reconnect, and after how long: pure functions, no clock, no socket (after websockets' client).

* :func:`backoff` is a generator of delays with full jitter — each a uniform draw between 0 and
  ``min(max_s, initial_s × factor^attempt)`` (PROTOCOL.md §12) — so that the 1,000 tills of a chain do not
  reconnect in the same second after a hub restart.
* :func:`after_close` sorts every close, in one place, into "reconnect, not before N seconds", "a new token
  is needed" or "stop": 4500, 4501 and 4504 ask for a token (:data:`AUTH_CLOSES`), the rest of 4500–4999
  stop (a person must act), 4000 ``try_again_later`` and 4001 ``slow_consumer`` reconnect later than the
  backoff alone would, and the hub's ``retry_after_ms=<n>`` hint in a 4000 close reason is honoured.
* :class:`Hubs` is the list of hub URLs a client may use and which one is next: hubs are stateless over one
  Redis, so after a connection ends the next attempt goes to the next hub.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterator, Sequence
from typing import Final

from protocol.errors import CloseCode, close_code_reconnects

INITIAL_S: Final = 0.5
FACTOR: Final = 2.0
MAX_S: Final = 30.0
TRY_AGAIN_LATER_MIN_S: Final = 5.0
"""Floor after 4000 without a hint: the hub said it is overloaded, so not within the first seconds."""
SLOW_CONSUMER_MIN_S: Final = 1.0
"""Floor after 4001: the connection could not keep up; give the hub (and our reader) a moment."""
_HINT: Final = re.compile(r"retry_after_ms=(\d{1,9})")
_NO_RECONNECT_BY_HUB: Final = frozenset(
    {CloseCode.NORMAL, CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD, CloseCode.MESSAGE_TOO_BIG}
)
AUTH_CLOSES: Final = frozenset({CloseCode.UNAUTHORIZED, CloseCode.TOKEN_EXPIRED, CloseCode.REVOKED})
"""Closes a new token can cure: the client waits for one instead of stopping."""


def backoff(
    *,
    initial_s: float = INITIAL_S,
    factor: float = FACTOR,
    max_s: float = MAX_S,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Delays before reconnect attempts 0, 1, 2, …: uniform in ``[0, min(max_s, initial_s × factor^n)]``.

    Endless; start a fresh generator once a connection has stayed open for a heartbeat interval.
    """
    if initial_s <= 0 or factor < 1 or max_s < initial_s:
        raise ValueError("need initial_s > 0, factor >= 1 and max_s >= initial_s")
    draw = rng.uniform if rng is not None else random.uniform
    ceiling = initial_s
    while True:
        yield draw(0.0, ceiling)
        ceiling = min(max_s, ceiling * factor)


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a connection ended: reconnect (not before ``min_delay_s``) or not; ``auth``: the hub
    refused the token, so the client is ``auth_required`` (a new token resumes it) rather than stopped."""

    reconnect: bool
    min_delay_s: float = 0.0
    auth: bool = False


def retry_hint_s(reason: str) -> float | None:
    """The ``retry_after_ms=<n>`` hint of a close reason (PROTOCOL.md §12), in seconds."""
    match = _HINT.search(reason)
    return int(match.group(1)) / 1000 if match else None


def after_close(
    code: int, reason: str = "", *, by_hub: bool = True, fresh_token: bool = False, auth_refusals: int = 0
) -> Decision:
    """The reconnect decision for a close with ``code``.

    ``by_hub``: the hub closed (its code says what it asks of us, §11). When this client closed because the
    hub broke the protocol (an undecodable frame, a malformed event), the hub may be broken or may have been
    replaced meanwhile: reconnect with backoff. ``fresh_token``: the client has a token provider to ask
    again; ``auth_refusals``: how many sessions in a row ended with an auth close before this one. A first
    4501 with a provider is a cached token that just expired: reconnect at once with a new one. Any other
    auth close needs a token: with a provider, ask it again after the backoff (it is how the application
    renews); with a plain token, wait for the application.
    """
    if not by_hub:
        return Decision(True)
    if code in AUTH_CLOSES:
        if fresh_token and code == CloseCode.TOKEN_EXPIRED and auth_refusals == 0:
            return Decision(True)
        return Decision(fresh_token, auth=True)
    if code in _NO_RECONNECT_BY_HUB or not close_code_reconnects(code):
        return Decision(False)
    if code == CloseCode.TRY_AGAIN_LATER:
        hint = retry_hint_s(reason)
        return Decision(True, hint if hint is not None else TRY_AGAIN_LATER_MIN_S)
    if code == CloseCode.SLOW_CONSUMER:
        return Decision(True, SLOW_CONSUMER_MIN_S)
    return Decision(True)


class Hubs:
    """The hub URLs a client may use, in order of preference, and the one it uses now.

    :meth:`advance` moves to the next one (round robin) after a connection ends or an attempt fails. The
    delay before each attempt is the backoff's, whichever hub it goes to, so an outage of every hub still
    backs off, and the clients of a failed hub reach the next one spread over the jitter, not all at once.
    """

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls: tuple[str, ...] = (urls,) if isinstance(urls, str) else tuple(urls)
        if not self.urls or not all(isinstance(u, str) and u for u in self.urls):
            raise ValueError("need at least one hub URL")
        self._at = 0

    @property
    def current(self) -> str:
        return self.urls[self._at]

    def advance(self) -> str:
        self._at = (self._at + 1) % len(self.urls)
        return self.current
