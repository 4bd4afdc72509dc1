"""Paged snapshots (PROTOCOL.md §6.6): a hub never sends a frame over the client's limit, the client rebuilds
exactly the snapshot that was split."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec, frames
from protocol.errors import ErrorCode, ProtocolError
from protocol.snapshots import MAX_PAGES, PAGE_BYTES, SnapshotAssembler, encode_snapshot, paginate

DECODER = codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS)
CURSOR = frames.Cursor("e7f3", 12)


def line(n: int, size: int) -> dict[str, Any]:
    """A line of about ``size`` bytes, in strings within the codec's string limit."""
    attrs = {f"k{i}": "x" * 2000 for i in range(size // 2000)} | {"note": "x" * (size % 2000)}
    return {"qty": n, "attrs": attrs, "vv": {"app": n}, "dots": [["app", n, "a", 1, 0]]}


def big_cart(lines: int = 24, size: int = 60_000) -> frames.Snapshot:
    state = {"lines": {f"SKU-{i}": line(i + 1, size) for i in range(lines)}}
    return frames.Snapshot(id=3, topic="cart:m42", cursor=CURSOR, state=state, reset=True)


def deliver(data: list[bytes]) -> frames.Snapshot | None:
    """What a client does with the frames: decode each within its limits, assemble."""
    assembler = SnapshotAssembler()
    out = [assembler.add(frame) for frame in (DECODER.decode(d) for d in data)]  # type: ignore[arg-type]
    assert all(o is None for o in out[:-1])
    return out[-1]


def test_a_snapshot_that_fits_in_a_frame_is_sent_whole_as_before() -> None:
    snap = frames.Snapshot(id=1, topic="cart:m42", cursor=CURSOR, state={"lines": {"A": line(1, 10)}})
    assert encode_snapshot(snap) == [codec.encode(snap)]
    resume = frames.Snapshot(id=2, topic="cart:m42", cursor=CURSOR)
    assert encode_snapshot(resume) == [codec.encode(resume)]
    assert SnapshotAssembler().add(snap) is snap


def test_a_snapshot_over_the_clients_limit_comes_in_pages_the_client_reassembles() -> None:
    snap = big_cart()
    whole = codec.encode(snap)
    assert len(whole) > codec.CLIENT_LIMITS.max_frame  # one frame would be refused by the client
    data = encode_snapshot(snap)
    assert len(data) >= len(whole) // PAGE_BYTES
    assert all(len(d) <= PAGE_BYTES for d in data)
    pages = [DECODER.decode(d) for d in data]
    assert all(isinstance(p, frames.Snapshot) and p.id == 3 and p.topic == "cart:m42" for p in pages)
    *first, last = pages
    assert all(p.more and p.cursor is None and not p.reset for p in first)  # type: ignore[union-attr]
    assert isinstance(last, frames.Snapshot) and not last.more and last.cursor == CURSOR and last.reset
    assert deliver(data) == snap


def test_other_top_level_values_go_in_the_first_page() -> None:
    state = {"lines": big_cart(8).state["lines"], "total": 8, "tags": ["a"]}  # type: ignore[index]
    snap = frames.Snapshot(id=1, topic="cart:m1", cursor=CURSOR, state=state)
    pages = paginate(snap, page_bytes=100_000)
    assert len(pages) > 2 and pages[0].state is not None and pages[0].state["total"] == 8
    assert all(p.state is not None and set(p.state) == {"lines"} for p in pages[1:])
    assert deliver([codec.encode(p) for p in pages]) == snap


def test_an_entry_too_large_for_any_frame_cannot_be_delivered() -> None:
    snap = big_cart(lines=2, size=5000)
    with pytest.raises(ProtocolError) as info:
        encode_snapshot(snap, max_frame=4000, page_bytes=2000)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_pages_of_a_replaced_subscription_are_dropped() -> None:
    old = paginate(big_cart(), PAGE_BYTES)
    new = paginate(frames.Snapshot(id=4, topic="cart:m42", cursor=CURSOR, state=big_cart().state), PAGE_BYTES)
    assembler = SnapshotAssembler()
    assert assembler.add(old[0]) is None
    for page in new[:-1]:
        assert assembler.add(page) is None
    assert assembler.add(new[-1]) == frames.Snapshot(
        id=4, topic="cart:m42", cursor=CURSOR, state=big_cart().state
    )
    assert assembler.add(old[0]) is None
    assembler.clear()  # the connection ended: what was pending goes
    assert assembler.add(old[-1]) is old[-1]  # a last page alone is taken as what it says


def page(n: int, entries: dict[str, Any], *, last: bool = False) -> frames.Snapshot:
    if last:
        return frames.Snapshot(id=1, topic="cart:m1", cursor=CURSOR, state={"lines": entries})
    return frames.Snapshot(id=1, topic="cart:m1", state={"lines": entries}, more=True)


def test_pages_that_break_the_rules_are_a_protocol_error() -> None:
    too_many = SnapshotAssembler()
    for i in range(MAX_PAGES - 1):
        assert too_many.add(page(i, {f"s{i}": 1})) is None
    with pytest.raises(ProtocolError) as info:
        too_many.add(page(MAX_PAGES, {"last-but-not-last": 1}))
    assert info.value.code is ErrorCode.BAD_FRAME
    overlapping = SnapshotAssembler()
    overlapping.add(page(0, {"A": 1}))
    with pytest.raises(ProtocolError):
        overlapping.add(page(1, {"A": 2}, last=True))
    stateless = SnapshotAssembler()
    stateless.add(page(0, {"A": 1}))
    with pytest.raises(ProtocolError):
        stateless.add(frames.Snapshot(id=1, topic="cart:m1", cursor=CURSOR))
    crowded = SnapshotAssembler(max_len=3)
    crowded.add(page(0, {"A": 1, "B": 1}))
    with pytest.raises(ProtocolError):
        crowded.add(page(1, {"C": 1, "D": 1}, last=True))
    mixed = SnapshotAssembler()
    mixed.add(frames.Snapshot(id=1, topic="cart:m1", state={"lines": 3}, more=True))
    with pytest.raises(ProtocolError):
        mixed.add(page(1, {"A": 1}, last=True))


def test_a_snapshot_frame_is_a_page_with_more_or_has_a_cursor() -> None:
    with pytest.raises(ValueError, match="has a cursor"):
        frames.Snapshot(id=1, topic="cart:m1")
    for page_with_more in (
        {"cursor": CURSOR, "state": {}},
        {},
        {"state": {}, "reset": True},
    ):
        with pytest.raises(ValueError, match="no cursor nor reset"):
            frames.Snapshot(id=1, topic="cart:m1", more=True, **page_with_more)  # type: ignore[arg-type]


states = st.dictionaries(
    st.sampled_from(["lines", "other", "n"]),
    st.dictionaries(st.text(min_size=1, max_size=8), st.binary(max_size=300), max_size=40)
    | st.integers(-(2**53), 2**53),
    max_size=3,
)


@given(state=states, page_bytes=st.integers(1, 4000), reset=st.booleans())
def test_any_state_split_at_any_size_reassembles_to_itself(
    state: dict[str, Any], page_bytes: int, reset: bool
) -> None:
    snap = frames.Snapshot(id=9, topic="cart:m9", cursor=CURSOR, state=state, reset=reset)
    pages = paginate(snap, page_bytes)
    assert all(p.state for p in pages[:-1]), "every page but the last holds something"
    assembler = SnapshotAssembler(max_pages=len(pages) + 1)
    results = [assembler.add(p) for p in pages]
    assert results[:-1] == [None] * (len(pages) - 1)
    assert results[-1] == snap
