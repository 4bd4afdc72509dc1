"""Tools for end-to-end client tests: look at a real hub over the wire, and a TCP proxy that breaks links.

* :func:`hub_cart` / :func:`hub_history` / :func:`hub_last_seq` read what the hub holds with a bare
  :class:`~tests.e2e.harness.WireClient` (no SDK logic), so assertions compare the SDK with the hub itself.
* :class:`TcpProxy` sits between a client and a hub on loopback (docs/traps.md §15): it can cut
  every connection, cut one mid-frame (forward half of a chunk, then reset both sides), and be re-pointed at
  another hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from protocol import frames
from tests.e2e.harness import WireClient, token


async def hub_cart(url: str, member: str) -> dict[str, Any]:
    """The hub's cart of ``member``, as its snapshot carries it (``{sku: line}``)."""
    client = await WireClient.open(url, "inspector-cart", tok=token("inspector-cart", role="ops"))
    try:
        await client.send(frames.Subscribe(id=1, topic=f"cart:{member}"))
        snap = await client.recv_type(frames.Snapshot)
        assert snap.state is not None
        lines: dict[str, Any] = snap.state["lines"]
        return lines
    finally:
        await client.close()


def quantities(lines: dict[str, Any]) -> dict[str, int]:
    return {sku: int(line["qty"]) for sku, line in lines.items()}


async def hub_history(url: str, member: str) -> list[frames.Event]:
    """Every event of ``cart:<member>`` the hub still holds, from the first."""
    client = await WireClient.open(url, "inspector-log", tok=token("inspector-log", role="ops"))
    try:
        await client.send(frames.Subscribe(id=1, topic=f"cart:{member}"))
        first = await client.recv_type(frames.Snapshot)
        total = first.cursor.offset
        await client.send(
            frames.Subscribe(id=2, topic=f"cart:{member}", cursor=frames.Cursor(first.cursor.epoch, 0))
        )
        while True:
            snap = await client.recv_type(frames.Snapshot)
            if snap.id == 2:
                break
        assert snap.state is None, "the history was trimmed"
        events: list[frames.Event] = []
        while len(events) < total:
            events.append(await client.recv_type(frames.Event))
        return events
    finally:
        await client.close()


async def hub_last_seq(url: str, client_id: str) -> int:
    """The hub's watermark for ``client_id`` (its ``welcome.last_seq``); the client must be offline."""
    client = await WireClient.open(url, client_id)
    try:
        assert client.welcome is not None
        return client.welcome.last_seq
    finally:
        await client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TcpProxy:
    """A loopback TCP proxy in front of a hub port. ``url`` is the websocket URL to give the client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._cut: str | None = None
        self._cut_min = 0
        self.cut_done = asyncio.Event()
        self.connections = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.drop_all()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def cut_mid_frame(self, direction: str, min_bytes: int = 64) -> None:
        """Arm a cut: the next chunk of at least ``min_bytes`` going ``"to_hub"`` or ``"to_client"`` is
        forwarded only halfway, then both sides of that connection are reset."""
        assert direction in ("to_hub", "to_client")
        self._cut, self._cut_min = direction, min_bytes
        self.cut_done.clear()

    def drop_all(self) -> None:
        """Reset every connection through the proxy (no close frame: a network failure)."""
        for a, b in list(self._links):
            for writer in (a, b):
                _abort(writer)
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _abort(writer)  # the hub is down: the client sees its connection fail
            return
        self.connections += 1
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, "to_hub", link),
                self._pump(up_reader, writer, "to_client", link),
            )
        finally:
            self._links.discard(link)
            for w in link:
                _abort(w)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if self._cut == direction and len(chunk) >= self._cut_min:
                    self._cut = None
                    writer.write(chunk[: len(chunk) // 2])
                    with contextlib.suppress(OSError, ConnectionError):
                        await writer.drain()
                    for w in link:
                        _abort(w)
                    self.cut_done.set()
                    return
                writer.write(chunk)
                await writer.drain()
        for w in link:
            _abort(w)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
