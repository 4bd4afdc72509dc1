"""Hybrid logical clock: timestamps that follow wall time but never go backwards and respect causality.

Used only to break ties between concurrent writes (the cart's ``set`` winner, the attrs shown), never to
order causally related ones: causality comes from version vectors (docs/traps.md §10: tills are offline for
hours and their clocks drift).

A timestamp is one integer ``ms * 1024 + counter`` (``counter`` < 1024): it sorts like the pair
``(ms, counter)``, travels as a single MessagePack/JSON integer, and stays exact below ``2**53`` (doubles in
JavaScript and Redis' Lua) until the year 2248.

The clock never reads time itself: every call is given the caller's wall clock in milliseconds, so the
module is pure and deterministic to test.
"""

from __future__ import annotations

from typing import Final

COUNTER_BITS: Final = 10
COUNTER_LIMIT: Final = 1 << COUNTER_BITS
"""Counter values per millisecond (1024)."""
MAX_HLC: Final = 2**53 - 1
"""The greatest timestamp: larger ones would lose precision as doubles."""
MAX_MS: Final = MAX_HLC >> COUNTER_BITS


def encode(ms: int, counter: int = 0) -> int:
    """The timestamp of ``(ms, counter)``."""
    if not 0 <= counter < COUNTER_LIMIT:
        raise ValueError(f"counter {counter} out of range 0..{COUNTER_LIMIT - 1}")
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"ms {ms} out of range 0..{MAX_MS}")
    return (ms << COUNTER_BITS) | counter


def physical(hlc: int) -> int:
    """The millisecond part of a timestamp."""
    return hlc >> COUNTER_BITS


def logical(hlc: int) -> int:
    """The counter part of a timestamp (orders events within one millisecond)."""
    return hlc & (COUNTER_LIMIT - 1)


class HybridClock:
    """One process's (or device's) clock. ``last`` is the greatest timestamp it has issued or seen.

    Both operations return a timestamp strictly greater than every one issued before by this clock and than
    the one observed, whatever the wall clock does (it may jump backwards); when the wall clock is ahead the
    timestamp is the wall clock with counter 0. When the counter would pass 1023 the timestamp simply
    carries into the next millisecond (the encoding makes that ``+ 1``): the clock then runs slightly ahead
    of the wall clock until the wall clock catches up.

    A timestamp past :data:`MAX_HLC` raises ``OverflowError`` and leaves the clock unchanged. A peer could
    push a receiver's clock far ahead with a forged timestamp; callers that observe untrusted timestamps
    should bound them first (the hub need not observe at all: it only compares the timestamps ops carry).
    """

    __slots__ = ("_last",)

    def __init__(self, last: int = 0) -> None:
        """Start a clock, or resume one from the ``last`` value it persisted."""
        if not 0 <= last <= MAX_HLC:
            raise ValueError(f"last {last} out of range 0..{MAX_HLC}")
        self._last = last

    @property
    def last(self) -> int:
        """The greatest timestamp issued or observed so far (persist it to resume after a restart)."""
        return self._last

    def now(self, wall_ms: int) -> int:
        """Timestamp a local event or a message to send."""
        return self._tick(self._last, wall_ms)

    def observe(self, remote: int, wall_ms: int) -> int:
        """Timestamp the receipt of a message stamped ``remote``: after it and after everything local."""
        if not 0 <= remote <= MAX_HLC:
            raise ValueError(f"remote timestamp {remote} out of range 0..{MAX_HLC}")
        return self._tick(max(self._last, remote), wall_ms)

    def _tick(self, floor: int, wall_ms: int) -> int:
        # Standard HLC (Kulkarni et al.) on the packed integer: max(l, pt) with the counter reset when the
        # wall clock leads, else counter + 1, is exactly max(floor + 1, wall_ms * 1024).
        if not 0 <= wall_ms <= MAX_MS:
            raise ValueError(f"wall_ms {wall_ms} out of range 0..{MAX_MS}")
        ts = max(floor + 1, wall_ms << COUNTER_BITS)
        if ts > MAX_HLC:
            raise OverflowError("hybrid logical clock overflow")
        self._last = ts
        return ts
