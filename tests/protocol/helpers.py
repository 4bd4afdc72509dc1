"""Test helpers for the sans-I/O protocol objects: no sockets, no event loop, a fake clock."""

from __future__ import annotations

from typing import Any

from protocol import codec, frames
from protocol.connection import (
    ClientEvent,
    ClientProtocol,
    HelloReceived,
    Opened,
    ServerEvent,
    ServerProtocol,
)

HUB_EPOCH_MS = 1_700_000_000_000
"""Where the fake hub clock starts: a realistic Unix time in milliseconds."""

_ANY = codec.Limits(max_frame=1 << 30, max_len=1 << 20, max_str=1 << 30, max_items=1 << 30, max_depth=64)
_FROM_CLIENT = codec.FrameDecoder(frames.CLIENT_FRAMES, _ANY)
_FROM_SERVER = codec.FrameDecoder(frames.SERVER_FRAMES, _ANY)


def long_attrs(tag: str) -> dict[str, Any]:
    """The largest ``attrs`` a cart op may carry in ASCII: 16 keys of 64 characters, values of 256 (about
    5.3 KiB encoded) — the stuff of the poison cart, which the cart's size bounds are about."""
    return {f"{tag}{k:02}".ljust(64, "k"): f"{tag}{k}".ljust(256, "v") for k in range(16)}


def decoded(messages: list[bytes], decoder: codec.FrameDecoder = _FROM_SERVER) -> list[frames.Frame]:
    """The frames in ``messages`` (what a side queued), for assertions."""
    return [decoder.decode(m) for m in messages]


class ConnectionPair:
    """A :class:`ClientProtocol` and a :class:`ServerProtocol` wired back to back, after h11's helper.

    One fake clock drives both: ``now`` is the hub's clock and the client reads ``now + skew_ms``. Each hop
    of a message takes ``latency_ms``. ``drop_to_server`` / ``drop_to_client`` make the network lose what
    one side sends (a half-dead connection). Everything each side sent is kept, decoded, in
    ``client_sent`` / ``server_sent``; events stay on the protocol objects until a test drains them.
    """

    def __init__(
        self,
        *,
        now_ms: int = HUB_EPOCH_MS,
        skew_ms: int = 0,
        latency_ms: int = 0,
        client_id: str = "pos-7.store-12",
        token: str = "token",
        server: dict[str, Any] | None = None,
        client: dict[str, Any] | None = None,
    ) -> None:
        self.now = now_ms
        self.skew_ms = skew_ms
        self.latency_ms = latency_ms
        self.drop_to_server = False
        self.drop_to_client = False
        self.server = ServerProtocol(self.now, **(server or {}))
        self.client = ClientProtocol(client_id, token, self.client_now, **(client or {}))
        self.client_sent: list[frames.Frame] = []
        self.server_sent: list[frames.Frame] = []

    @property
    def client_now(self) -> int:
        return self.now + self.skew_ms

    def pump(self) -> None:
        """Carry queued messages both ways until both sides are quiet; each hop advances the clock."""
        while True:
            to_server = self.client.data_to_send()
            if to_server:
                self.client_sent += decoded(to_server, _FROM_CLIENT)
                self.now += self.latency_ms
                for data in [] if self.drop_to_server else to_server:
                    self.server.receive_data(data, self.now)
            to_client = self.server.data_to_send()
            if to_client:
                self.server_sent += decoded(to_client, _FROM_SERVER)
                self.now += self.latency_ms
                for data in [] if self.drop_to_client else to_client:
                    self.client.receive_data(data, self.client_now)
            if not to_server and not to_client:
                return

    def handshake(self, *, session: str = "sess-1", last_seq: int = 0) -> Opened:
        """Hello, accept, welcome: return the client's :class:`Opened` event (the server's events drained)."""
        self.client.connect(self.client_now)
        self.pump()
        [hello] = self.server.events_received()
        assert isinstance(hello, HelloReceived)
        self.server.accept(session=session, last_seq=last_seq, now_ms=self.now)
        self.pump()
        [opened] = self.client.events_received()
        assert isinstance(opened, Opened)
        return opened

    def client_send(self, frame: frames.Frame) -> list[ServerEvent]:
        """The client sends ``frame``; return what the server made of it."""
        self.client.send(frame, self.client_now)
        self.pump()
        return self.server.events_received()

    def server_send(self, frame: frames.Frame) -> list[ClientEvent]:
        """The hub sends ``frame``; return what the client made of it."""
        self.server.send(frame)
        self.pump()
        return self.client.events_received()

    def to_server(self, data: bytes) -> tuple[list[ServerEvent], list[frames.Frame]]:
        """Hand-made bytes straight to the server: its events and the frames it answered with."""
        self.server.receive_data(data, self.now)
        return self.server.events_received(), decoded(self.server.data_to_send())

    def to_client(self, data: bytes) -> tuple[list[ClientEvent], list[frames.Frame]]:
        """Hand-made bytes straight to the client: its events and the frames it answered with."""
        self.client.receive_data(data, self.client_now)
        return self.client.events_received(), decoded(self.client.data_to_send(), _FROM_CLIENT)

    def next_deadline(self) -> int | None:
        """The earlier of both sides' deadlines, on the hub's clock."""
        deadlines = [self.server.next_deadline()]
        client = self.client.next_deadline()
        deadlines.append(None if client is None else client - self.skew_ms)
        return min((d for d in deadlines if d is not None), default=None)

    def run_until(self, until_ms: int) -> None:
        """Let time pass to ``until_ms`` (hub clock), firing each timer when due and pumping after it."""
        while (due := self.next_deadline()) is not None and due <= until_ms:
            self.now = max(self.now, due)
            self.server.handle_timer(self.now)
            self.client.handle_timer(self.client_now)
            self.pump()
        self.now = max(self.now, until_ms)

    def run_for(self, ms: int) -> None:
        self.run_until(self.now + ms)
