"""The hub's websocket transport: uvicorn's sans-I/O websockets protocol plus one ASGI extension.

Fan-out writes the same event to many sockets. Through ASGI each write is a coroutine per connection that
frames the payload again (docs/traps.md §16: that path saturates near a third of what a broadcast can do).
Server frames are not masked and syncd sends no compressed or fragmented messages, so the bytes of one event's
websocket frame are identical for every connection: :func:`frame_header` builds them once, and the extension
``syncd.raw_send`` lets a session write them straight to its transport — no coroutine, no copy per socket.

The extension declines (returns ``False``) when the connection is not open or its transport is paused by
flow control; the session then falls back to its queue and the ordinary ASGI send, which waits for the
transport to drain. Where the server is not this protocol (Starlette's TestClient, another ASGI server) the
extension is absent and every frame takes the ordinary path.
"""

from __future__ import annotations

from typing import Any, Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from protocol.errors import CloseCode

RAW_SEND: Final = "syncd.raw_send"
"""ASGI scope extension: ``scope["extensions"][RAW_SEND](framed: bytes) -> bool``."""


def frame_header(length: int) -> bytes:
    """The header of one unmasked, final, binary websocket frame of ``length`` bytes (RFC 6455 §5.2)."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return b"\x82\x7e" + length.to_bytes(2, "big")
    return b"\x82\x7f" + length.to_bytes(8, "big")


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's protocol, with :data:`RAW_SEND` in every websocket scope."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The ASGI task that reads the scope is created but has not run yet.
        extensions: dict[str, Any] = self.scope["extensions"]
        extensions[RAW_SEND] = self.raw_send

    def shutdown(self) -> None:
        """Close an open websocket with 1001 ``going_away`` when the server stops (PROTOCOL.md §5.2), where
        uvicorn would send 1012; anything else (a close already sent, no handshake yet) as uvicorn does."""
        if not self.handshake_complete or self.close_sent or self.disconnected:
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CloseCode.GOING_AWAY})
        self.conn.send_close(CloseCode.GOING_AWAY, "hub shutting down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def raw_send(self, framed: bytes) -> bool:
        """Write one pre-framed message now, if the connection is open and its transport accepts more."""
        if self.disconnected or self.close_sent or not self.handshake_complete or not self.writable.is_set():
            return False
        self.transport.write(framed)
        return True
