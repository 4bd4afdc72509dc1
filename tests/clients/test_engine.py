"""The sync engine without I/O: a fake hub built on the reference cart rules, a fake clock, no sleeps."""

from __future__ import annotations

import pytest

from clients.engine import (
    REPLAY_SUBSCRIBE_AFTER,
    SUB_ID_BASE,
    ChangeCause,
    LoadOps,
    SubscriptionFailed,
    SyncEngine,
    TopicRecord,
)
from clients.errors import OutboxStalled, SubscriptionRefused, UnexpectedEvent
from protocol import frames
from protocol.errors import ErrorCode, OpRejected, ProtocolError
from tests.clients.fakes import T0, Device, FakeHub, Fault


def qty(lines: dict[str, object], sku: str) -> int:
    line = lines.get(sku)
    assert isinstance(line, dict)
    value = line["qty"]
    assert isinstance(value, int)
    return value


def welcome(last_seq: int = 0, max_batch: int = 256, max_frame: int = 65_536) -> frames.Welcome:
    return frames.Welcome(
        version=1,
        session="s",
        hub_time=T0,
        echo_ts=T0,
        last_seq=last_seq,
        heartbeat_ms=15_000,
        max_frame=max_frame,
        max_batch=max_batch,
    )


def ops_in(sent: list[frames.Frame]) -> list[int]:
    seqs: list[int] = []
    for frame in sent:
        if isinstance(frame, frames.Op):
            seqs.append(frame.seq)
        elif isinstance(frame, frames.OpBatch):
            seqs.extend(op.seq for op in frame.ops)
    return seqs


# --- making ops --------------------------------------------------------------------------------------


def test_ops_are_numbered_in_order_and_shown_at_once() -> None:
    device = Device("pos-1")
    a = device.op("cart.add", member="m1", sku="A", qty=2)
    b = device.op("cart.add", member="m1", sku="A", qty=3)
    assert (a.seq, b.seq) == (1, 2)
    assert qty(device.view("m1"), "A") == 5
    assert device.engine.pending == 2
    assert device.store.pending() == [1, 2]


def test_a_malformed_op_is_refused_at_the_call_site_without_using_a_seq() -> None:
    device = Device("pos-1")
    with pytest.raises(OpRejected) as info:
        device.op("cart.add", member="m1", sku="A", qty=0)
    assert info.value.code == ErrorCode.BAD_ARGS
    with pytest.raises(OpRejected) as unknown:
        device.op("cart.teleport", member="m1")
    assert unknown.value.code == ErrorCode.UNKNOWN_OP
    assert device.op("cart.add", member="m1", sku="A", qty=1).seq == 1


def test_set_and_remove_carry_the_lines_vector_as_shown_including_our_pending_ops() -> None:
    hub = FakeHub()
    other = Device("app-1")
    other.connect(hub)
    other.op("cart.add", member="m1", sku="A", qty=2)
    other.pump()
    device = Device("pos-1")
    device.subscribe("m1")
    device.connect(hub)
    device.pump()
    device.disconnect()
    device.op("cart.add", member="m1", sku="A", qty=1)
    set_op = device.op("cart.set", member="m1", sku="A", qty=7)
    assert set_op.ctx == {"app-1": 1, "pos-1": 1}
    clear = device.op("cart.clear", member="m1")
    assert clear.ctx == {"pos-1": 2}  # the set replaced every dot it saw
    add = device.op("cart.add", member="m1", sku="B", qty=1)
    assert add.ctx is None  # adds remove nothing: the rules ignore ctx


def test_uncommitted_ops_are_never_sent() -> None:
    engine = SyncEngine("pos-1")
    engine.connected(welcome(), T0)
    op = engine.prepare("cart.add", {"member": "m1", "sku": "A", "qty": 1}, T0)
    assert ops_in(engine.frames_to_send(T0)) == []
    engine.commit([op])
    assert ops_in(engine.frames_to_send(T0)) == [1]


def test_an_aborted_op_gives_its_seq_back_and_leaves_the_view() -> None:
    engine = SyncEngine("pos-1")
    op = engine.prepare("cart.add", {"member": "m1", "sku": "A", "qty": 1}, T0)
    view = engine.view("cart:m1")
    assert view is not None and view.line("A") is not None
    engine.abort([op])
    assert view.line("A") is None
    assert engine.prepare("cart.add", {"member": "m1", "sku": "A", "qty": 1}, T0).seq == 1


