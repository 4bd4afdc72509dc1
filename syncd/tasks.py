"""Stopping the hub's long-lived tasks so that a shutdown always ends (docs/traps.md §21).

``task.cancel()`` followed by ``await task`` hangs for ever when the cancellation is lost: redis-py's
asyncio client can catch the ``CancelledError`` that lands while a command is in flight and return from the
command as if nothing happened, and a loop that calls Redis then carries on to its next sleep. Measured here:
one stop in three of a hub whose sweeper was mid-SCAN. :func:`stop` therefore repeats the cancellation until
the task has ended; the repeat lands in the loop's own code (its sleep), where nothing swallows it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

RECANCEL_S: Final = 0.2
"""How long a cancelled task is given to end before it is cancelled again."""


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; raise the error it ended with, if not its cancellation."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
    with contextlib.suppress(asyncio.CancelledError):
        await task
