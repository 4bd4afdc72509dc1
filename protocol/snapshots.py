"""Snapshots too large for one frame, sent in pages: the hub's split and the client's assembly, sans-I/O.

A hub must not send a frame larger than its client accepts (PROTOCOL.md §4: ``max_frame`` of the client
column, 1 MiB). A snapshot whose frame would be larger goes as **pages** (§6.6): consecutive ``snap`` frames
with the ``id`` and ``topic`` of the one they stand for, each holding part of the state; every page but the
last has ``more`` and no ``cursor`` (nor ``reset``), the last has the ``cursor`` and ``reset`` the whole
snapshot would have. The state is split along the entries of its map-valued top-level keys (the ``lines``
of a cart): each entry lies in exactly one page, and the client rebuilds the state as their union. A snapshot
that fits in one frame is sent whole, exactly as before pages existed, so only snapshots an older client
could never have received come in pages (and such a client refuses the first page, which has no cursor,
instead of misreading it).

Live events of the topic are held by the hub until after the last page, as for any snapshot; frames of
other topics and acks may come between pages.

The hub side is :func:`encode_snapshot`, the client side :class:`SnapshotAssembler`.
"""

from __future__ import annotations

from typing import Any, Final

from protocol import codec, frames
from protocol.errors import ErrorCode, ProtocolError

PAGE_BYTES: Final = 256 * 1024
"""What a hub puts in one page, about: far below the client's 1 MiB, so one page never monopolises a
connection's writes, and any entry a bounded state holds (a cart line: 64 KiB) fits."""
MAX_PAGES: Final = 64
"""Pages of one snapshot a client accepts (64 MiB at most): a cart, at most 1 MiB, takes five."""
_PAGE_OVERHEAD: Final = 256
"""Bytes of a page besides its state's entries: tag, id, topic (at most 160 characters), cursor, flags."""


def encode_snapshot(
    snap: frames.Snapshot, *, max_frame: int = codec.CLIENT_LIMITS.max_frame, page_bytes: int = PAGE_BYTES
) -> list[bytes]:
    """The encoded frames that deliver ``snap``: itself when it fits in ``max_frame``, else its pages.

    Raises :class:`ProtocolError` (``frame_too_large``) when one entry of the state cannot fit in a frame
    even alone: the snapshot cannot be delivered (no bounded state holds such an entry).
    """
    whole = codec.encode(snap)
    if len(whole) <= max_frame or snap.state is None:
        return [whole]
    pages = [codec.encode(page) for page in paginate(snap, page_bytes)]
    if max(len(page) for page in pages) > max_frame:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"{snap.topic}: a state entry does not fit in {max_frame} bytes"
        )
    return pages


def paginate(snap: frames.Snapshot, page_bytes: int = PAGE_BYTES) -> list[frames.Snapshot]:
    """``snap`` as pages of about ``page_bytes`` each (an entry larger than that gets a page of its own).

    Entries of map-valued top-level keys are spread over the pages in their order; other top-level values
    go in the first page. Every page holds at least one entry.
    """
    assert snap.state is not None and not snap.more  # a whole snapshot with a state
    pages: list[dict[str, Any]] = [{}]
    used = _PAGE_OVERHEAD
    for key, value in snap.state.items():
        if not isinstance(value, dict):
            pages[0][key] = value
            used += codec.encoded_size({key: value})
            continue
        pages[-1].setdefault(key, {})  # so that an empty map is kept too
        for entry, item in value.items():
            size = codec.encoded_size({entry: item})
            if used + size > page_bytes and any(pages[-1].values()):
                pages.append({})
                used = _PAGE_OVERHEAD
            pages[-1].setdefault(key, {})[entry] = item
            used += size
    *first, last = pages
    head = [frames.Snapshot(id=snap.id, topic=snap.topic, state=state, more=True) for state in first]
    tail = frames.Snapshot(id=snap.id, topic=snap.topic, cursor=snap.cursor, state=last, reset=snap.reset)
    return [*head, tail]


class SnapshotAssembler:
    """Joins the pages of paged snapshots back into the snapshots they stand for, per topic.

    :meth:`add` every ``snap`` received; it returns the snapshot to act on, or ``None`` while pages are
    still to come. Pages of an answer that a newer one (another ``id``) replaces are dropped; call
    :meth:`clear` when the connection ends. A page that breaks the paging rules (too many pages, the same
    entry twice, a map entry count over ``max_len``) is a :class:`ProtocolError` (``bad_frame``): the
    client closes, as for any frame that breaks the protocol.
    """

    def __init__(self, max_pages: int = MAX_PAGES, max_len: int = codec.CLIENT_LIMITS.max_len) -> None:
        self._max_pages = max_pages
        self._max_len = max_len
        self._pending: dict[str, tuple[int, list[dict[str, Any]]]] = {}

    def add(self, snap: frames.Snapshot) -> frames.Snapshot | None:
        pending = self._pending.get(snap.topic)
        if pending is not None and pending[0] != snap.id:
            del self._pending[snap.topic]  # the answer to a subscription since replaced
            pending = None
        if pending is None and not snap.more:
            return snap  # a whole snapshot: the common case
        parts = pending[1] if pending is not None else []
        if len(parts) + 1 >= self._max_pages and snap.more:
            del self._pending[snap.topic]
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{snap.topic}: more than {self._max_pages} pages")
        if snap.state is None:
            del self._pending[snap.topic]
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{snap.topic}: the last page has no state")
        parts.append(snap.state)
        if snap.more:
            self._pending[snap.topic] = (snap.id, parts)
            return None
        del self._pending[snap.topic]
        state = self._join(snap.topic, parts)
        return frames.Snapshot(
            id=snap.id, topic=snap.topic, cursor=snap.cursor, state=state, reset=snap.reset
        )

    def clear(self) -> None:
        """Drop every partial snapshot (the connection that carried them is gone)."""
        self._pending.clear()

    def _join(self, topic: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for part in parts:
            for key, value in part.items():
                held = state.get(key)
                if key not in state:
                    state[key] = dict(value) if isinstance(value, dict) else value
                elif isinstance(held, dict) and isinstance(value, dict) and held.keys().isdisjoint(value):
                    held.update(value)
                    if len(held) > self._max_len:
                        raise ProtocolError(ErrorCode.BAD_FRAME, f"{topic}: {key} holds over {self._max_len}")
                else:
                    raise ProtocolError(ErrorCode.BAD_FRAME, f"{topic}: pages overlap in {key!r}")
        return state