# --- sending -----------------------------------------------------------------------------------------


def test_replay_goes_in_batches_within_the_window_and_max_batch() -> None:
    hub = FakeHub(max_batch=50)
    device = Device("pos-1", window=1024)
    for i in range(500):
        device.op("cart.add", member="m1", sku=f"S{i % 7}", qty=1)
    device.connect(hub)
    frames_out = device.engine.frames_to_send(T0)
    assert sum(len(ops_in([f])) for f in frames_out) <= 50  # the window is capped by max_batch
    for frame in frames_out:
        assert device.session is not None
        device.session.send(frame, T0)
    device.pump()
    assert device.engine.pending == 0
    batches = [f for f in device.sent if isinstance(f, frames.OpBatch)]
    assert batches and all(len(b.ops) <= 50 for b in batches)
    assert hub.applied == [("pos-1", s) for s in range(1, 501)]
    assert sum(qty(hub.lines("m1"), f"S{i}") for i in range(7)) == 500


def test_batches_respect_the_hubs_frame_size() -> None:
    hub = FakeHub(max_frame=4096)
    device = Device("pos-1")
    device.connect(hub)
    big = {f"k{i}": "x" * 200 for i in range(10)}  # about 2 KiB per op
    for i in range(20):
        device.op("cart.add", member="m1", sku=f"S{i}", qty=1, attrs=big)
    sent = device.engine.frames_to_send(T0)
    from protocol import codec

    assert all(len(codec.encode(f)) <= 4096 for f in sent)
    assert ops_in(sent) == list(range(1, 21))


def test_an_op_too_large_for_the_hub_is_refused_when_made() -> None:
    hub = FakeHub(max_frame=1024)
    device = Device("pos-1")
    device.connect(hub)
    with pytest.raises(ValueError, match="cannot fit"):
        device.op("cart.add", member="m1", sku="A", qty=1, attrs={f"k{i}": "x" * 200 for i in range(8)})


def test_only_a_page_of_a_large_outbox_is_held_in_memory() -> None:
    hub = FakeHub(max_batch=100)
    device = Device("pos-1", window=100, queue_limit=300, page=200)
    for i in range(2000):
        device.op("cart.add", member="m1", sku=f"S{i % 3}", qty=1)
    device = device.restart()  # the outbox is now only on "disk"
    device.connect(hub)
    peak = 0
    for _ in range(10_000):
        moved = device.step()
        peak = max(peak, len(device.engine._queue) + device.engine.in_flight)
        if not moved:
            break
    assert device.engine.pending == 0
    assert hub.applied == [("pos-1", s) for s in range(1, 2001)]
    assert peak <= 300 + 100 + 200  # queue limit + window + one page


def test_ops_made_while_a_page_is_loading_are_not_lost() -> None:
    device = Device("pos-1", queue_limit=4, page=4)
    for _ in range(10):
        device.op("cart.add", member="m1", sku="A", qty=1)
    device = device.restart()
    hub = FakeHub()
    device.connect(hub)
    device.engine.frames_to_send(T0)
    [load] = [e for e in device.engine.events_received() if isinstance(e, LoadOps)]
    page = device.store.load_pending(load.after_seq, load.limit)
    late = device.op("cart.add", member="m1", sku="A", qty=1)  # committed while the page was "in the air"
    device.engine.ops_loaded(page, load.limit)
    device.pump()
    assert ("pos-1", late.seq) in hub.applied
    assert len(hub.applied) == 11


# --- acks, rejections, errors ------------------------------------------------------------------------


def test_a_rejection_is_settled_stored_and_does_not_block_the_ops_behind_it() -> None:
    hub = FakeHub()
    device = Device("pos-1")
    device.connect(hub)
    for i in range(200):
        device.op("cart.add", member="m1", sku=f"S{i}", qty=1)
    device.op("cart.add", member="m1", sku="S-too-many", qty=1)  # line 201
    device.op("cart.add", member="m1", sku="S0", qty=5)
    device.pump()
    rejected = [s for s in device.outcomes if not s.ok]
    assert [(s.op.seq, s.code) for s in rejected] == [(201, "limit_exceeded")]
    assert set(device.store.rejections) == {201}
    assert device.engine.pending == 0 and device.store.pending() == []
    assert qty(hub.lines("m1"), "S0") == 6
    assert "S-too-many" not in device.view("m1")


