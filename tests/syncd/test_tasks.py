"""Stopping the hub's background loops: a cancellation a library swallowed must not hang the shutdown
(docs/traps.md §21)."""

from __future__ import annotations

import asyncio

import pytest

from syncd.tasks import stop


async def test_a_loop_that_swallowed_its_cancellation_is_stopped_all_the_same() -> None:
    """redis-py can catch the CancelledError that lands inside a command and return as if nothing happened;
    the loop goes on. ``stop`` cancels again until the task ends."""
    swallowed = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                await asyncio.sleep(3600)  # a command in flight
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # the library's bug: the first cancellation disappears

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop(task), timeout=30)  # a bound on waiting, not a timing check
    assert swallowed.is_set() and task.cancelled()


async def test_a_loop_that_failed_raises_its_error_when_stopped() -> None:
    async def broken() -> None:
        raise RuntimeError("sweep failed")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="sweep failed"):
        await stop(task)


async def test_stopping_a_finished_task_is_a_no_op() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await stop(task)
    assert task.done() and not task.cancelled()
