"""The hub's sweeper: applies time-driven changes (holds expiring) as they fall due.

Every hub process runs one; nothing coordinates them, and nothing needs to: each change is one atomic script
that removes what it returns (``stock_expire``), so any number of sweepers, and a hub killed mid-sweep,
return each expired hold exactly once. A hold cannot be committed from its expiry on, whenever the sweep
comes; it is back in the pool within :data:`SWEEP_EVERY_S` while holds keep expiring, and within
:data:`SWEEP_IDLE_S` after a quiet spell: sweeps that find nothing come further apart, so an idle hub lets
its Redis connections go idle (and the pool's reaper close them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from protocol.errors import BackendUnavailable
from syncd.store.redis_store import RedisStore

SWEEP_EVERY_S: Final = 1.0
SWEEP_IDLE_S: Final = 8.0
log = logging.getLogger("syncd.sweeper")


async def sweep_forever(store: RedisStore, returned_holds: Callable[[int], None] | None = None) -> None:
    """Sweep until cancelled; after a sweep that found nothing, wait twice as long (up to
    :data:`SWEEP_IDLE_S`). Redis being away is logged and retried next time. ``returned_holds`` is told how
    many holds each sweep returned (the ``syncd_stock_expired`` counter)."""
    wait_s = SWEEP_EVERY_S
    while True:
        try:
            returned = await store.sweep()
        except BackendUnavailable as exc:
            log.warning("sweep skipped: %s", exc)
            returned = 0
        if returned:
            log.info("returned %d expired holds", returned)
            if returned_holds is not None:
                returned_holds(returned)
            wait_s = SWEEP_EVERY_S
        else:
            wait_s = min(SWEEP_IDLE_S, wait_s * 2)
        await asyncio.sleep(wait_s)