@pytest.mark.parametrize("code", [ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL])
def test_an_unsettled_op_is_resent_with_everything_after_it_once_the_pause_is_over(code: ErrorCode) -> None:
    hub = FakeHub()
    device = Device("pos-1")
    device.connect(hub)
    for _ in range(5):
        device.op("cart.add", member="m1", sku="A", qty=1)
    hub.faults.append(Fault("pos-1", 3, code, retry_after_ms=500))
    device.pump(T0)
    assert hub.applied == [("pos-1", 1), ("pos-1", 2)]
    assert device.engine.next_deadline() == T0 + 500
    device.pump(T0 + 499)
    assert len(hub.applied) == 2  # still paused
    device.pump(T0 + 500)
    assert hub.applied == [("pos-1", s) for s in range(1, 6)]
    assert device.engine.pending == 0


def test_an_op_the_hub_cannot_apply_is_reported_once_until_ops_settle_again() -> None:
    hub = FakeHub()
    device = Device("pos-1")
    device.connect(hub)
    for _ in range(3):
        device.op("cart.add", member="m1", sku="A", qty=1)
    hub.faults += [Fault("pos-1", 2, ErrorCode.UNAVAILABLE, 100) for _ in range(2)]
    device.pump(T0)
    device.pump(T0 + 100)
    device.pump(T0 + 200)
    [notice] = device.notices  # two refusals of one op: one notice (status.last_error), not one per resend
    assert "unavailable" in str(notice) and "op 2" in str(notice)
    assert device.engine.pending == 0
    hub.faults.append(Fault("pos-1", 4, ErrorCode.INTERNAL, 100))
    device.op("cart.add", member="m1", sku="A", qty=1)
    device.pump(T0 + 300)
    device.pump(T0 + 400)
    assert len(device.notices) == 2 and "internal" in str(device.notices[1])
    hub.faults.append(Fault("pos-1", 5, ErrorCode.RATE_LIMITED, 100))  # flow control, not a failure
    device.op("cart.add", member="m1", sku="A", qty=1)
    device.pump(T0 + 500)
    device.pump(T0 + 600)
    assert len(device.notices) == 2 and device.engine.pending == 0


def test_a_seq_gap_behind_the_oldest_op_is_reported_as_a_stalled_outbox() -> None:
    hub = FakeHub()
    device = Device("pos-1")
    device.connect(hub)
    device.op("cart.add", member="m1", sku="A", qty=1)
    device.pump()
    hub.last["pos-1"] = 0  # the hub "lost" op 1 after acking it
    device.op("cart.add", member="m1", sku="A", qty=1)
    device.pump()
    assert any(isinstance(n, OutboxStalled) and n.seq == 2 for n in device.notices)
    assert device.engine.pending == 1  # kept, never skipped


def test_after_a_reconnect_every_unsettled_op_is_resent_and_duplicates_are_applied_once() -> None:
    hub = FakeHub()
    device = Device("pos-1")
    device.subscribe("m1")
    device.connect(hub)
    device.pump()
    for _ in range(3):
        device.op("cart.add", member="m1", sku="A", qty=2)
    assert device.session is not None
    for frame in device.engine.frames_to_send(T0):
        device.session.send(frame, T0)
    device.session.take()  # the acks are lost with the connection
    device.disconnect()
    device.connect(hub)
    device.pump()
    subs = [f for f in device.sent if isinstance(f, frames.Subscribe)]
    assert subs[1].cursor == frames.Cursor(hub.epochs["cart:m1"], 0)  # resumed: events 1-3 came as history
    assert sorted(s.op.seq for s in device.outcomes) == [1, 2, 3]
    assert all(s.dup for s in device.outcomes)
    assert hub.applied == [("pos-1", 1), ("pos-1", 2), ("pos-1", 3)]
    assert qty(hub.lines("m1"), "A") == 6 == qty(device.view("m1"), "A")


