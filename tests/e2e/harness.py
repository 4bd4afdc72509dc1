"""Real hub processes and a minimal wire client for end-to-end tests.

``HubProcess`` runs ``python -m syncd serve`` as a subprocess against a Redis the test started, waits for
``/healthz``, and can be stopped gracefully or killed with SIGKILL (a crash). ``WireClient`` speaks protocol
frames over a real websocket, with no SDK logic: what the tests see is exactly what the hub sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol import codec, frames
from protocol.codec import CLIENT_LIMITS, FrameDecoder
from syncd.auth import mint_token

SECRET = "e2e-secret-" + "s" * 40
F = TypeVar("F", bound=frames.Frame)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for ``check`` to hold (an event the test waits for may come after the ack that caused it)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        await asyncio.sleep(0.02)


def token(client_id: str, **claims: Any) -> str:
    claims.setdefault("members", ["*"])
    return mint_token(SECRET, client_id=client_id, **claims)


class HubProcess:
    """One ``syncd serve`` process on a free port."""

    def __init__(self, redis_url: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.redis_url = redis_url
        self.port = free_port()
        self.log_path = log_dir / f"hub-{self.port}.log"
        self.env = {
            **os.environ,
            "SYNCD_TOKEN_SECRET": SECRET,
            "SYNCD_DATA_DIR": str(log_dir / f"hub-{self.port}"),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> HubProcess:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "syncd",
                    "serve",
                    "--port",
                    str(self.port),
                    "--redis-url",
                    self.redis_url,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.http + "/healthz", timeout=1) as response,
            ):
                if response.status == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"hub did not answer /healthz within {timeout}s:\n{self.log()}")

    def healthz(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.http + "/healthz", timeout=2) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        return body

    def kill(self) -> None:
        """SIGKILL: the hub dies mid-flight, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class WireClient:
    """Frames over a real websocket; no retries, no caching: the test drives every step.

    Every client opened is remembered in :attr:`opened` so the e2e fixtures close what a test left open.
    """

    opened: ClassVar[list[WireClient]] = []

    def __init__(self, ws: ClientConnection, client_id: str) -> None:
        self.ws = ws
        self.client_id = client_id
        self.decoder = FrameDecoder(frames.SERVER_FRAMES, CLIENT_LIMITS)
        self.welcome: frames.Welcome | None = None
        self.seq = 0

    @classmethod
    async def open(
        cls, url: str, client_id: str, *, tok: str | None = None, hello: bool = True, **headers: str
    ) -> WireClient:
        # max_queue=None: a test may leave events unread; closing must not wait on them.
        ws = await connect(
            url, max_size=2**22, max_queue=None, compression=None, additional_headers=headers or None
        )
        client = cls(ws, client_id)
        cls.opened.append(client)
        if hello:
            await client.hello(tok if tok is not None else token(client_id))
        return client

    async def hello(self, tok: str) -> frames.Frame:
        now = int(time.time() * 1000)
        await self.send(frames.Hello(versions=[1], token=tok, client_id=self.client_id, ts=now))
        reply = await self.recv()
        if isinstance(reply, frames.Welcome):
            self.welcome = reply
            self.seq = reply.last_seq
        return reply

    async def send(self, frame: frames.Frame) -> None:
        await self.ws.send(codec.encode(frame))

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 10.0) -> frames.Frame:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes), "the hub sends binary messages only"
        return self.decoder.decode(data)

    async def recv_type(self, kind: type[F], timeout: float = 10.0) -> F:
        """The next frame of type ``kind``, skipping pings/pongs and frames of other types."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(frame, kind):
                return frame

    async def op(self, kind: str, args: dict[str, Any], **fields: Any) -> frames.Op:
        self.seq += 1
        op = frames.Op(seq=self.seq, kind=kind, args=args, **fields)
        await self.send(op)
        return op

    async def closed(self, timeout: float = 10.0) -> int:
        """Wait for the hub to close the connection; its close code."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        assert self.ws.close_code is not None
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
