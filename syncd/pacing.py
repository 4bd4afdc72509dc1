"""Fair shares of the event loop: how much work one connection may make the hub do, and when it must wait.

One event loop serves every connection, so a connection that makes the hub work without pause — pings as
fast as the socket takes them, frames that are expensive to decode, ops by the thousand — delays everyone
else's acks by as much as it is served. A :class:`Pacer` per connection counts the work done for it (measured
time, never less than :data:`MIN_FRAME_COST_S` per frame, so cheap control frames count too) and answers two
questions:

- *May it go on in this turn?* A turn is :data:`TURN_S` of work; past it the connection yields so the loop
  runs whatever else is ready (:meth:`Pacer.turn_over`).
- *When may it have the next turn?* Each connection holds a credit of :data:`BURST_S` of work, refilled at
  :data:`SHARE` of a core. A connection in debt waits until its credit is positive again
  (:meth:`Pacer.delay`): a device replaying a day offline spends its credit at once, a flood runs at its
  share and leaves the rest of the core to the others.

Time is an input (``now`` in seconds, from :func:`time.perf_counter` by default): the tests drive it by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

TURN_S: Final = 0.0005
"""Work done for one connection before it yields to the others."""
SHARE: Final = 0.1
"""Fraction of a core one connection may use, sustained: ten flooding connections still leave a core's worth
of turns to the rest, and a device syncing normally uses a hundredth of it."""
BURST_S: Final = 0.1
"""Work a connection may have done for it at once before it is held to :data:`SHARE`: a till replaying a day
offline (3,000 ops cost about 55 ms, measured with ``benchmarks replay``) is not slowed at all."""
OP_COST_S: Final = 0.00001
"""What applying one op costs the hub's loop, charged as an estimate: the time is spent between awaits on
Redis (building the script call, parsing its reply, encoding the ack), not measurable as one span."""
MIN_FRAME_COST_S: Final = 0.00002
"""What one frame costs at least, whatever its kind: a ping answered is a frame read and a frame written."""


class Pacer:
    """The work budget of one connection (see the module docstring)."""

    __slots__ = ("_clock", "_credit", "_stamp", "_turn_started", "spent")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._credit = BURST_S
        self._stamp = clock()
        self._turn_started = self._stamp
        self.spent = 0.0
        """Work charged to this connection since it opened, in seconds (for benchmarks and tests)."""

    def start_turn(self) -> float:
        """Begin a turn; the time it began, to pass to :meth:`charge` when the work is done."""
        self._turn_started = self._clock()
        return self._turn_started

    def charge(self, started: float, frames: int = 0) -> None:
        """Count the work done since ``started``: its measured time, at least ``frames`` × the minimum."""
        now = self._clock()
        self.charge_cost(max(now - started, frames * MIN_FRAME_COST_S), now)

    def charge_cost(self, cost: float, now: float | None = None) -> None:
        """Count ``cost`` seconds of work (an estimate, when the work is not measured where it is done)."""
        self._refill(self._clock() if now is None else now)
        self._credit -= cost
        self.spent += cost

    def turn_over(self) -> bool:
        """Whether this turn has used its :data:`TURN_S` (then yield before doing more)."""
        return self._clock() - self._turn_started >= TURN_S

    def delay(self) -> float:
        """Seconds to wait before the next turn: 0 while the connection has credit."""
        self._refill(self._clock())
        return 0.0 if self._credit >= 0 else -self._credit / SHARE

    def _refill(self, now: float) -> None:
        self._credit = min(BURST_S, self._credit + (now - self._stamp) * SHARE)
        self._stamp = now