def test_subscriptions_go_before_replayed_ops() -> None:
    device = Device("pos-1")
    device.subscribe("m1")
    device.op("cart.add", member="m1", sku="A", qty=1)
    device.engine.connected(welcome(), T0)
    sent = device.engine.frames_to_send(T0)
    assert isinstance(sent[0], frames.Subscribe) and ops_in(sent[1:]) == [1]


def _offline_backlog(hub: FakeHub, ops: int) -> Device:
    """A device synced on carts m1 and m2 that then made ``ops`` adds to m1 offline, and restarted."""
    device = Device("pos-1")
    device.subscribe("m1")
    device.subscribe("m2")
    device.connect(hub)
    device.pump()
    device.disconnect()
    for i in range(ops):
        device.op("cart.add", member="m1", sku=f"S{i % 3}", qty=1)
    return device.restart()


def test_a_large_backlog_is_replayed_before_the_topics_it_changes_are_subscribed() -> None:
    hub = FakeHub()
    device = _offline_backlog(hub, REPLAY_SUBSCRIBE_AFTER)
    other = Device("app-1")
    other.connect(hub)
    device.connect(hub)
    first = device.engine.frames_to_send(T0)
    subs = [f for f in first if isinstance(f, frames.Subscribe)]
    assert [(s.topic, s.cursor) for s in subs] == [("cart:m2", hub.cursor("cart:m2"))]  # m2: nothing of ours
    assert device.session is not None
    for frame in first:
        device.sent.append(frame)
        device.session.send(frame, T0)
    other.op("cart.add", member="m1", sku="X", qty=5)  # another device's change during the replay
    other.pump()
    device.pump()
    late = [f for f in device.sent if isinstance(f, frames.Subscribe) and f.topic == "cart:m1"]
    assert [s.cursor for s in late] == [None]  # once the replay settled: one snapshot, afresh
    assert all(s.op.seq <= REPLAY_SUBSCRIBE_AFTER for s in device.outcomes)
    mine = [a for a in hub.applied if a[0] == "pos-1"]
    assert mine == [("pos-1", s) for s in range(1, REPLAY_SUBSCRIBE_AFTER + 1)]
    view = device.engine.view("cart:m1")
    assert view is not None and not view.has_pending_writes and device.engine.all_synced
    assert device.view("m1") == hub.lines("m1") and qty(device.view("m1"), "X") == 5
    assert device.store.pending() == [] and device.engine.pending == 0
    assert not [r for r in device.store.outbox.values() if r.op.args["member"] == "m1"]  # acked rows pruned
    device.op("cart.add", member="m1", sku="S0", qty=1)  # live again: its own event comes back
    device.pump()
    assert device.view("m1") == hub.lines("m1")


def test_a_topic_held_back_and_then_unsubscribed_is_never_subscribed_on_that_connection() -> None:
    hub = FakeHub()
    device = _offline_backlog(hub, REPLAY_SUBSCRIBE_AFTER)
    device.connect(hub)
    device.engine.unsubscribe("cart:m1")
    device.pump()
    subs = [f for f in device.sent if isinstance(f, frames.Subscribe | frames.Unsubscribe)]
    assert [f.topic for f in subs] == ["cart:m2"]
    assert device.engine.pending == 0
    assert sum(qty(hub.lines("m1"), f"S{i}") for i in range(3)) == REPLAY_SUBSCRIBE_AFTER


def test_a_small_backlog_resumes_every_topic_first() -> None:
    hub = FakeHub()
    device = _offline_backlog(hub, REPLAY_SUBSCRIBE_AFTER - 1)
    device.connect(hub)
    sent = device.engine.frames_to_send(T0)
    subs = [f for f in sent if isinstance(f, frames.Subscribe)]
    assert {(s.topic, s.cursor) for s in subs} == {
        ("cart:m1", hub.cursor("cart:m1")),
        ("cart:m2", hub.cursor("cart:m2")),
    }


def test_a_replay_cut_short_is_resumed_on_the_next_connection_and_applied_once() -> None:
    hub = FakeHub(max_batch=64)
    device = _offline_backlog(hub, 2 * REPLAY_SUBSCRIBE_AFTER)
    device.connect(hub)
    for _ in range(3):
        device.step()
    assert 0 < len(hub.applied) < 2 * REPLAY_SUBSCRIBE_AFTER
    device.disconnect()
    device = device.restart()
    device.connect(hub)
    device.pump()
    assert hub.applied == [("pos-1", s) for s in range(1, 2 * REPLAY_SUBSCRIBE_AFTER + 1)]
    assert device.view("m1") == hub.lines("m1") and device.engine.all_synced
    assert sum(qty(hub.lines("m1"), f"S{i}") for i in range(3)) == 2 * REPLAY_SUBSCRIBE_AFTER


