"""The light stand-ins of the websocket protocol's ``asyncio.Queue`` and ``asyncio.Event`` (syncd/transport.py):
the same order, wake-ups and cancellation as the asyncio originals, for their one reader."""

from __future__ import annotations

import asyncio

import pytest

from syncd.transport import _Flag, _Inbox


async def test_inbox_hands_out_messages_in_order_and_wakes_its_reader() -> None:
    inbox = _Inbox()
    inbox.put_nowait(1)
    assert not inbox.empty() and inbox.qsize() == 1
    assert await inbox.get() == 1
    assert inbox.empty()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait(2)
    inbox.put_nowait(3)
    assert await reader == 2
    assert await inbox.get() == 3


async def test_a_cancelled_read_loses_nothing() -> None:
    inbox = _Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait("kept")
    assert await inbox.get() == "kept"


async def test_inbox_has_one_reader_at_a_time() -> None:
    inbox = _Inbox()
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await inbox.get()
    inbox.put_nowait("x")
    assert await first == "x"


async def test_flag_is_set_at_first_and_wakes_every_waiter_when_set_again() -> None:
    flag = _Flag()
    assert flag.is_set()
    assert await flag.wait()
    flag.clear()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]


async def test_a_cancelled_wait_is_forgotten() -> None:
    flag = _Flag()
    flag.clear()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not flag._waiters
    flag.set()
    assert await flag.wait()
