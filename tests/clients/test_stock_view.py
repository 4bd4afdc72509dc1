"""The stock view: an acked op's effect stays in the view until the hub's state shows it (the ack may come
before the event that carries it, PROTOCOL.md §7.2), so a read between the two never shows the op undone —
on the engine without I/O, and across a restart of the client from its store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clients import SQLiteOutbox, SyncClient
from clients.engine import OpSettled, SyncEngine, TopicRecord
from clients.types.stock import StockView
from protocol import frames
from protocol import stock as rules
from tests.clients.fakes import T0

SKU = "SKU-1"
TOPIC = f"stock:{SKU}"
START: dict[str, Any] = {"on_hand": 10, "pool": 10, "sold": 0, "atp": {"*": 10, "web": 4}, "allot": {}}


def welcome() -> frames.Welcome:
    return frames.Welcome(
        version=1,
        session="s",
        hub_time=T0,
        echo_ts=T0,
        last_seq=0,
        heartbeat_ms=15_000,
        max_frame=65_536,
        max_batch=256,
    )


def synced_engine(state: dict[str, Any]) -> tuple[SyncEngine, StockView]:
    engine = SyncEngine("app-1")
    engine.subscribe(TOPIC)
    engine.connected(welcome(), T0)
    [sub] = [f for f in engine.frames_to_send(T0) if isinstance(f, frames.Subscribe)]
    engine.receive(frames.Snapshot(id=sub.id, topic=TOPIC, cursor=frames.Cursor("e1", 1), state=state), T0)
    view = engine.view(TOPIC)
    assert isinstance(view, StockView)
    return engine, view


def make(engine: SyncEngine, kind: str, **args: Any) -> frames.Op:
    op = engine.prepare(kind, {"sku": SKU, "member": "m1", **args}, T0)
    engine.commit([op])
    engine.frames_to_send(T0)
    return op


def event(offset: int, data: dict[str, Any], seq: int, kind: str) -> frames.Event:
    return frames.Event(
        topic=TOPIC,
        cursor=frames.Cursor("e1", offset),
        kind=kind,
        data=data,
        at=T0,
        origin=frames.Origin("app-1", seq),
    )


def test_an_acked_reservation_and_commit_show_before_their_events_and_after_them_once() -> None:
    engine, view = synced_engine(START)
    reserve = make(engine, rules.RESERVE, channel="web", qty=2, ttl_ms=60_000)
    assert view.view()["pool"] == 10  # not predicted: only the hub can say whether it fits
    engine.receive(frames.Ack(seq=reserve.seq, ok=True, result={"rid": "app-1/1", "until": T0 + 60_000}), T0)
    shown = view.view()
    assert (shown["pool"], shown["atp"], shown["on_hand"]) == (8, {"*": 8, "web": 2}, 10)
    assert view.has_pending_writes
    commit = make(engine, rules.COMMIT, rid="app-1/1")
    engine.receive(frames.Ack(seq=commit.seq, ok=True, result={}), T0)
    shown = view.view()
    assert (shown["pool"], shown["on_hand"], shown["sold"]) == (8, 8, 2)
    # The events arrive: the server state shows both, the overlay is gone, nothing is counted twice.
    held = {"on_hand": 10, "pool": 8, "sold": 0, "atp": {"*": 8, "web": 2}, "allot": {}}
    engine.receive(event(2, held, reserve.seq, rules.RESERVE), T0)
    assert view.view()["pool"] == 8 and view.view()["sold"] == 2
    sold = {"on_hand": 8, "pool": 8, "sold": 2, "atp": {"*": 8, "web": 2}, "allot": {}}
    engine.receive(event(3, sold, commit.seq, rules.COMMIT), T0)
    assert view.view() == sold and not view.has_pending_writes


def test_a_release_acked_before_its_event_returns_the_units_to_the_view() -> None:
    engine, view = synced_engine(START)
    reserve = make(engine, rules.RESERVE, channel="web", qty=3, ttl_ms=60_000)
    engine.receive(frames.Ack(seq=reserve.seq, ok=True, result={"rid": "app-1/1", "until": T0 + 1}), T0)
    held = {"on_hand": 10, "pool": 7, "sold": 0, "atp": {"*": 7, "web": 1}, "allot": {}}
    engine.receive(event(2, held, reserve.seq, rules.RESERVE), T0)
    release = make(engine, rules.RELEASE, rid="app-1/1")
    engine.receive(frames.Ack(seq=release.seq, ok=True, result={}), T0)
    assert (view.view()["pool"], view.view()["atp"]) == (10, {"*": 10, "web": 4})


def test_a_rejected_commit_changes_nothing_and_an_ack_after_the_event_is_not_counted_again() -> None:
    engine, view = synced_engine(START)
    reserve = make(engine, rules.RESERVE, channel="web", qty=2, ttl_ms=60_000)
    held = {"on_hand": 10, "pool": 8, "sold": 0, "atp": {"*": 8, "web": 2}, "allot": {}}
    engine.receive(event(2, held, reserve.seq, rules.RESERVE), T0)  # the event first, then the ack
    engine.receive(frames.Ack(seq=reserve.seq, ok=True, result={"rid": "app-1/1", "until": T0 + 1}), T0)
    assert view.view() == held and not view.has_pending_writes
    commit = make(engine, rules.COMMIT, rid="app-1/1")
    engine.receive(frames.Ack(seq=commit.seq, ok=False, code="reservation_expired"), T0)
    assert view.view() == held and not view.has_pending_writes


async def test_an_acked_reservation_the_cached_state_does_not_show_is_shown_after_a_restart(
    tmp_path: Path,
) -> None:
    store = await SQLiteOutbox.open(tmp_path)
    await store.client_id("app-1")
    reserve = frames.Op(
        seq=1,
        kind=rules.RESERVE,
        args={"sku": SKU, "member": "m1", "channel": "web", "qty": 2, "ttl_ms": 60_000},
    )
    await store.append([reserve], next_seq=2, hlc=0)
    acked = OpSettled(reserve, True, {"rid": "app-1/1"}, None, "", dup=False, keep=True, at=T0)
    await store.save([acked], [TopicRecord(TOPIC, START, frames.Cursor("e1", 1), reflected=0)])
    await store.close()
    async with SyncClient("ws://127.0.0.1:9/ws", token="t", data_dir=tmp_path, online=False) as client:
        state = client.stock(SKU).state
        assert (state.pool, state.atp, state.has_pending_writes) == (8, {"*": 8, "web": 2}, True)