def test_a_replay_that_stalls_subscribes_the_topics_it_held_back() -> None:
    hub = FakeHub()
    device = _offline_backlog(hub, REPLAY_SUBSCRIBE_AFTER)
    hub.faults.append(Fault("pos-1", 1, ErrorCode.SEQ_GAP))
    device.connect(hub)
    device.pump()
    assert any(isinstance(n, OutboxStalled) and n.seq == 1 for n in device.notices)
    assert device.engine.pending == REPLAY_SUBSCRIBE_AFTER  # kept, never skipped
    late = [f for f in device.sent if isinstance(f, frames.Subscribe) and f.topic == "cart:m1"]
    assert [s.cursor for s in late] == [None]
    view = device.engine.view("cart:m1")
    assert view is not None and view.synced and qty(device.view("m1"), "S0") > 0  # the overlay still shows


def test_a_refused_subscription_is_reported() -> None:
    engine = SyncEngine("pos-1")
    engine.subscribe("cart:m1")
    engine.connected(welcome(), T0)
    [sub] = engine.frames_to_send(T0)
    assert isinstance(sub, frames.Subscribe)
    engine.receive(frames.Error(code=ErrorCode.NOT_PERMITTED, ref=sub.id), T0)
    events = engine.events_received()
    refused = [e.error for e in events if hasattr(e, "error") and isinstance(e.error, SubscriptionRefused)]
    assert refused and refused[0].code == "not_permitted"


def test_an_unavailable_subscription_is_retried_after_the_delay() -> None:
    engine = SyncEngine("pos-1")
    engine.subscribe("cart:m1")
    engine.connected(welcome(), T0)
    [sub] = engine.frames_to_send(T0)
    assert isinstance(sub, frames.Subscribe)
    engine.receive(frames.Error(code=ErrorCode.UNAVAILABLE, ref=sub.id, retry_after_ms=1000), T0)
    assert engine.next_deadline() == T0 + 1000
    engine.handle_timer(T0 + 1000)
    [again] = engine.frames_to_send(T0 + 1000)
    assert isinstance(again, frames.Subscribe) and again.topic == "cart:m1" and again.id != sub.id


def test_an_err_is_matched_by_what_it_says_its_ref_is_not_by_the_number() -> None:
    """An op's seq may equal a subscription id (here both are 2^31): ``about`` tells them apart."""
    engine = SyncEngine("pos-1", next_seq=SUB_ID_BASE)
    engine.subscribe("cart:m1")
    op = engine.prepare("cart.add", {"member": "m1", "sku": "A", "qty": 1}, T0)
    engine.commit([op])
    engine.connected(welcome(last_seq=SUB_ID_BASE - 1), T0)
    sub, sent = engine.frames_to_send(T0)
    assert isinstance(sub, frames.Subscribe) and isinstance(sent, frames.Op) and sub.id == sent.seq
    engine.receive(frames.Error(code=ErrorCode.UNAVAILABLE, ref=sent.seq, about="op", retry_after_ms=700), T0)
    assert engine.in_flight == 0 and engine.next_deadline() == T0 + 700  # the op waits; the sub does not
    engine.receive(
        frames.Snapshot(id=sub.id, topic="cart:m1", cursor=frames.Cursor("e", 0), state={"lines": {}}), T0
    )
    assert engine.all_synced
    engine.receive(frames.Error(code=ErrorCode.NOT_PERMITTED, ref=sub.id, about="sub"), T0)
    assert any(isinstance(e, SubscriptionFailed) for e in engine.events_received())
    assert engine.pending == 1  # the op was not touched by the sub's refusal


# --- views, cursors, events ---------------------------------------------------------------------------


