"""The SDK's view of a store topic (clients/types/store.py): no op of ours ever changes it, events replace one
SKU's values, and what is cached is the hub's state as it was."""

from __future__ import annotations

from clients.events import TopicRecord
from clients.types.store import StoreAllotView
from protocol import frames
from protocol.datatype import check_shape
from protocol.types.store import STORE

STATE = {"skus": {"A": {"allot": 3, "recall": 0, "to": None}}}


def test_events_replace_one_skus_values_and_the_record_keeps_the_hubs_state() -> None:
    view = StoreAllotView(TopicRecord("store:s1"), "pos-1")
    assert view.skus == {} and view.record().state is None and not view.has_pending_writes
    view.load_state(STATE, "snapshot")
    event = {"sku": "B", "allot": 2, "recall": 1, "to": "s2"}
    check_shape(event, STORE.event, "event")
    assert view.apply_data(event) == frozenset({"B"})
    assert view.record().state == {"skus": {**STATE["skus"], "B": {"allot": 2, "recall": 1, "to": "s2"}}}
    again = StoreAllotView(view.record(), "pos-1")  # a restart, from the cache
    assert again.skus == view.skus and again.has_state


def test_no_op_of_ours_is_predicted_on_a_store_topic() -> None:
    view = StoreAllotView(TopicRecord("store:s1", STATE), "pos-1")
    op = frames.Op(seq=1, kind="stock.sell", args={"member": "m", "sku": "A", "store": "s1", "qty": 1})
    view.add_op(op)
    assert view.stamp(op.kind, dict(op.args)) is None and StoreAllotView.keys_of(op) is None
    assert view.remove(1) is None and view.reflect(1) == frozenset() and view.reflected == 1
    assert view.skus["A"]["allot"] == 3
