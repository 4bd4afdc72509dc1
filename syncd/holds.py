"""How long a stock reservation holds when it does not say in milliseconds: the brand's daily clearing time
(in its own time zone) and the hub's default hold (docs/design.md §3, "Inventory"; PROTOCOL.md §18).

A hold ``until: "clearing"`` lasts until the next clearing instant. Which one is next is decided by the
script that applies the reservation, with Redis's clock (the clock expiry and sweeps are judged by): the
hub passes the clearing instants around its own clock (:func:`protocol.stock.clearing_instants`, from a day
before to two days after, so a hub clock off by hours still brackets Redis's), and the script takes the
first one after its ``now``. The instant is then stored in the hold and in the op's result, so a replay of
the op is answered with the same instant from its dedup record. Time zone arithmetic (daylight saving) stays
in Python, where ``zoneinfo`` is; the script only compares numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import Final
from zoneinfo import ZoneInfo

from protocol import stock as rules

DEFAULT_CLEARING_AT: Final = dt.time(0, 0)
DEFAULT_CLEARING_TZ: Final = "Asia/Shanghai"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class HoldPolicy:
    """The brand's clearing time and the default hold of a reservation that names no expiry.

    ``default_ttl_ms``: ``None`` holds such a reservation until the next clearing (a cart's hold is cleared
    with the rest at midnight); a number holds it that long.
    """

    clearing_at: dt.time = DEFAULT_CLEARING_AT
    clearing_tz: dt.tzinfo = dataclasses.field(default_factory=lambda: ZoneInfo(DEFAULT_CLEARING_TZ))
    default_ttl_ms: int | None = None
    clock: Callable[[], int] = _wall_ms

    def __post_init__(self) -> None:
        if self.default_ttl_ms is not None and not 1 <= self.default_ttl_ms <= rules.MAX_TTL_MS:
            raise ValueError(f"default_ttl_ms must be 1..{rules.MAX_TTL_MS}, not {self.default_ttl_ms}")

    def clearing_argv(self, now: int | None = None) -> list[int]:
        """The clearing instants the script chooses from (around the hub's clock ``now``)."""
        return rules.clearing_instants(
            self.clock() if now is None else now, self.clearing_at, self.clearing_tz
        )

    def reserve_argv(self, ttl_ms: int | None, until: int | str | None) -> list[int | str]:
        """``stock_reserve``'s expiry ARGV: ttl (or ``''``), absolute until (or ``''``), then the clearing
        instants when the hold lasts until the clearing (given, or the default hold)."""
        if ttl_ms is None and until is None:
            ttl_ms = self.default_ttl_ms
            until = None if ttl_ms is not None else rules.CLEARING
        if until == rules.CLEARING:
            return ["", "", *self.clearing_argv()]
        return ["" if ttl_ms is None else ttl_ms, until if isinstance(until, int) else ""]
