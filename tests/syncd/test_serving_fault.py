"""An unexpected error in a connection's serving task closes its websocket with 1011 (the client reconnects),
instead of leaving a connection that answers heartbeats and serves nothing.

In-process (Starlette TestClient) against a real Redis; the fault is injected into the hub's op path, the
only way to reach the "cannot happen" branch on purpose.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from protocol import codec, frames
from protocol.errors import CloseCode
from syncd.app import create_app
from syncd.embedded import EmbeddedRedis
from syncd.settings import Settings
from tests.e2e.harness import SECRET, token

_DECODER = codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS)


def hello(ws: Any, client_id: str) -> frames.Welcome:
    now = int(time.time() * 1000)
    ws.send_bytes(
        codec.encode(frames.Hello(versions=[1], token=token(client_id), client_id=client_id, ts=now))
    )
    welcome = _DECODER.decode(ws.receive_bytes())
    assert isinstance(welcome, frames.Welcome)
    return welcome


def drain(ws: Any) -> None:
    """Read until the hub closes the connection (a connection left half alive would hang here)."""
    while True:
        ws.receive_bytes()


def add(seq: int) -> frames.Op:
    return frames.Op(seq=seq, kind="cart.add", args={"member": "m1", "sku": "tea", "qty": 1})


def test_a_fault_in_the_serving_task_closes_with_1011_and_the_retry_is_served(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_env({}, redis_url=redis_server.url, token_secret=SECRET)
    with TestClient(create_app(settings)) as http:
        hub = http.app.state.hub  # type: ignore[attr-defined]
        apply = hub.apply

        async def broken(session: Any, ops: Any) -> None:
            raise RuntimeError("injected fault")

        monkeypatch.setattr(hub, "apply", broken)
        with http.websocket_connect("/ws") as ws:
            hello(ws, "till-1")
            ws.send_bytes(codec.encode(add(1)))
            with pytest.raises(WebSocketDisconnect) as closed:
                drain(ws)
        assert closed.value.code == CloseCode.INTERNAL_ERROR
        assert [r for r in caplog.records if "injected fault" in (r.exc_text or "")] != []

        monkeypatch.setattr(hub, "apply", apply)
        with http.websocket_connect("/ws") as ws:  # the client reconnects and resends its outbox
            assert hello(ws, "till-1").last_seq == 0
            ws.send_bytes(codec.encode(add(1)))
            ack = _DECODER.decode(ws.receive_bytes())
            assert isinstance(ack, frames.Ack) and ack.seq == 1 and ack.ok and not ack.dup
