"""The blocking facade from plain threaded code (a POS application with worker threads), on a real hub."""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import pytest

from clients import OpRejected, SyncClientSync
from tests.e2e.harness import HubProcess, token

pytestmark = pytest.mark.e2e


def test_threads_sharing_one_blocking_client_get_every_op_applied_once(
    hub: HubProcess, tmp_path: Path
) -> None:
    member, per_thread, threads = "m-threads", 40, 4
    with SyncClientSync(
        hub.url, token=token("pos-threads"), data_dir=tmp_path / "pos", client_id="pos-threads"
    ) as pos:
        cart = pos.cart(member)
        errors: list[BaseException] = []

        def till(worker: int) -> None:
            try:
                handles = [cart.add(f"SKU-{worker}", 1) for _ in range(per_thread)]
                results = [handle.result(timeout=30)["qty"] for handle in handles]
                assert results == list(range(1, per_thread + 1))  # each add saw exactly the ones before it
            except BaseException as exc:  # reported to the main thread
                errors.append(exc)

        workers = [threading.Thread(target=till, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert errors == []
        status = pos.wait_synced(timeout=30)
        assert status.online and status.pending_ops == 0
        expected = {f"SKU-{i}": per_thread for i in range(threads)}
        assert {sku: line.qty for sku, line in cart.lines.items()} == expected
        with pytest.raises(OpRejected) as info:
            cart.set("SKU-0", 10_000)  # out of range: refused at the call site, typed, nothing stored
        assert info.value.code == "bad_args"
        assert pos.status.pending_ops == 0


def test_a_rejection_surfaces_through_the_blocking_api(hub: HubProcess, tmp_path: Path) -> None:
    with SyncClientSync(
        hub.url, token=token("pos-b", members=["m-own"]), data_dir=tmp_path / "pos", client_id="pos-b"
    ) as pos:
        handle = pos.cart("m-other").add("SKU-1", 1)  # outside the token's scope: rejected, not_permitted
        with pytest.raises(OpRejected) as info:
            handle.result(timeout=30)
        assert info.value.code == "not_permitted"
        [rejection] = pos.rejections()
        assert rejection.seq == handle.seq and rejection.code == "not_permitted"
        pos.mark_seen(rejection)
        assert pos.rejections() == []
    with SyncClientSync(hub.url, token=token("pos-b", members=["m-own"]), data_dir=tmp_path / "pos") as pos:
        assert pos.rejections() == [] and pos.status.pending_ops == 0
        counts = collections.Counter(line.qty for line in pos.cart("m-own").lines.values())
        assert counts == collections.Counter()