def one_op_answered() -> tuple[Device, frames.Event, frames.Ack]:
    """A subscribed device whose op ``cart.add A 2`` the hub applied: its event and ack, not yet received."""
    device = Device("pos-1")
    device.subscribe("m1")
    device.connect(FakeHub())
    device.pump()
    device.op("cart.add", member="m1", sku="A", qty=2)
    assert device.session is not None
    for frame in device.engine.frames_to_send(T0):
        device.session.send(frame, T0)
    [event, ack] = device.session.take()  # the fake hub fans out before it acks; a real hub may do either
    assert isinstance(ack, frames.Ack) and isinstance(event, frames.Event)
    return device, event, ack


def test_an_applied_op_stays_in_the_view_until_the_server_state_shows_it() -> None:
    device, event, ack = one_op_answered()
    device.engine.receive(ack, T0)
    device.handle_events()
    device.flush()
    assert qty(device.view("m1"), "A") == 2  # acked, its event not yet here
    assert device.store.outbox[1].acked  # kept on disk for the view
    restarted = device.restart()
    assert qty(restarted.view("m1"), "A") == 2
    device.engine.receive(event, T0)
    device.flush()
    assert qty(device.view("m1"), "A") == 2
    assert device.store.outbox == {}


def test_the_senders_own_event_may_come_before_its_ack() -> None:
    """PROTOCOL.md §7.2: the ack and the event travel separately; either order shows the op once."""
    device, event, ack = one_op_answered()
    device.engine.receive(event, T0)
    assert qty(device.view("m1"), "A") == 2 and device.engine.pending == 1  # shown once, not yet settled
    device.engine.receive(ack, T0)
    device.handle_events()
    device.flush()
    assert qty(device.view("m1"), "A") == 2 and device.engine.pending == 0
    assert device.store.outbox == {}  # the event already showed it: nothing kept for the view


def test_events_in_order_apply_duplicates_are_ignored_and_a_gap_resubscribes() -> None:
    hub = FakeHub()
    writer = Device("app-1")
    writer.connect(hub)
    reader = Device("pos-1")
    reader.subscribe("m1")
    reader.connect(hub)
    reader.pump()
    assert reader.session is not None
    reader.session.duplicate_events = True
    writer.op("cart.add", member="m1", sku="A", qty=1)
    writer.pump()
    reader.pump()
    assert qty(reader.view("m1"), "A") == 1
    reader.session.duplicate_events = False
    # a gap: the reader misses offset 2 and sees offset 3
    writer.op("cart.add", member="m1", sku="A", qty=1)
    writer.pump()
    reader.session.take()
    writer.op("cart.add", member="m1", sku="A", qty=1)
    writer.pump()
    reader.pump()
    subs = [f for f in reader.sent if isinstance(f, frames.Subscribe)]
    assert len(subs) == 2 and subs[1].cursor == frames.Cursor(hub.epochs["cart:m1"], 1)
    assert qty(reader.view("m1"), "A") == 3
    assert reader.engine.view("cart:m1").cursor.offset == 3  # type: ignore[union-attr]


def test_a_reset_snapshot_replaces_the_cached_state() -> None:
    hub = FakeHub()
    writer = Device("app-1")
    writer.connect(hub)
    writer.op("cart.add", member="m1", sku="A", qty=1)
    writer.pump()
    reader = Device("pos-1")
    reader.subscribe("m1")
    reader.connect(hub)
    reader.pump()
    reader.disconnect()
    hub.carts["m1"] = {"lines": {}, "folds": 0}  # the hub lost the cart and its history
    hub.lose_history("cart:m1")
    reader.changes.clear()
    reader.connect(hub)
    reader.pump()
    assert reader.view("m1") == {}
    assert [c.cause for c in reader.changes] == [ChangeCause.RESET]


def test_events_of_a_subscription_being_replaced_are_ignored() -> None:
    engine = SyncEngine("pos-1")
    engine.subscribe("cart:m1")
    engine.connected(welcome(), T0)
    [sub] = engine.frames_to_send(T0)
    assert isinstance(sub, frames.Subscribe)
    stray = frames.Event(
        topic="cart:m1", cursor=frames.Cursor("e", 1), kind="cart.add", data={"lines": {}}, at=T0
    )
    engine.receive(stray, T0)  # before the snapshot answering our sub
    engine.receive(
        frames.Snapshot(id=sub.id, topic="cart:m1", cursor=frames.Cursor("e", 0), state={"lines": {}}), T0
    )
    view = engine.view("cart:m1")
    assert view is not None and view.cursor == frames.Cursor("e", 0)


