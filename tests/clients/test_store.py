"""The SQLite outbox on real files: durability settings, what each write keeps, and bounded reads."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from clients.engine import OpSettled, TopicRecord
from clients.store import DB_NAME, DataDirLocked, SQLiteOutbox
from protocol import frames

T0 = 1_767_225_600_000


def op(seq: int, member: str = "m1", sku: str = "A", kind: str = "cart.add") -> frames.Op:
    args = {"member": member, "sku": sku, "qty": 1}
    return frames.Op(seq=seq, kind=kind, args=args, hlc=seq, ts=T0 + seq)


def settled(o: frames.Op, *, ok: bool = True, keep: bool = False, code: str | None = None) -> OpSettled:
    return OpSettled(
        o, ok, {"qty": 1} if ok else None, code, "" if ok else "no", False, keep=keep, at=T0 + 99
    )


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteOutbox:
    opened = await SQLiteOutbox.open(tmp_path)
    yield opened  # type: ignore[misc]
    await opened.close()


async def test_the_store_runs_in_wal_mode_with_full_sync(store: SQLiteOutbox) -> None:
    async with store._conn.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone())[0] == "wal"  # type: ignore[index]
    async with store._conn.execute("PRAGMA synchronous") as cur:
        assert (await cur.fetchone())[0] == 2  # type: ignore[index]  # FULL (docs/traps.md §5)


async def test_appended_ops_are_committed_when_append_returns(store: SQLiteOutbox, tmp_path: Path) -> None:
    await store.append([op(1), op(2)], next_seq=3, hlc=77)
    other = sqlite3.connect(tmp_path / DB_NAME)  # another connection, as after a crash of this one
    try:
        assert other.execute("SELECT seq FROM outbox ORDER BY seq").fetchall() == [(1,), (2,)]
        meta = dict(other.execute("SELECT key, value FROM meta").fetchall())
        assert meta["next_seq"] == 3 and meta["hlc"] == 77
        assert other.execute("SELECT topic FROM topics").fetchall() == [("cart:m1",)]
    finally:
        other.close()


async def test_pending_ops_are_read_in_pages_in_seq_order_without_settled_ones(store: SQLiteOutbox) -> None:
    await store.append([op(s) for s in range(1, 11)], next_seq=11, hlc=0)
    await store.save([settled(op(3)), settled(op(4), keep=True)], [])
    assert [o.seq for o in await store.load_pending(0, 4)] == [1, 2, 5, 6]
    assert [o.seq for o in await store.load_pending(6, 100)] == [7, 8, 9, 10]
    assert (await store.outbox()).pending == 8
    assert (await store.outbox()).oldest_made_at == T0 + 1


async def test_an_applied_op_is_kept_for_the_view_until_its_topic_record_shows_it(
    store: SQLiteOutbox,
) -> None:
    await store.append([op(1), op(2), op(3)], next_seq=4, hlc=0)
    await store.save([settled(op(1), keep=True), settled(op(2), keep=True)], [])
    assert [o.seq async for o in store.load_overlay("cart:m1", 0)] == [1, 2, 3]
    await store.save([], [TopicRecord("cart:m1", {"lines": {}}, frames.Cursor("e", 5), reflected=1)])
    assert [o.seq async for o in store.load_overlay("cart:m1", 1)] == [2, 3]
    await store.save([], [TopicRecord("cart:m1", {"lines": {}}, frames.Cursor("e", 6), reflected=3)])
    assert [o.seq async for o in store.load_overlay("cart:m1", 0)] == [3]  # op 3 is unsettled: never pruned
    assert await store.pending_seqs() == [3]


async def test_a_rejection_leaves_the_outbox_and_is_kept_until_seen(store: SQLiteOutbox) -> None:
    await store.append([op(1), op(2)], next_seq=3, hlc=0)
    await store.save([settled(op(1), ok=False, code="limit_exceeded")], [])
    assert await store.pending_seqs() == [2]
    [rejection] = await store.rejections()
    assert (rejection.seq, rejection.code, rejection.args["sku"], rejection.seen) == (
        1,
        "limit_exceeded",
        "A",
        False,
    )
    await store.save(
        [settled(op(1), ok=False, code="limit_exceeded")], []
    )  # a duplicate answer changes nothing
    assert len(await store.rejections()) == 1
    await store.mark_seen([1])
    assert await store.rejections() == []
    assert [r.seen for r in await store.rejections(include_seen=True)] == [True]
    assert await store.forget_seen() == 1


async def test_topic_records_round_trip(store: SQLiteOutbox) -> None:
    state = {"lines": {"A": {"qty": 2, "vv": {"c": 1}, "dots": [["c", 1, "a", 2, 5]]}}}
    record = TopicRecord("cart:m1", state, frames.Cursor("e9", 41), reflected=7)
    await store.save([], [record, TopicRecord("cart:m2")])
    assert await store.topics() == [record, TopicRecord("cart:m2")]
    await store.remove_topic("cart:m2")
    assert await store.topics() == [record]


async def test_the_first_client_id_stays(store: SQLiteOutbox) -> None:
    assert await store.client_id("pos-1") == "pos-1"
    assert await store.client_id("pos-2") == "pos-1"


async def test_a_data_directory_is_locked_while_open(tmp_path: Path) -> None:
    first = await SQLiteOutbox.open(tmp_path)
    with pytest.raises(DataDirLocked):
        await SQLiteOutbox.open(tmp_path)
    await first.close()
    second = await SQLiteOutbox.open(tmp_path)
    await second.close()


async def test_reading_100000_queued_ops_holds_one_page_at_a_time(store: SQLiteOutbox) -> None:
    n = 100_000
    for start in range(1, n + 1, 10_000):
        await store.append(
            [op(s, sku=f"S{s % 50}") for s in range(start, start + 10_000)], next_seq=start + 10_000, hlc=0
        )
    assert (await store.outbox()).pending == n
    tracemalloc.start()
    try:
        count = 0
        async for _ in store.load_overlay("cart:m1", 0):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB while streaming"


def test_a_program_that_ends_without_closing_its_store_still_exits(tmp_path: Path) -> None:
    """aiosqlite's worker thread is not a daemon by default: a POS program (or a failing test) that ends with
    a store still open would wait for it forever. The outbox's thread is a daemon, and what was appended
    before the exit is still there (an exit is a crash, as SQLite sees it)."""
    program = f"""
import asyncio
from clients.store import SQLiteOutbox
from protocol import frames

async def main():
    store = await SQLiteOutbox.open({str(tmp_path)!r})
    await store.append([frames.Op(seq=1, kind="cart.add", args={{"member": "m1", "sku": "A", "qty": 1}})],
                       next_seq=2, hlc=0)
    raise SystemExit(3)  # no close()

asyncio.run(main())
"""
    # The timeout guards the suite against the hang under test; it is not a measurement.
    done = subprocess.run([sys.executable, "-c", program], timeout=60, capture_output=True, check=False)
    assert done.returncode == 3, done.stderr.decode()
    other = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert other.execute("SELECT seq FROM outbox").fetchall() == [(1,)]
    finally:
        other.close()
