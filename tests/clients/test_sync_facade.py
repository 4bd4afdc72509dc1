"""The blocking facade (clients/sync.py) from plain threaded code, against the fake hub.

The fake hub's websocket server runs on an event loop of its own in another thread, as a real hub would be
another process: the test's thread blocks in the facade's calls like a POS application's does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import OpRejected, Status, SyncClientSync
from tests.clients.fake_server import FakeHubServer


class ServerThread:
    """A :class:`FakeHubServer` served from its own loop thread; stopped (and its thread joined) by
    :meth:`stop`, so a failing test leaves nothing running."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-hub", daemon=True)
        self.thread.start()
        self.server = FakeHubServer()
        asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self.loop).result(30)

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.__aexit__(None, None, None), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


@pytest.fixture
def hub() -> Iterator[ServerThread]:
    running = ServerThread()
    yield running
    running.stop()


@pytest.fixture
def pos(hub: ServerThread, tmp_path: Path) -> Iterator[SyncClientSync]:
    client = SyncClientSync(hub.url, token="t", data_dir=tmp_path / "pos", client_id="pos-1")
    client.start()
    yield client
    client.close()


def test_an_op_returns_after_its_local_commit_and_its_result_comes_from_the_hub(pos: SyncClientSync) -> None:
    cart = pos.cart("m1")
    handle = cart.add("SKU-1", 2)
    assert cart.line("SKU-1") is not None  # shown before the hub answered
    assert handle.result(timeout=30) == {"qty": 2}
    assert handle.done()
    assert cart.lines["SKU-1"].qty == 2
    assert not cart.has_pending_writes
    assert pos.client_id == "pos-1"
    assert pos.wait_synced(timeout=30).online


def test_set_remove_and_clear_each_return_a_handle_with_the_hubs_answer(pos: SyncClientSync) -> None:
    cart = pos.cart("m1")
    handles = [cart.add("SKU-1", 1), cart.set("SKU-1", 5), cart.add("SKU-2", 1), cart.remove("SKU-2")]
    done, not_done = pos.wait(handles, timeout=30)
    assert not_done == [] and len(done) == 4
    assert cart.lines["SKU-1"].qty == 5 and cart.line("SKU-2") is None
    cart.clear().result(timeout=30)
    assert cart.lines == {}
    assert cart.state is not None and not cart.from_cache


def test_as_completed_yields_each_handle_once_from_one_thread(pos: SyncClientSync) -> None:
    cart = pos.cart("m1")
    handles = [cart.add(f"SKU-{i}", 1) for i in range(5)]
    finished = list(pos.as_completed(handles, timeout=30))
    assert sorted(h.seq for h in finished) == sorted(h.seq for h in handles)


def test_offline_ops_stay_pending_and_a_wait_says_which_are_not_done(pos: SyncClientSync) -> None:
    pos.go_offline()
    cart = pos.cart("m1")
    handle = cart.add("SKU-1", 1)
    done, not_done = pos.wait([handle], timeout=0.2)
    assert (done, [h.seq for h in not_done]) == ([], [handle.seq])
    with pytest.raises(TimeoutError, match="1 of 1 ops"):
        list(pos.as_completed([handle], timeout=0.1))
    with pytest.raises(TimeoutError, match=f"op {handle.seq}"):
        handle.result(timeout=0.1)
    assert [h.seq for h in pos.pending_ops()] == [handle.seq]
    again = pos.op(handle.seq)
    pos.go_online()
    assert again.result(timeout=30) == {"qty": 1}


def test_a_rejection_raises_from_result_and_is_offered_until_marked_seen(pos: SyncClientSync) -> None:
    cart = pos.cart("m1")
    handles = [cart.add(f"S{i}", 1) for i in range(200)]
    too_many = cart.add("S-201", 1)
    pos.wait(handles, timeout=60)
    with pytest.raises(OpRejected):
        too_many.result(timeout=30)
    [rejection] = pos.rejections()
    assert rejection.seq == too_many.seq
    pos.mark_seen(rejection)
    assert pos.rejections() == []


def test_changes_and_status_changes_are_iterated_from_a_thread(pos: SyncClientSync) -> None:
    cart = pos.cart("m1")
    changes = cart.changes(timeout=0.5)  # registered before the add: the add's change is not missed
    statuses = pos.status_changes(timeout=0.5)
    assert isinstance(next(statuses), Status)  # the current status first
    cart.add("SKU-1", 1).result(timeout=30)
    pos.wait_synced(timeout=30)
    seen = list(changes)  # ends once no change came for the timeout
    assert seen and all(change.member == "m1" for change in seen)
    assert all(isinstance(status, Status) for status in statuses)
    assert pos.status.online


def test_a_call_from_the_clients_own_loop_thread_is_refused(pos: SyncClientSync) -> None:
    with pytest.raises(RuntimeError, match="own event loop thread"):
        pos._call(lambda: pos.status)


def test_start_and_close_are_idempotent_and_the_context_manager_closes(
    hub: ServerThread, tmp_path: Path
) -> None:
    with SyncClientSync(hub.url, token="t", data_dir=tmp_path / "a", client_id="pos-2") as client:
        client.start()  # already started: nothing happens
        client.cart("m1").add("SKU-1", 1).result(timeout=30)
    assert not client._thread.is_alive()
    client.close()  # closed already: nothing happens