def test_malformed_event_data_is_a_protocol_error_and_changes_nothing() -> None:
    engine = SyncEngine("pos-1")
    engine.subscribe("cart:m1")
    engine.connected(welcome(), T0)
    [sub] = engine.frames_to_send(T0)
    assert isinstance(sub, frames.Subscribe)
    engine.receive(
        frames.Snapshot(id=sub.id, topic="cart:m1", cursor=frames.Cursor("e", 0), state={"lines": {}}), T0
    )
    bad = frames.Event(
        topic="cart:m1",
        cursor=frames.Cursor("e", 1),
        kind="cart.add",
        data={"lines": {"A": {"qty": "2"}}},
        at=T0,
    )
    with pytest.raises(ProtocolError) as info:
        engine.receive(bad, T0)
    assert info.value.code == ErrorCode.BAD_FRAME
    view = engine.view("cart:m1")
    assert view is not None and view.cursor == frames.Cursor("e", 0) and view.lines() == {}


def test_an_event_of_an_unknown_kind_is_skipped_and_the_cursor_moves_past_it() -> None:
    engine = SyncEngine("pos-1")
    engine.subscribe("cart:m1")
    engine.connected(welcome(), T0)
    [sub] = engine.frames_to_send(T0)
    assert isinstance(sub, frames.Subscribe)
    engine.receive(
        frames.Snapshot(id=sub.id, topic="cart:m1", cursor=frames.Cursor("e", 0), state={"lines": {}}), T0
    )
    engine.receive(
        frames.Event(topic="cart:m1", cursor=frames.Cursor("e", 1), kind="cart.price", data={"x": 1}, at=T0),
        T0,
    )
    view = engine.view("cart:m1")
    assert view is not None and view.cursor == frames.Cursor("e", 1)
    notices = [e.error for e in engine.events_received() if type(e).__name__ == "Notice"]
    assert any(isinstance(n, UnexpectedEvent) and n.kind == "cart.price" for n in notices)


def test_a_stored_topic_resumes_from_its_cursor() -> None:
    engine = SyncEngine("pos-1")
    cursor = frames.Cursor("e9", 41)
    engine.load_topic(TopicRecord("cart:m1", {"lines": {}}, cursor, 0))
    engine.connected(welcome(), T0)
    [sub] = engine.frames_to_send(T0)
    assert isinstance(sub, frames.Subscribe) and sub.cursor == cursor


def test_a_cursor_of_the_empty_state_continues_at_offset_0_of_the_history_that_followed_it() -> None:
    empty = frames.Cursor(frames.EMPTY_EPOCH, 0)
    engine = SyncEngine("pos-1")
    engine.load_topic(TopicRecord("cart:m1", {"lines": {}}, empty, 0))
    engine.connected(welcome(), T0)
    [sub] = engine.frames_to_send(T0)
    assert isinstance(sub, frames.Subscribe) and sub.cursor == empty
    engine.receive(frames.Snapshot(id=sub.id, topic="cart:m1", cursor=frames.Cursor("e1", 0)), T0)
    assert engine.frames_to_send(T0) == []  # accepted as a resume, not answered with a fresh sub
    added = {"A": {"qty": 1, "vv": {"app-1": 1}, "dots": [["app-1", 1, "a", 1, 0]]}}
    event = frames.Event(
        topic="cart:m1", cursor=frames.Cursor("e1", 1), kind="cart.add", data={"lines": added}, at=T0
    )
    engine.receive(event, T0)
    view = engine.view("cart:m1")
    assert view is not None and view.cursor == frames.Cursor("e1", 1) and qty(view.lines(), "A") == 1
    # Any other cursor in a snapshot without state still cannot be trusted: the engine starts afresh.
    engine.receive(frames.Snapshot(id=sub.id, topic="cart:m1", cursor=frames.Cursor("e2", 0)), T0)
    [again] = engine.frames_to_send(T0)
    assert isinstance(again, frames.Subscribe) and again.cursor is None


