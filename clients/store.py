"""The SDK's durable local store: SQLite through aiosqlite, one file per data directory.

What lives here is exactly the engine's *persisted* state (:mod:`clients.engine`):

========== ===========================================================================================
table      rows
========== ===========================================================================================
meta       ``client_id``, ``next_seq`` (the next op's seq), ``hlc`` (so the clock never runs back)
outbox     one row per op: ``seq``, ``topic``, ``made_at``, ``acked``, the encoded ``op`` frame. Unsettled
           ops have ``acked = 0``; an applied op stays with ``acked = 1`` until its topic's cached state
           shows it (then the view no longer needs it)
rejections ops the hub rejected, kept until the application marks them seen
topics     per subscribed topic: cached server state (MessagePack), cursor, ``reflected``
========== ===========================================================================================

Durability (docs/traps.md §5): WAL with ``synchronous=FULL``, so a transaction that returned is on disk even
after a power loss, and :meth:`SQLiteOutbox.append` returns only after the commit: an op the application was
told about is never lost. ``next_seq`` is written in the same transaction as the ops that used it, so a seq is
never issued twice. Settlements and topic states are written lazily, in batches: losing them in a crash only
means ops are sent again (answered as duplicates by the hub) or events fetched again (idempotent).

One process at a time: the data directory is locked (``flock``) while a store is open, because two clients
sharing a ``client_id`` would issue the same seqs for different ops.

Memory: nothing is loaded eagerly but the topics; pending ops are read in pages (:meth:`load_pending`),
overlays per topic (:meth:`load_overlay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Final

import aiosqlite
import msgspec

from clients.events import OpSettled, TopicRecord
from clients.models import Rejection, from_ms
from clients.types.base import op_topic
from protocol import codec, frames
from protocol.errors import BackendUnavailable

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no advisory lock
    fcntl = None  # type: ignore[assignment]

DB_NAME: Final = "syncd-client.sqlite3"
LOCK_NAME: Final = "syncd-client.lock"
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    made_at INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    frame BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_topic ON outbox (topic, seq);
CREATE TABLE IF NOT EXISTS rejections (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    args BLOB NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    result BLOB,
    made_at INTEGER NOT NULL,
    rejected_at INTEGER NOT NULL,
    seen INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY,
    state BLOB,
    epoch TEXT,
    "offset" INTEGER,
    reflected INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""

_op_decoder: Final = msgspec.msgpack.Decoder(frames.Op)
_PAGE: Final = 2048
_encoder: Final = msgspec.msgpack.Encoder()


class DataDirLocked(BackendUnavailable):
    """Another process holds this data directory open (one client per directory, PROTOCOL §7.1)."""


@dataclasses.dataclass(frozen=True, slots=True)
class OpRecord:
    """What the store knows of one op: ``state`` is ``pending`` (in the outbox, unsettled), ``applied``
    (settled, kept for its topic's view) or ``rejected`` (with the hub's ``code`` and ``message``)."""

    state: str
    kind: str
    made_ms: int
    code: str | None = None
    message: str = ""


class Outbox:
    """Counts of the stored outbox at open time, for the engine to continue from."""

    __slots__ = ("oldest_made_at", "pending")

    def __init__(self, pending: int, oldest_made_at: int | None) -> None:
        self.pending = pending
        self.oldest_made_at = oldest_made_at


class SQLiteOutbox:
    """The local store. Open with :meth:`open`; every method may raise :class:`BackendUnavailable`."""

    def __init__(self, conn: aiosqlite.Connection, directory: Path, lock: IO[bytes] | None) -> None:
        self._conn = conn
        self.directory = directory
        self._lock_file = lock
        self._tx = asyncio.Lock()  # one transaction at a time on the shared connection

    # -- lifecycle ----------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, directory: str | os.PathLike[str]) -> SQLiteOutbox:
        """Open (creating if needed) the store of a data directory, and lock the directory."""
        path, lock = await asyncio.to_thread(_prepare_dir, directory)
        try:
            connecting = aiosqlite.connect(path / DB_NAME, isolation_level=None)
            # aiosqlite runs each connection in a thread of its own that is not a daemon: an application
            # that ends (or crashes out of main) without closing the client would then never exit. A daemon
            # thread stopped at exit is a crash as SQLite sees it, which WAL with synchronous=FULL survives:
            # every op was committed before the call that made it returned.
            connecting._thread.daemon = True
            conn = await connecting
        except (sqlite3.Error, OSError) as exc:
            _unlock(lock)
            raise BackendUnavailable(f"cannot open the client store in {path}: {exc}") from exc
        store = cls(conn, path, lock)
        try:
            await store._setup()
        except BaseException:
            await store.close()
            raise
        return store

    async def _setup(self) -> None:
        with _sqlite("setup"):
            async with self._conn.execute("PRAGMA journal_mode=WAL") as cur:
                row = await cur.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise BackendUnavailable(f"SQLite refused WAL mode in {self.directory} (got {row})")
            await self._conn.execute("PRAGMA synchronous=FULL")
            await self._conn.execute("PRAGMA busy_timeout=5000")
            await self._conn.executescript(_SCHEMA)
            await self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )

    async def close(self) -> None:
        try:
            await self._conn.close()
        finally:
            _unlock(self._lock_file)
            self._lock_file = None

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._tx:
            with _sqlite(what):
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    await self._conn.execute("ROLLBACK")
                    raise
                await self._conn.execute("COMMIT")

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._tx:
            with _sqlite("read"):
                async with self._conn.execute(sql, params) as cur:
                    return list(await cur.fetchall())

    # -- meta ---------------------------------------------------------------------------------------------

    async def meta(self) -> dict[str, Any]:
        rows = await self._fetchall("SELECT key, value FROM meta")
        return {str(k): v for k, v in rows}

    async def client_id(self, proposed: str) -> str:
        """The directory's ``client_id``: the stored one, or ``proposed`` stored now (first run)."""
        async with self._transaction("client_id") as conn:
            await conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('client_id', ?)", (proposed,))
            async with conn.execute("SELECT value FROM meta WHERE key = 'client_id'") as cur:
                row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def outbox(self) -> Outbox:
        rows = await self._fetchall("SELECT COUNT(*), MIN(seq) FROM outbox WHERE acked = 0")
        count, lowest = rows[0]
        oldest = None
        if lowest is not None:
            made = await self._fetchall("SELECT made_at FROM outbox WHERE seq = ?", (lowest,))
            oldest = int(made[0][0])
        return Outbox(int(count), oldest)

    # -- ops ----------------------------------------------------------------------------------------------

    async def append(self, ops: Sequence[frames.Op], *, next_seq: int, hlc: int) -> None:
        """Store new ops and the counters that issued them, in one durable transaction."""
        rows = [(op.seq, op_topic(op.kind, op.args), op.ts, codec.encode(op)) for op in ops]
        async with self._transaction("append") as conn:
            await conn.executemany(
                "INSERT INTO outbox (seq, topic, made_at, frame) VALUES (?, ?, ?, ?)", rows
            )
            await conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("next_seq", next_seq), ("hlc", hlc)],
            )
            # The view of an op's topic must survive a crash with the op: its subscription is stored too.
            await conn.executemany(
                "INSERT OR IGNORE INTO topics (topic, reflected) VALUES (?, 0)", {(r[1],) for r in rows}
            )

    async def load_pending(self, after_seq: int, limit: int) -> list[frames.Op]:
        """Unsettled ops with ``seq > after_seq``, in ``seq`` order, at most ``limit``."""
        rows = await self._fetchall(
            "SELECT frame FROM outbox WHERE seq > ? AND acked = 0 ORDER BY seq LIMIT ?", (after_seq, limit)
        )
        return [_op_decoder.decode(row[0]) for row in rows]

    async def load_overlay(self, topic: str, after_seq: int) -> AsyncIterator[frames.Op]:
        """Our ops on ``topic`` above ``after_seq`` (settled or not): the overlay of its cached view.

        Streamed in pages, so that opening a client with 100,000 queued ops never holds them all decoded.
        """
        while True:
            rows = await self._fetchall(
                "SELECT seq, frame FROM outbox WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
                (topic, after_seq, _PAGE),
            )
            for row in rows:
                yield _op_decoder.decode(row[1])
            if len(rows) < _PAGE:
                return
            after_seq = int(rows[-1][0])

    async def load_acked(self, topic: str, after_seq: int) -> list[frames.Op]:
        """Our ops on ``topic`` above ``after_seq`` that the hub applied (kept until the cached state shows
        them): a view that shows an op only once applied (stock) shows these again after a restart."""
        rows = await self._fetchall(
            "SELECT frame FROM outbox WHERE topic = ? AND seq > ? AND acked = 1 ORDER BY seq",
            (topic, after_seq),
        )
        return [_op_decoder.decode(row[0]) for row in rows]

    async def op_record(self, seq: int) -> OpRecord | None:
        """The op ``seq`` as stored, or ``None`` once settled and no longer kept (then it was applied)."""
        rows = await self._fetchall("SELECT acked, frame FROM outbox WHERE seq = ?", (seq,))
        if rows:
            op = _op_decoder.decode(rows[0][1])
            return OpRecord("applied" if rows[0][0] else "pending", op.kind, op.ts)
        rows = await self._fetchall(
            "SELECT kind, made_at, code, message FROM rejections WHERE seq = ?", (seq,)
        )
        if rows:
            kind, made_at, code, message = rows[0]
            return OpRecord("rejected", str(kind), int(made_at), str(code), str(message))
        return None

    async def pending_seqs(self, after_seq: int = 0, upto: int | None = None) -> list[int]:
        """The unsettled seqs above ``after_seq`` (up to ``upto``), ascending."""
        rows = await self._fetchall(
            "SELECT seq FROM outbox WHERE acked = 0 AND seq > ? AND seq <= ? ORDER BY seq",
            (after_seq, upto if upto is not None else 2**63 - 1),
        )
        return [int(row[0]) for row in rows]

    # -- settlements and topic states ---------------------------------------------------------------------

    async def save(
        self,
        settled: Sequence[OpSettled],
        topics: Sequence[TopicRecord],
        *,
        last_synced_ms: int | None = None,
    ) -> None:
        """Record settled ops and topic states in one transaction (settlements first, then prunes).

        ``last_synced_ms``: when the hub last confirmed anything, so that a restarted POS still shows it.
        """
        if not settled and not topics:
            return
        deleted = [(s.op.seq,) for s in settled if not s.keep]
        acked = [(s.op.seq,) for s in settled if s.keep]
        rejected = [
            (
                s.op.seq,
                s.op.kind,
                _encoder.encode(s.op.args),
                s.code or "rejected",
                s.message,
                None if s.result is None else _encoder.encode(s.result),
                s.op.ts,
                s.at,
            )
            for s in settled
            if not s.ok
        ]
        records = [
            (
                r.topic,
                None if r.state is None else _encoder.encode(r.state),
                None if r.cursor is None else r.cursor.epoch,
                None if r.cursor is None else r.cursor.offset,
                r.reflected,
            )
            for r in topics
        ]
        async with self._transaction("save") as conn:
            if deleted:
                await conn.executemany("DELETE FROM outbox WHERE seq = ?", deleted)
            if acked:
                await conn.executemany("UPDATE outbox SET acked = 1 WHERE seq = ?", acked)
            if rejected:
                await conn.executemany(
                    "INSERT OR IGNORE INTO rejections (seq, kind, args, code, message, result, made_at,"
                    " rejected_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rejected,
                )
            if records:
                await conn.executemany(
                    'INSERT OR REPLACE INTO topics (topic, state, epoch, "offset", reflected)'
                    " VALUES (?, ?, ?, ?, ?)",
                    records,
                )
                await conn.executemany(
                    "DELETE FROM outbox WHERE topic = ? AND acked = 1 AND seq <= ?",
                    [(r.topic, r.reflected) for r in topics],
                )
            if last_synced_ms is not None:
                await conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_synced', ?)", (last_synced_ms,)
                )

    async def topics(self) -> list[TopicRecord]:
        rows = await self._fetchall(
            'SELECT topic, state, epoch, "offset", reflected FROM topics ORDER BY topic'
        )
        out = []
        for topic, state, epoch, offset, reflected in rows:
            cursor = None if epoch is None else frames.Cursor(str(epoch), int(offset))
            decoded = None if state is None else msgspec.msgpack.decode(state)
            out.append(TopicRecord(str(topic), decoded, cursor, int(reflected)))
        return out

    async def remove_topic(self, topic: str) -> None:
        """Forget a topic's cached state, and the applied ops kept only for its view."""
        async with self._transaction("remove_topic") as conn:
            await conn.execute("DELETE FROM topics WHERE topic = ?", (topic,))
            await conn.execute("DELETE FROM outbox WHERE topic = ? AND acked = 1", (topic,))

    # -- rejections ---------------------------------------------------------------------------------------

    async def rejections(self, *, include_seen: bool = False) -> list[Rejection]:
        sql = (
            "SELECT seq, kind, args, code, message, result, made_at, rejected_at, seen FROM rejections"
            + ("" if include_seen else " WHERE seen = 0")
            + " ORDER BY seq"
        )
        return [_rejection(row) for row in await self._fetchall(sql)]

    async def mark_seen(self, seqs: Iterable[int]) -> None:
        async with self._transaction("mark_seen") as conn:
            await conn.executemany("UPDATE rejections SET seen = 1 WHERE seq = ?", [(s,) for s in seqs])

    async def forget_seen(self) -> int:
        """Delete rejections the application has seen; how many."""
        async with (
            self._transaction("forget_seen") as conn,
            conn.execute("DELETE FROM rejections WHERE seen = 1") as cur,
        ):
            return int(cur.rowcount)


def _rejection(row: Sequence[Any]) -> Rejection:
    seq, kind, args, code, message, result, made_at, rejected_at, seen = row
    made = from_ms(int(made_at))
    rejected = from_ms(int(rejected_at))
    assert made is not None and rejected is not None
    return Rejection(
        seq=int(seq),
        kind=str(kind),
        args=msgspec.msgpack.decode(args),
        code=str(code),
        message=str(message),
        result=None if result is None else msgspec.msgpack.decode(result),
        made_at=made,
        rejected_at=rejected,
        seen=bool(seen),
    )


@contextlib.contextmanager
def _sqlite(what: str) -> Any:
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise BackendUnavailable(f"client store failed ({what}): {exc}") from exc


def _prepare_dir(directory: str | os.PathLike[str]) -> tuple[Path, IO[bytes] | None]:
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path, _lock(path / LOCK_NAME)


def _lock(path: Path) -> IO[bytes] | None:
    if fcntl is None:  # pragma: no cover
        return None
    handle = path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DataDirLocked(f"{path.parent} is in use by another process") from None
    return handle


def _unlock(handle: IO[bytes] | None) -> None:
    if handle is not None:
        handle.close()  # closing the descriptor releases the flock
