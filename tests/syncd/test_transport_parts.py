"""The light stand-ins of the websocket protocol's ``asyncio.Queue`` and ``asyncio.Event``
(syncd/transport.py): the same order, wake-ups and cancellation as the asyncio originals, for their one
reader; and the handshake's request let go by websockets' parser once it waits for the first frame."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Opcode
from websockets.server import ServerProtocol

from syncd.transport import _Flag, _Inbox, forget_request


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


REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
FRAME = bytes([0x82, 0x83, 1, 2, 3, 4]) + bytes(b ^ k for b, k in zip(b"abc", (1, 2, 3), strict=True))
"""A masked binary frame carrying ``abc``."""


def _opened() -> ServerProtocol:
    conn = ServerProtocol()
    conn.receive_data(REQUEST)
    [request] = conn.events_received()
    conn.send_response(conn.accept(request))
    conn.data_to_send()
    return conn


def test_a_parser_waiting_for_its_first_frame_lets_the_request_go_and_reads_frames_as_before() -> None:
    conn = _opened()
    assert forget_request(conn)
    conn.receive_data(FRAME[:3])
    conn.receive_data(FRAME[3:] + FRAME)
    assert [(frame.opcode, frame.data) for frame in conn.events_received()] == [(Opcode.BINARY, b"abc")] * 2


def test_a_frame_under_way_keeps_its_parser() -> None:
    conn = ServerProtocol()
    conn.receive_data(REQUEST + FRAME[:3])
    [request] = conn.events_received()
    conn.send_response(conn.accept(request))
    assert not forget_request(conn)
    conn.receive_data(FRAME[3:])
    assert [frame.data for frame in conn.events_received()] == [b"abc"]