def test_stats_report_the_backlog_and_latencies() -> None:
    hub = FakeHub()
    device = Device("pos-1")
    device.subscribe("m1")
    device.op("cart.add", now=T0 - 5000, member="m1", sku="A", qty=1)
    stats = device.engine.stats(T0)
    assert stats["outbox"] == 1 and stats["outbox_age_ms"] == 5000
    device.connect(hub, T0)
    device.pump(T0)
    stats = device.engine.stats(T0 + 10)
    assert stats["outbox"] == 0 and stats["outbox_age_ms"] == 0
    assert "ack_ms_p50" in stats and "sync_ms_p95" in stats and "sync_ms_p99" in stats
    assert stats["ack_ms_count"] == 1 == sum(v for k, v in stats.items() if k.startswith("ack_ms_le_"))
    assert set(device.engine.stats(T0 + 20)) == {"outbox", "outbox_age_ms"}  # samples since the last report


def test_an_op_whose_context_would_exceed_the_protocol_bound_is_refused() -> None:
    engine = SyncEngine("pos-1")
    dots = [[f"w{i}", 1, "a", 1, 1] for i in range(300)]
    lines = {"A": {"qty": 300, "vv": {d[0]: 1 for d in dots}, "dots": dots}}
    engine.load_topic(TopicRecord("cart:m1", {"lines": lines}, frames.Cursor("e", 1)))
    with pytest.raises(ValueError, match="more than 256"):
        engine.prepare("cart.set", {"member": "m1", "sku": "A", "qty": 1}, T0)
    assert engine.next_seq == 1


def test_a_set_without_attrs_sends_the_attrs_the_device_shows() -> None:
    # A set replaces the dots it saw, attrs included (docs/cart-rules.md): the engine sends the shown attrs
    # along, so "change the quantity" keeps them; explicit attrs, and set(0), are sent as given.
    hub = FakeHub()
    device = Device("pos-1")
    device.connect(hub)
    device.subscribe("m1")
    device.op("cart.add", member="m1", sku="A", qty=1, attrs={"gift": True})
    kept = device.op("cart.set", member="m1", sku="A", qty=3)
    assert kept.args == {"member": "m1", "sku": "A", "qty": 3, "attrs": {"gift": True}}
    assert kept.ctx == {"pos-1": 1}
    assert device.view("m1")["A"]["attrs"] == {"gift": True}
    device.pump()
    assert hub.lines("m1")["A"]["attrs"] == {"gift": True}
    cleared = device.op("cart.set", member="m1", sku="A", qty=2, attrs={})
    assert cleared.args["attrs"] == {}
    assert "attrs" not in device.view("m1")["A"]
    assert "attrs" not in device.op("cart.set", member="m1", sku="A", qty=4).args  # shows none: sends none
    assert "attrs" not in device.op("cart.set", member="m1", sku="B", qty=1).args  # no line
    device.op("cart.set", member="m1", sku="A", qty=1, attrs={"n": 1})
    assert "attrs" not in device.op("cart.set", member="m1", sku="A", qty=0).args  # a remove
    device.pump()
    assert hub.lines("m1") == device.view("m1")


def test_cart_data_takes_dots_with_attrs_and_ignores_later_trailing_elements() -> None:
    from clients.engine import _CartEventData, _check

    def data(*dots: list[object]) -> dict[str, object]:
        return {"lines": {"A": {"qty": 1, "vv": {"a": 1}, "dots": list(dots)}}}

    _check(
        data(["~", 2, "b", 1, 0, {"k": 0}, [3, "z", 1]], ["a", 1, "a", 1, 5, {"k": True}, "later", 1]),
        _CartEventData,
        "event",
    )
    _check(data(["a", 1, "s", 1, 5], ["~", 2, "b", 1, 0]), _CartEventData, "event")
    for dot in (
        ["~", 2, "b", 1, 0, {"k": 0}],  # a base's attrs come with their key
        ["~", 2, "b", 1, 0, {}, [1, "z"]],
        ["~", 2, "b", 1, 0, {}, [True, "z", 1]],
        ["a", 1, "a", 1, 5, None],
        ["a", 1, "a", 1, 5, {"k": 1.5}],
        ["a", 1, "a", 1],
    ):
        with pytest.raises(ProtocolError) as exc:
            _check(data(dot), _CartEventData, "event")
        assert exc.value.code == ErrorCode.BAD_FRAME
